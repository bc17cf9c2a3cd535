//! Error policy ([`OnError`]) and the account of skipped items ([`LoadReport`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{DataError, Result};

/// What a loader does with a bad item (malformed entry, unknown/missing/corrupt image, failed
/// preprocessing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Return the first error (default).
    #[default]
    Fail,
    /// Skip the item, count it in the [`LoadReport`] under its [`SkipReason`] and go on.
    Skip,
}

/// Why an item was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// An entry with the wrong schema (missing field, wrong type, ...).
    MalformedEntry,
    /// An entry names an image absent from its split.
    UnknownImage,
    /// An entry needs an image that was itself skipped (missing or corrupt file).
    NeedsSkippedImage,
    /// A duplicated identifier (pair id, image name).
    Duplicate,
    /// An image file does not exist.
    MissingImage,
    /// An image file cannot be decoded.
    CorruptImage,
    /// The preprocessing closure failed.
    PreprocessFailed,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::MalformedEntry => "malformed entry",
            SkipReason::UnknownImage => "image absent from split",
            SkipReason::NeedsSkippedImage => "needs a skipped image",
            SkipReason::Duplicate => "duplicate identifier",
            SkipReason::MissingImage => "missing image file",
            SkipReason::CorruptImage => "corrupt image file",
            SkipReason::PreprocessFailed => "preprocessing failed",
        })
    }
}

/// Count and first few messages of the items skipped for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipStats {
    /// How many items were skipped.
    pub count: usize,
    /// The error messages of the first [`LoadReport::MAX_EXAMPLES`] of them.
    pub examples: Vec<String>,
}

/// What a load (or a pipeline epoch) kept and what it skipped, per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of samples (queries / triplets / pipeline items) kept.
    pub samples: usize,
    /// Number of gallery images kept.
    pub gallery_images: usize,
    skipped: BTreeMap<SkipReason, SkipStats>,
}

impl LoadReport {
    /// How many example messages are kept per reason.
    pub const MAX_EXAMPLES: usize = 5;

    /// Records a skipped item.
    pub fn record(&mut self, reason: SkipReason, message: String) {
        let s = self.skipped.entry(reason).or_default();
        s.count += 1;
        if s.examples.len() < Self::MAX_EXAMPLES {
            s.examples.push(message);
        }
    }

    /// Applies `policy` to `err`: under [`OnError::Skip`] a skippable error is recorded and `Ok(())`
    /// returned; otherwise the error is returned.
    pub fn handle(&mut self, policy: OnError, err: DataError) -> Result<()> {
        match (policy, err.skip_reason()) {
            (OnError::Skip, Some(reason)) => {
                self.record(reason, err.to_string());
                Ok(())
            }
            _ => Err(err),
        }
    }

    /// Number of items skipped for `reason`.
    pub fn skipped(&self, reason: SkipReason) -> usize {
        self.skipped.get(&reason).map_or(0, |s| s.count)
    }

    /// Count and examples for `reason`, if anything was skipped for it.
    pub fn stats(&self, reason: SkipReason) -> Option<&SkipStats> {
        self.skipped.get(&reason)
    }

    /// Total number of skipped items.
    pub fn total_skipped(&self) -> usize {
        self.skipped.values().map(|s| s.count).sum()
    }

    /// `true` when nothing was skipped.
    pub fn is_clean(&self) -> bool {
        self.skipped.is_empty()
    }

    /// All reasons with their counts and examples, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (SkipReason, &SkipStats)> {
        self.skipped.iter().map(|(r, s)| (*r, s))
    }

    /// Adds the skipped counts of `other` to `self` (the kept counts are left alone).
    pub fn merge_skipped(&mut self, other: &LoadReport) {
        for (reason, stats) in other.iter() {
            let s = self.skipped.entry(reason).or_default();
            s.count += stats.count;
            for e in &stats.examples {
                if s.examples.len() < Self::MAX_EXAMPLES {
                    s.examples.push(e.clone());
                }
            }
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} samples, {} gallery images, {} skipped",
            self.samples,
            self.gallery_images,
            self.total_skipped()
        )?;
        for (reason, stats) in self.iter() {
            write!(f, "\n  {reason}: {}", stats.count)?;
            for e in &stats.examples {
                write!(f, "\n    e.g. {e}")?;
            }
        }
        Ok(())
    }
}
