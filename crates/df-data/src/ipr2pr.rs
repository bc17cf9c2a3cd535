//! IPr2Pr, the InstructPix2Pix editing triplets (original image, edit instruction, edited image).
//!
//! [`Ipr2prDataset::load`] reads the original release layout: somewhere under the root, one folder
//! per prompt holding `prompt.json` (`{"input": ..., "edit": ..., "output": ...}`) and image pairs
//! `<seed>_0.jpg` (original) / `<seed>_1.jpg` (edited). Folders are visited in sorted order, so the
//! triplet order is stable. `.jpeg`, `.png` and `.webp` pairs are accepted too.
//!
//! The Hugging Face parquet shards are read by `ipr2pr::parquet` (cargo feature `parquet`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{DataError, Entry, Result};
use crate::imageio::check_image;
use crate::json::read_json;
use crate::options::{ImageCheck, LoadOptions};
use crate::report::LoadReport;
use crate::sample::{CirSample, Gallery, QueryText};

#[cfg(feature = "parquet")]
pub mod parquet;

/// The file holding a folder's prompts.
pub const PROMPT_FILE: &str = "prompt.json";

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// The prompts of one IPr2Pr folder (`prompt.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Prompt {
    /// Caption of the original image.
    pub input: String,
    /// The edit instruction.
    pub edit: String,
    /// Caption of the edited image.
    pub output: String,
}

/// One editing triplet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipr2prTriplet {
    /// The prompt folder, relative to the dataset root (`/`-separated).
    pub folder: String,
    /// The image seed (the `<seed>` of `<seed>_0.jpg`).
    pub seed: String,
    /// The folder's prompts.
    pub prompt: Prompt,
    /// Path of the original image (`<seed>_0.*`).
    pub original: PathBuf,
    /// Path of the edited image (`<seed>_1.*`).
    pub edited: PathBuf,
}

impl Ipr2prTriplet {
    /// Name of the original image: `<folder>/<seed>_0`.
    pub fn original_name(&self) -> String {
        format!("{}/{}_0", self.folder, self.seed)
    }

    /// Name of the edited image: `<folder>/<seed>_1`.
    pub fn edited_name(&self) -> String {
        format!("{}/{}_1", self.folder, self.seed)
    }
}

/// IPr2Pr triplets read from the folder layout.
#[derive(Debug, Clone)]
pub struct Ipr2prDataset {
    /// The dataset root.
    pub root: PathBuf,
    /// The triplets: folders in sorted path order, seeds in sorted order within a folder.
    pub triplets: Vec<Ipr2prTriplet>,
    /// What was kept and skipped.
    pub report: LoadReport,
}

impl Ipr2prDataset {
    /// Walks `root` for prompt folders and reads their triplets. Images are listed, not opened,
    /// unless `opts.check_images` is [`ImageCheck::Header`] or [`ImageCheck::Decode`].
    /// `opts.image_root` is ignored (images live next to their `prompt.json`).
    pub fn load(root: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let mut folders = Vec::new();
        find_prompt_folders(&root, &mut folders)?;
        folders.sort();
        let mut report = LoadReport::default();
        let mut triplets = Vec::new();
        for folder in folders {
            read_folder(&root, &folder, opts, &mut report, &mut triplets)?;
        }
        report.samples = triplets.len();
        report.gallery_images = 2 * triplets.len();
        Ok(Self {
            root,
            triplets,
            report,
        })
    }

    /// Number of triplets.
    pub fn len(&self) -> usize {
        self.triplets.len()
    }

    /// `true` if there is no triplet.
    pub fn is_empty(&self) -> bool {
        self.triplets.is_empty()
    }

    /// The triplets as CIR samples (reference = original, text = edit instruction, target = edited;
    /// `pair_id` = triplet index) and a gallery of all their images, named
    /// [`Ipr2prTriplet::original_name`] / [`Ipr2prTriplet::edited_name`].
    pub fn to_cir(&self) -> (Vec<CirSample>, Gallery) {
        let mut gallery = Gallery::new();
        let samples = self
            .triplets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (r, e) = (t.original_name(), t.edited_name());
                gallery.insert(r.clone(), t.original.clone());
                gallery.insert(e.clone(), t.edited.clone());
                CirSample {
                    pair_id: i as u64,
                    source: Entry::Folder {
                        folder: PathBuf::from(&t.folder),
                        seed: Some(t.seed.as_str().into()),
                    },
                    reference: r,
                    text: QueryText::Single(t.prompt.edit.clone()),
                    target: Some(e),
                    target_soft: Vec::new(),
                    candidates: None,
                }
            })
            .collect();
        (samples, gallery)
    }
}

fn find_prompt_folders(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if dir.join(PROMPT_FILE).is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        // `file_type` does not follow symlinks, so link cycles cannot trap the walk.
        let ft = entry.file_type().map_err(|e| DataError::io(entry.path(), e))?;
        if ft.is_dir() {
            find_prompt_folders(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn relative_name(root: &Path, folder: &Path) -> String {
    let rel = folder.strip_prefix(root).unwrap_or(folder);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

fn read_folder(
    root: &Path,
    folder: &Path,
    opts: &LoadOptions,
    report: &mut LoadReport,
    out: &mut Vec<Ipr2prTriplet>,
) -> Result<()> {
    let prompt_file = folder.join(PROMPT_FILE);
    let folder_entry = Entry::Folder {
        folder: folder.to_path_buf(),
        seed: None,
    };
    // A bad prompt.json spoils one folder only, so it is a (skippable) malformed entry.
    let prompt: Prompt = match read_json(&prompt_file) {
        Ok(p) => p,
        Err(e) => {
            let reason = match &e {
                DataError::Json { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            return report.handle(
                opts.on_error,
                DataError::MalformedEntry {
                    path: prompt_file,
                    entry: folder_entry,
                    reason,
                },
            );
        }
    };
    // seed -> (original, edited)
    let mut pairs: BTreeMap<String, (Option<PathBuf>, Option<PathBuf>)> = BTreeMap::new();
    let rd = std::fs::read_dir(folder).map_err(|e| DataError::io(folder, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(folder, e))?;
        let path = entry.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if !IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
            continue;
        }
        let Some((seed, which)) = stem.rsplit_once('_') else {
            continue;
        };
        let slot = pairs.entry(seed.to_string()).or_default();
        match which {
            "0" => slot.0 = Some(path),
            "1" => slot.1 = Some(path),
            _ => {}
        }
    }
    let name = relative_name(root, folder);
    if pairs.is_empty() {
        return report.handle(
            opts.on_error,
            DataError::MalformedEntry {
                path: folder.to_path_buf(),
                entry: folder_entry,
                reason: "no `<seed>_0` / `<seed>_1` image pair".into(),
            },
        );
    }
    for (seed, (orig, edit)) in pairs {
        let entry = Entry::Folder {
            folder: folder.to_path_buf(),
            seed: Some(seed.as_str().into()),
        };
        let (original, edited) = match (orig, edit) {
            (Some(o), Some(e)) => (o, e),
            (o, _) => {
                let (which, path) = if o.is_none() {
                    ("0", folder.join(format!("{seed}_0.jpg")))
                } else {
                    ("1", folder.join(format!("{seed}_1.jpg")))
                };
                report.handle(
                    opts.on_error,
                    DataError::MissingImage {
                        path,
                        name: format!("{name}/{seed}_{which}"),
                        entry,
                    },
                )?;
                continue;
            }
        };
        let check = match opts.check_images {
            ImageCheck::None | ImageCheck::Exists => ImageCheck::None,
            c => c,
        };
        let checked = check_image(&original, &format!("{name}/{seed}_0"), &entry, check)
            .and_then(|()| check_image(&edited, &format!("{name}/{seed}_1"), &entry, check));
        if let Err(e) = checked {
            report.handle(opts.on_error, e)?;
            continue;
        }
        out.push(Ipr2prTriplet {
            folder: name.clone(),
            seed,
            prompt: prompt.clone(),
            original,
            edited,
        });
    }
    Ok(())
}
