//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

/// Result alias with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Boxed error returned by user-supplied closures (preprocessing).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which entry of an annotation file (or which item of a pipeline) an error is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Entry {
    /// The whole file.
    File,
    /// The `index`-th element of a JSON list (0-based).
    Index(usize),
    /// The `index`-th element of a CIRR captions list, with its `pairid`.
    Pair {
        /// Position in the list (0-based).
        index: usize,
        /// The entry's `pairid`.
        pair_id: u64,
    },
    /// A key of a JSON object (e.g. an image name of a CIRR split file).
    Key(String),
    /// An IPr2Pr prompt folder, optionally one seed in it.
    Folder {
        /// The folder.
        folder: PathBuf,
        /// The image seed, if the error is about one triplet.
        seed: Option<Box<str>>,
    },
    /// A row of a parquet file.
    Row(usize),
    /// The `index`-th item of a [`crate::pipeline::Loader`].
    Item(usize),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::File => write!(f, "whole file"),
            Entry::Index(i) => write!(f, "entry #{i}"),
            Entry::Pair { index, pair_id } => write!(f, "entry #{index} (pairid {pair_id})"),
            Entry::Key(k) => write!(f, "key `{k}`"),
            Entry::Folder { folder, seed: None } => write!(f, "folder {}", folder.display()),
            Entry::Folder {
                folder,
                seed: Some(s),
            } => write!(f, "folder {} seed {s}", folder.display()),
            Entry::Row(r) => write!(f, "row {r}"),
            Entry::Item(i) => write!(f, "item #{i}"),
        }
    }
}

/// The role an image name plays in an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageRole {
    /// The reference (query) image.
    Reference,
    /// The target image.
    Target,
    /// A member of the CIRR candidate set (`img_set.members`).
    Member,
    /// A key of CIRR `target_soft`.
    SoftTarget,
    /// A gallery image.
    Gallery,
}

impl fmt::Display for ImageRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageRole::Reference => "reference",
            ImageRole::Target => "target",
            ImageRole::Member => "candidate-set member",
            ImageRole::SoftTarget => "soft target",
            ImageRole::Gallery => "gallery image",
        })
    }
}

/// Errors of this crate. Every variant that concerns user data names the file and, where there is
/// one, the entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("malformed JSON in {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A JSON file is valid JSON but an entry does not have the expected schema.
    #[error("{}: {entry}: {reason}", path.display())]
    MalformedEntry {
        /// The annotation file.
        path: PathBuf,
        /// The entry.
        entry: Entry,
        /// What is wrong.
        reason: String,
    },
    /// An entry names an image that its split file does not list.
    #[error("{}: {entry}: {role} image `{name}` is absent from the split file {}", path.display(), split_file.display())]
    UnknownImage {
        /// The annotation (captions) file.
        path: PathBuf,
        /// The entry.
        entry: Entry,
        /// The image name.
        name: String,
        /// The role of the image in the entry.
        role: ImageRole,
        /// The split file that should have listed it.
        split_file: PathBuf,
    },
    /// An entry needs an image that was dropped earlier (missing or corrupt file) under
    /// [`crate::OnError::Skip`].
    #[error("{}: {entry}: {role} image `{name}` was skipped ({why})", path.display())]
    SkippedImage {
        /// The annotation file.
        path: PathBuf,
        /// The entry.
        entry: Entry,
        /// The image name.
        name: String,
        /// The role of the image in the entry.
        role: ImageRole,
        /// Why the image was skipped.
        why: String,
    },
    /// Two entries share an identifier that must be unique.
    #[error("{}: {entry}: duplicate {what} `{value}`", path.display())]
    Duplicate {
        /// The annotation file.
        path: PathBuf,
        /// The second entry with the identifier.
        entry: Entry,
        /// What is duplicated (e.g. "pairid", "image name").
        what: &'static str,
        /// The duplicated value.
        value: String,
    },
    /// An image file does not exist.
    #[error("image `{name}` ({entry}) not found: {}", path.display())]
    MissingImage {
        /// The resolved image path.
        path: PathBuf,
        /// The image name.
        name: String,
        /// Where the image is referenced.
        entry: Entry,
    },
    /// An image file exists but cannot be decoded.
    #[error("cannot decode image `{name}` ({entry}) at {}: {source}", path.display())]
    CorruptImage {
        /// The image path.
        path: PathBuf,
        /// The image name.
        name: String,
        /// Where the image is referenced.
        entry: Entry,
        /// The decoder error.
        #[source]
        source: Box<image::ImageError>,
    },
    /// The user's preprocessing closure failed on an image.
    #[error("preprocessing failed for {} ({entry}): {source}", path.display())]
    Preprocess {
        /// The image path.
        path: PathBuf,
        /// The pipeline item.
        entry: Entry,
        /// The closure's error.
        #[source]
        source: BoxError,
    },
    /// A pipeline worker thread panicked (a bug in the preprocessing closure).
    #[error("pipeline worker {worker} panicked while processing batch {batch}")]
    WorkerPanicked {
        /// The worker index.
        worker: usize,
        /// The batch it was working on.
        batch: usize,
    },
    /// An image could not be encoded or written.
    #[error("cannot write image {}: {source}", path.display())]
    ImageWrite {
        /// The output path.
        path: PathBuf,
        /// The encoder error.
        #[source]
        source: Box<image::ImageError>,
    },
    /// Building or saving a tokenizer failed.
    #[error("tokenizer error{}: {message}", path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, if any.
        path: Option<PathBuf>,
        /// The error message of the `tokenizers` crate.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A parquet file cannot be read, lacks a column, or has a bad row.
    #[cfg(feature = "parquet")]
    #[error("{}: {entry}: {message}", path.display())]
    Parquet {
        /// The parquet file.
        path: PathBuf,
        /// The row ([`Entry::Row`], skippable) or the whole file.
        entry: Entry,
        /// What went wrong.
        message: String,
    },
}

impl DataError {
    /// The skip reason this error counts under when it is skipped (see [`crate::LoadReport`]);
    /// `None` for errors that are never skipped (unreadable or unparsable annotation files,
    /// configuration errors).
    pub fn skip_reason(&self) -> Option<crate::SkipReason> {
        use crate::SkipReason as R;
        Some(match self {
            DataError::MalformedEntry { .. } => R::MalformedEntry,
            DataError::UnknownImage { .. } => R::UnknownImage,
            DataError::SkippedImage { .. } => R::NeedsSkippedImage,
            DataError::Duplicate { .. } => R::Duplicate,
            DataError::MissingImage { .. } => R::MissingImage,
            DataError::CorruptImage { .. } => R::CorruptImage,
            DataError::Preprocess { .. } => R::PreprocessFailed,
            #[cfg(feature = "parquet")]
            DataError::Parquet {
                entry: Entry::Row(_), ..
            } => R::MalformedEntry,
            _ => return None,
        })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn error_stays_small() {
        // Keeps `Result<_, DataError>` cheap to move (clippy::result_large_err).
        assert!(std::mem::size_of::<super::DataError>() <= 120);
    }
}
