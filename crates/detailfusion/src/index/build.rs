//! Finding gallery images in a folder and decoding them in parallel.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use df_encoders::image_processing::open_image;
use df_encoders::ImageProcessor;

use super::error::{IndexError, Result};
use super::format::io;

/// File extensions of the formats the `image` crate is built with here (PNG, JPEG, GIF, WebP,
/// BMP, TIFF), lower case.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "apng", "jpg", "jpeg", "jpe", "jfif", "pjpeg", "pjp", "gif", "webp", "bmp", "dib", "tif", "tiff",
];

/// Whether the first bytes of a file are those of a supported image format.
pub(crate) fn sniff_image(head: &[u8]) -> bool {
    head.starts_with(b"\x89PNG\r\n\x1a\n")
        || head.starts_with(b"\xff\xd8\xff")
        || head.starts_with(b"GIF87a")
        || head.starts_with(b"GIF89a")
        || (head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP"))
        || head.starts_with(b"BM")
        || head.starts_with(b"II*\0")
        || head.starts_with(b"MM\0*")
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The files under `root` (recursively, sorted by path, symbolic links followed once) that are
/// images by extension or by content, and the other files (skipped). A file that cannot be
/// opened for sniffing but has no image extension is skipped too.
pub(crate) fn list_images(root: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let meta = std::fs::metadata(root).map_err(io(root))?;
    if !meta.is_dir() {
        return Err(IndexError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a folder"),
        });
    }
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(c) = std::fs::canonicalize(&dir) {
            if !seen.insert(c) {
                continue;
            }
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(io(&dir))?;
        entries.sort();
        let mut subdirs = Vec::new();
        for path in entries {
            let Ok(meta) = std::fs::metadata(&path) else {
                skipped.push(path); // dangling link
                continue;
            };
            if meta.is_dir() {
                subdirs.push(path);
            } else if has_image_extension(&path) {
                images.push(path);
            } else {
                let mut head = [0u8; 16];
                let got = std::fs::File::open(&path).and_then(|mut f| {
                    let mut n = 0;
                    while n < head.len() {
                        match f.read(&mut head[n..])? {
                            0 => break,
                            k => n += k,
                        }
                    }
                    Ok(n)
                });
                match got {
                    Ok(n) if sniff_image(&head[..n]) => images.push(path),
                    _ => skipped.push(path),
                }
            }
        }
        // Depth-first in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    images.sort();
    Ok((images, skipped))
}

/// The gallery name of `path` under `root`: its relative path with `/` separators.
pub(crate) fn relative_name(root: &Path, path: &Path) -> std::result::Result<String, String> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut parts = Vec::new();
    for c in rel.components() {
        match c.as_os_str().to_str() {
            Some(s) => parts.push(s),
            None => return Err("file name is not valid UTF-8".into()),
        }
    }
    Ok(parts.join("/"))
}

/// The images under `dir` that `known` does not hold yet, with their names, and a report that
/// already counts the skipped, already indexed and unnameable files.
pub(crate) fn pending_images(
    dir: &Path,
    known: impl Fn(&str) -> bool,
) -> Result<(Vec<(PathBuf, String)>, super::IndexReport)> {
    let (images, skipped) = list_images(dir)?;
    let mut report = super::IndexReport {
        skipped,
        ..Default::default()
    };
    let mut todo = Vec::new();
    for path in images {
        match relative_name(dir, &path) {
            Ok(name) if known(&name) => report.already_indexed += 1,
            Ok(name) => todo.push((path, name)),
            Err(message) => report.failed.push(super::FailedImage { path, message }),
        }
    }
    Ok((todo, report))
}

/// Decodes and preprocesses images into `[3, S, S]` buffers on up to `threads` threads; a
/// failure is kept per image (message naming the file).
pub(crate) fn decode_images(
    processor: &ImageProcessor,
    paths: &[PathBuf],
    threads: usize,
) -> Vec<std::result::Result<Vec<f32>, String>> {
    let one = |path: &PathBuf| -> std::result::Result<Vec<f32>, String> {
        let img = open_image(path).map_err(|e| e.to_string())?;
        processor
            .preprocess_rgb_to_vec(&img.into_rgb8())
            .map_err(|e| format!("image {}: {e}", path.display()))
    };
    let threads = threads.min(paths.len()).max(1);
    if threads == 1 {
        return paths.iter().map(one).collect();
    }
    let per = paths.len().div_ceil(threads);
    let mut out: Vec<std::result::Result<Vec<f32>, String>> = Vec::with_capacity(paths.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(per)
            .map(|part| scope.spawn(|| part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
    });
    out
}
