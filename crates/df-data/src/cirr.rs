//! CIRR (Liu et al. 2021), release rc2.
//!
//! Layout under the dataset root:
//! - `captions/cap.rc2.{train,val,test1}.json`: a list of
//!   `{pairid, reference, target_hard, target_soft, caption, img_set: {id, members, reference_rank, target_rank}}`
//!   (test1 has no `target_hard`, `target_soft`, `target_rank`);
//! - `image_splits/split.rc2.{train,val,test1}.json`: an object image name → relative path
//!   (`"./dev/dev-244-0-img0.png"`), resolved against the root (or [`LoadOptions::image_root`]).
//!
//! ```no_run
//! use df_data::{cirr::{CirrDataset, CirrSplit}, LoadOptions};
//! let val = CirrDataset::load("/data/cirr", CirrSplit::Val, &LoadOptions::default())?;
//! println!("{} queries over {} images", val.samples.len(), val.gallery.len());
//! # Ok::<(), df_data::DataError>(())
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{DataError, Entry, Result};
use crate::imageio::validate_split;
use crate::json::{kind, read_json_list, read_json_object, resolve};
use crate::options::{ImageCheck, LoadOptions};
use crate::report::{LoadReport, OnError};
use crate::sample::{CandidateSet, CirSample, Gallery, QueryText};

/// A CIRR split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CirrSplit {
    /// `train`.
    Train,
    /// `val` (images under `dev/`).
    Val,
    /// `test1` (no targets in the public release).
    Test1,
}

impl CirrSplit {
    /// All splits.
    pub const ALL: [CirrSplit; 3] = [CirrSplit::Train, CirrSplit::Val, CirrSplit::Test1];

    /// The name used in file names: `train`, `val`, `test1`.
    pub fn name(self) -> &'static str {
        match self {
            CirrSplit::Train => "train",
            CirrSplit::Val => "val",
            CirrSplit::Test1 => "test1",
        }
    }

    /// The image folder and name prefix of the split: `train`, `dev`, `test1`.
    pub fn image_prefix(self) -> &'static str {
        match self {
            CirrSplit::Train => "train",
            CirrSplit::Val => "dev",
            CirrSplit::Test1 => "test1",
        }
    }

    /// `captions/cap.rc2.{split}.json` under `root`.
    pub fn captions_path(self, root: &Path) -> PathBuf {
        root.join("captions")
            .join(format!("cap.rc2.{}.json", self.name()))
    }

    /// `image_splits/split.rc2.{split}.json` under `root`.
    pub fn split_path(self, root: &Path) -> PathBuf {
        root.join("image_splits")
            .join(format!("split.rc2.{}.json", self.name()))
    }
}

impl fmt::Display for CirrSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CirrSplit {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(CirrSplit::Train),
            "val" | "dev" => Ok(CirrSplit::Val),
            "test1" | "test" => Ok(CirrSplit::Test1),
            _ => Err(DataError::InvalidConfig(format!(
                "unknown CIRR split `{s}` (expected train, val or test1)"
            ))),
        }
    }
}

#[derive(Deserialize)]
struct RawEntry {
    pairid: u64,
    reference: String,
    #[serde(default)]
    target_hard: Option<String>,
    #[serde(default)]
    target_soft: Option<BTreeMap<String, f32>>,
    caption: String,
    #[serde(default)]
    img_set: Option<RawImgSet>,
}

#[derive(Deserialize)]
struct RawImgSet {
    id: u64,
    members: Vec<String>,
    #[serde(default)]
    reference_rank: Option<u32>,
    #[serde(default)]
    target_rank: Option<u32>,
}

/// A loaded CIRR split: its queries and its gallery.
#[derive(Debug, Clone)]
pub struct CirrDataset {
    /// The split.
    pub split: CirrSplit,
    /// The queries, in file order.
    pub samples: Vec<CirSample>,
    /// The split's images in split-file order, with resolved paths.
    pub gallery: Gallery,
    /// What was kept and skipped.
    pub report: LoadReport,
    /// The captions file that was read.
    pub captions_file: PathBuf,
}

impl CirrDataset {
    /// Loads a split's captions and image list from `root` (see the module docs for the layout).
    /// Image files are only touched if `opts.check_images` asks for it.
    pub fn load(root: impl AsRef<Path>, split: CirrSplit, opts: &LoadOptions) -> Result<Self> {
        let root = root.as_ref();
        let (mut gallery, mut report) = Self::load_gallery_unchecked(root, split, opts)?;
        let captions_file = split.captions_path(root);
        let split_file = split.split_path(root);
        let entries = read_json_list(&captions_file)?;
        let mut samples = Vec::with_capacity(entries.len());
        let mut seen_ids = HashSet::with_capacity(entries.len());
        for (index, value) in entries.into_iter().enumerate() {
            match parse_entry(index, value, split, &captions_file, &split_file, &gallery) {
                Ok(s) => {
                    if !seen_ids.insert(s.pair_id) {
                        report.handle(
                            opts.on_error,
                            DataError::Duplicate {
                                path: captions_file.clone(),
                                entry: s.source.clone(),
                                what: "pairid",
                                value: s.pair_id.to_string(),
                            },
                        )?;
                        continue;
                    }
                    samples.push(s);
                }
                Err(e) => report.handle(opts.on_error, e)?,
            }
        }
        report.samples = samples.len();
        report.gallery_images = gallery.len();
        validate_split(
            &mut samples,
            &mut gallery,
            opts.check_images,
            opts.on_error,
            &captions_file,
            &mut report,
        )?;
        Ok(Self {
            split,
            samples,
            gallery,
            report,
            captions_file,
        })
    }

    /// Loads only a split's image list (`image_splits/split.rc2.{split}.json`), checking images
    /// as `opts.check_images` says.
    pub fn load_gallery(
        root: impl AsRef<Path>,
        split: CirrSplit,
        opts: &LoadOptions,
    ) -> Result<(Gallery, LoadReport)> {
        let root = root.as_ref();
        let (mut gallery, mut report) = Self::load_gallery_unchecked(root, split, opts)?;
        validate_split(
            &mut Vec::new(),
            &mut gallery,
            opts.check_images,
            opts.on_error,
            &split.split_path(root),
            &mut report,
        )?;
        Ok((gallery, report))
    }

    fn load_gallery_unchecked(
        root: &Path,
        split: CirrSplit,
        opts: &LoadOptions,
    ) -> Result<(Gallery, LoadReport)> {
        let split_file = split.split_path(root);
        let image_root = opts.image_root.as_deref().unwrap_or(root);
        let mut report = LoadReport::default();
        let mut gallery = Gallery::new();
        for (name, value) in read_json_object(&split_file)? {
            let rel = match value {
                Value::String(s) => s,
                other => {
                    report.handle(
                        opts.on_error,
                        DataError::MalformedEntry {
                            path: split_file.clone(),
                            entry: Entry::Key(name),
                            reason: format!("expected a relative path string, found {}", kind(&other)),
                        },
                    )?;
                    continue;
                }
            };
            let path = resolve(image_root, &rel);
            // serde_json keeps the last of duplicated keys; we keep the first and report the rest.
            if !gallery.insert(name.clone(), path) {
                report.handle(
                    opts.on_error,
                    DataError::Duplicate {
                        path: split_file.clone(),
                        entry: Entry::Key(name.clone()),
                        what: "image name",
                        value: name,
                    },
                )?;
            }
        }
        report.gallery_images = gallery.len();
        Ok((gallery, report))
    }

    /// Checks the split's image files (a separate, opt-in step). Under [`OnError::Skip`], bad
    /// images and the queries that need them are dropped and counted in [`Self::report`].
    pub fn validate_images(&mut self, check: ImageCheck, on_error: OnError) -> Result<()> {
        validate_split(
            &mut self.samples,
            &mut self.gallery,
            check,
            on_error,
            &self.captions_file,
            &mut self.report,
        )
    }

    /// Number of queries.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// `true` if there is no query.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

fn parse_entry(
    index: usize,
    value: Value,
    split: CirrSplit,
    captions_file: &Path,
    split_file: &Path,
    gallery: &Gallery,
) -> Result<CirSample> {
    let entry = match value.get("pairid").and_then(Value::as_u64) {
        Some(pair_id) => Entry::Pair { index, pair_id },
        None => Entry::Index(index),
    };
    let malformed = |reason: String| DataError::MalformedEntry {
        path: captions_file.to_path_buf(),
        entry: entry.clone(),
        reason,
    };
    let raw: RawEntry = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    if raw.target_hard.is_none() && split != CirrSplit::Test1 {
        return Err(malformed(format!(
            "missing field `target_hard` (required in the {split} split)"
        )));
    }
    let sample = CirSample {
        pair_id: raw.pairid,
        source: entry.clone(),
        reference: raw.reference,
        text: QueryText::Single(raw.caption),
        target: raw.target_hard,
        target_soft: raw.target_soft.unwrap_or_default().into_iter().collect(),
        candidates: raw.img_set.map(|s| CandidateSet {
            id: s.id,
            members: s.members,
            reference_rank: s.reference_rank,
            target_rank: s.target_rank,
        }),
    };
    for (role, name) in sample.image_names() {
        if !gallery.contains(name) {
            return Err(DataError::UnknownImage {
                path: captions_file.to_path_buf(),
                entry,
                name: name.to_string(),
                role,
                split_file: split_file.to_path_buf(),
            });
        }
    }
    Ok(sample)
}
