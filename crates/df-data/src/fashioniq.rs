//! Fashion IQ (Wu et al. 2021): categories dress, shirt, toptee.
//!
//! Layout under the dataset root:
//! - `captions/cap.{category}.{split}.json`: a list of `{candidate, target, captions: [c1, c2]}`
//!   (`target` absent in test);
//! - `image_splits/split.{category}.{split}.json`: a list of image names;
//! - `images/<name>.png`.
//!
//! Query texts follow SPRC / CLIP4Cir (see [`QueryText`]): evaluation uses
//! `"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"`; training picks one of
//! "C1 and c2", "C2 and c1", "C1", "C2" with a seeded [`crate::Rng`].
//!
//! ```no_run
//! use df_data::{fashioniq::{Category, FashionIqDataset, FiqSplit}, LoadOptions};
//! let ds = FashionIqDataset::load("/data/fashion-iq", Category::Dress, FiqSplit::Val, &LoadOptions::default())?;
//! println!("{}", ds.samples[0].query_text());
//! # Ok::<(), df_data::DataError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{DataError, Entry, Result};
use crate::imageio::validate_split;
use crate::json::{kind, read_json_list};
use crate::options::{ImageCheck, LoadOptions};
use crate::report::{LoadReport, OnError};
use crate::sample::{CirSample, Gallery, QueryText};

/// A Fashion IQ category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// `dress`.
    Dress,
    /// `shirt`.
    Shirt,
    /// `toptee`.
    Toptee,
}

impl Category {
    /// All categories.
    pub const ALL: [Category; 3] = [Category::Dress, Category::Shirt, Category::Toptee];

    /// The name used in file names.
    pub fn name(self) -> &'static str {
        match self {
            Category::Dress => "dress",
            Category::Shirt => "shirt",
            Category::Toptee => "toptee",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Category {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dress" => Ok(Category::Dress),
            "shirt" => Ok(Category::Shirt),
            "toptee" => Ok(Category::Toptee),
            _ => Err(DataError::InvalidConfig(format!(
                "unknown Fashion IQ category `{s}` (expected dress, shirt or toptee)"
            ))),
        }
    }
}

/// A Fashion IQ split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FiqSplit {
    /// `train`.
    Train,
    /// `val` (the split papers report on).
    Val,
    /// `test` (no targets).
    Test,
}

impl FiqSplit {
    /// All splits.
    pub const ALL: [FiqSplit; 3] = [FiqSplit::Train, FiqSplit::Val, FiqSplit::Test];

    /// The name used in file names.
    pub fn name(self) -> &'static str {
        match self {
            FiqSplit::Train => "train",
            FiqSplit::Val => "val",
            FiqSplit::Test => "test",
        }
    }
}

impl fmt::Display for FiqSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FiqSplit {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(FiqSplit::Train),
            "val" => Ok(FiqSplit::Val),
            "test" => Ok(FiqSplit::Test),
            _ => Err(DataError::InvalidConfig(format!(
                "unknown Fashion IQ split `{s}` (expected train, val or test)"
            ))),
        }
    }
}

/// Alias of [`FiqSplit`] (`fashioniq::Split::Val`).
pub use FiqSplit as Split;

/// `captions/cap.{category}.{split}.json` under `root`.
pub fn captions_path(root: &Path, category: Category, split: FiqSplit) -> PathBuf {
    root.join("captions")
        .join(format!("cap.{}.{}.json", category.name(), split.name()))
}

/// `image_splits/split.{category}.{split}.json` under `root`.
pub fn split_path(root: &Path, category: Category, split: FiqSplit) -> PathBuf {
    root.join("image_splits")
        .join(format!("split.{}.{}.json", category.name(), split.name()))
}

/// `images/<name>.png` under `image_root`.
pub fn image_path(image_root: &Path, name: &str) -> PathBuf {
    image_root.join("images").join(format!("{name}.png"))
}

#[derive(Deserialize)]
struct RawEntry {
    candidate: String,
    #[serde(default)]
    target: Option<String>,
    captions: Vec<String>,
}

/// A loaded Fashion IQ category/split.
#[derive(Debug, Clone)]
pub struct FashionIqDataset {
    /// The category.
    pub category: Category,
    /// The split.
    pub split: FiqSplit,
    /// The triplets in file order (`pair_id` = index in the captions file).
    pub samples: Vec<CirSample>,
    /// The split's images in split-file order, with resolved paths.
    pub gallery: Gallery,
    /// What was kept and skipped.
    pub report: LoadReport,
    /// The captions file that was read.
    pub captions_file: PathBuf,
}

impl FashionIqDataset {
    /// Loads a category/split (captions and image list) from `root`. Image files are only touched
    /// if `opts.check_images` asks for it.
    pub fn load(
        root: impl AsRef<Path>,
        category: Category,
        split: FiqSplit,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let root = root.as_ref();
        let (mut gallery, mut report) = Self::load_gallery_unchecked(root, category, split, opts)?;
        let captions_file = captions_path(root, category, split);
        let split_file = split_path(root, category, split);
        let entries = read_json_list(&captions_file)?;
        let mut samples = Vec::with_capacity(entries.len());
        for (index, value) in entries.into_iter().enumerate() {
            match parse_entry(index, value, split, &captions_file, &split_file, &gallery) {
                Ok(s) => samples.push(s),
                Err(e) => report.handle(opts.on_error, e)?,
            }
        }
        report.samples = samples.len();
        validate_split(
            &mut samples,
            &mut gallery,
            opts.check_images,
            opts.on_error,
            &captions_file,
            &mut report,
        )?;
        Ok(Self {
            category,
            split,
            samples,
            gallery,
            report,
            captions_file,
        })
    }

    /// Loads only the image list of a category/split, checking images as `opts.check_images` says.
    pub fn load_gallery(
        root: impl AsRef<Path>,
        category: Category,
        split: FiqSplit,
        opts: &LoadOptions,
    ) -> Result<(Gallery, LoadReport)> {
        let root = root.as_ref();
        let (mut gallery, mut report) = Self::load_gallery_unchecked(root, category, split, opts)?;
        validate_split(
            &mut Vec::new(),
            &mut gallery,
            opts.check_images,
            opts.on_error,
            &split_path(root, category, split),
            &mut report,
        )?;
        Ok((gallery, report))
    }

    fn load_gallery_unchecked(
        root: &Path,
        category: Category,
        split: FiqSplit,
        opts: &LoadOptions,
    ) -> Result<(Gallery, LoadReport)> {
        let split_file = split_path(root, category, split);
        let image_root = opts.image_root.as_deref().unwrap_or(root);
        let mut report = LoadReport::default();
        let mut gallery = Gallery::new();
        for (index, value) in read_json_list(&split_file)?.into_iter().enumerate() {
            let name = match value {
                Value::String(s) => s,
                other => {
                    report.handle(
                        opts.on_error,
                        DataError::MalformedEntry {
                            path: split_file.clone(),
                            entry: Entry::Index(index),
                            reason: format!("expected an image name string, found {}", kind(&other)),
                        },
                    )?;
                    continue;
                }
            };
            let path = image_path(image_root, &name);
            if !gallery.insert(name.clone(), path) {
                report.handle(
                    opts.on_error,
                    DataError::Duplicate {
                        path: split_file.clone(),
                        entry: Entry::Index(index),
                        what: "image name",
                        value: name,
                    },
                )?;
            }
        }
        report.gallery_images = gallery.len();
        Ok((gallery, report))
    }

    /// Checks the split's image files (a separate, opt-in step); see
    /// [`crate::cirr::CirrDataset::validate_images`].
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

    /// Number of triplets.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// `true` if there is no triplet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

fn parse_entry(
    index: usize,
    value: Value,
    split: FiqSplit,
    captions_file: &Path,
    split_file: &Path,
    gallery: &Gallery,
) -> Result<CirSample> {
    let entry = Entry::Index(index);
    let malformed = |reason: String| DataError::MalformedEntry {
        path: captions_file.to_path_buf(),
        entry: entry.clone(),
        reason,
    };
    let raw: RawEntry = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    let captions: [String; 2] = raw
        .captions
        .try_into()
        .map_err(|c: Vec<String>| malformed(format!("expected 2 captions, found {}", c.len())))?;
    if raw.target.is_none() && split != FiqSplit::Test {
        return Err(malformed(format!(
            "missing field `target` (required in the {split} split)"
        )));
    }
    let sample = CirSample {
        pair_id: index as u64,
        source: entry.clone(),
        reference: raw.candidate,
        text: QueryText::FashionIq(captions),
        target: raw.target,
        target_soft: Vec::new(),
        candidates: None,
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
