//! Image file access with errors that name the file, and split-wide image validation.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::Path;

use image::{DynamicImage, ImageReader};

use crate::error::{DataError, Entry, Result};
use crate::options::ImageCheck;
use crate::report::{LoadReport, OnError};
use crate::sample::{CirSample, Gallery};

fn reader(path: &Path, name: &str, entry: &Entry) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let r = ImageReader::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => DataError::MissingImage {
            path: path.to_path_buf(),
            name: name.to_string(),
            entry: entry.clone(),
        },
        _ => DataError::CorruptImage {
            path: path.to_path_buf(),
            name: name.to_string(),
            entry: entry.clone(),
            source: Box::new(image::ImageError::IoError(e)),
        },
    })?;
    r.with_guessed_format().map_err(|e| DataError::CorruptImage {
        path: path.to_path_buf(),
        name: name.to_string(),
        entry: entry.clone(),
        source: Box::new(image::ImageError::IoError(e)),
    })
}

/// Decodes the image at `path` (format guessed from its content). `name` and `entry` only label
/// errors: a missing file gives [`DataError::MissingImage`], anything else
/// [`DataError::CorruptImage`].
pub fn open_image(path: &Path, name: &str, entry: &Entry) -> Result<DynamicImage> {
    reader(path, name, entry)?
        .decode()
        .map_err(|source| DataError::CorruptImage {
            path: path.to_path_buf(),
            name: name.to_string(),
            entry: entry.clone(),
            source: Box::new(source),
        })
}

/// Checks one image file as thoroughly as `check` says.
pub fn check_image(path: &Path, name: &str, entry: &Entry, check: ImageCheck) -> Result<()> {
    match check {
        ImageCheck::None => Ok(()),
        ImageCheck::Exists => {
            if path.is_file() {
                Ok(())
            } else {
                Err(DataError::MissingImage {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    entry: entry.clone(),
                })
            }
        }
        ImageCheck::Header => reader(path, name, entry)?
            .into_dimensions()
            .map(|_| ())
            .map_err(|source| DataError::CorruptImage {
                path: path.to_path_buf(),
                name: name.to_string(),
                entry: entry.clone(),
                source: Box::new(source),
            }),
        ImageCheck::Decode => open_image(path, name, entry).map(|_| ()),
    }
}

/// Checks every gallery image; under [`OnError::Skip`] drops bad images and then every sample that
/// needs one of them, recording both in `report`. `annotation_file` labels sample errors.
pub(crate) fn validate_split(
    samples: &mut Vec<CirSample>,
    gallery: &mut Gallery,
    check: ImageCheck,
    on_error: OnError,
    annotation_file: &Path,
    report: &mut LoadReport,
) -> Result<()> {
    if check == ImageCheck::None {
        return Ok(());
    }
    let mut dropped: HashMap<String, String> = HashMap::new();
    for img in gallery.iter() {
        let entry = Entry::Key(img.name.clone());
        if let Err(e) = check_image(&img.path, &img.name, &entry, check) {
            let why = e.to_string();
            report.handle(on_error, e)?;
            dropped.insert(img.name.clone(), why);
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    gallery.retain(|g| !dropped.contains_key(&g.name));
    let mut kept = Vec::with_capacity(samples.len());
    for s in samples.drain(..) {
        let bad = s
            .image_names()
            .into_iter()
            .find_map(|(role, n)| dropped.get(n).map(|why| (role, n.to_string(), why.clone())));
        match bad {
            None => kept.push(s),
            Some((role, name, why)) => report.handle(
                on_error,
                DataError::SkippedImage {
                    path: annotation_file.to_path_buf(),
                    entry: s.source.clone(),
                    name,
                    role,
                    why,
                },
            )?,
        }
    }
    *samples = kept;
    report.samples = samples.len();
    report.gallery_images = gallery.len();
    Ok(())
}
