//! Errors of the gallery index.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading, saving, updating or searching a
/// [`crate::index::GalleryIndex`] of any backend. Each variant names the file, image, entry,
/// server or collection at fault.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a DetailFusion index (another format, or another kind of safetensors
    /// file).
    #[error("{}: not a detailfusion index: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Why it was not recognised.
        message: String,
    },
    /// The file is a DetailFusion index of a version this build cannot read.
    #[error("{}: detailfusion index version {found} is not supported (this build reads version {supported})", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: String,
        /// The version this build reads.
        supported: u32,
    },
    /// The file is a DetailFusion index but is truncated or damaged.
    #[error("{}: corrupt index: entry `{entry}`: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The header key or tensor at fault (`header`, `tokens`, `names`, …).
        entry: String,
        /// What is wrong.
        message: String,
    },
    /// The index was built by another model (or another version of its gallery encoder).
    #[error(
        "index{} was built by model {index_fingerprint} but the model given has fingerprint \
         {model_fingerprint}: re-index the gallery with this model or load the model that built it",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
    )]
    ModelMismatch {
        /// The index file, when it came from one.
        path: Option<PathBuf>,
        /// Fingerprint stored in the index.
        index_fingerprint: String,
        /// Fingerprint of the model given.
        model_fingerprint: String,
    },
    /// A gallery folder holds no image that could be indexed.
    #[error("gallery {}: no images found{}", dir.display(), detail(*failed))]
    EmptyGallery {
        /// The folder.
        dir: PathBuf,
        /// How many image files were found but could not be read.
        failed: usize,
    },
    /// An image (e.g. a query's reference image) could not be read or decoded.
    #[error("image {}: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A name given to remove or exclude is not in the index.
    #[error("image `{name}` is not in the index")]
    UnknownImage {
        /// The name (relative path) asked for.
        name: String,
    },
    /// An image name is already in the index.
    #[error("image `{name}` is already in the index")]
    Duplicate {
        /// The name (relative path).
        name: String,
    },
    /// Searching an index that holds no image.
    #[error("the index holds no image")]
    EmptyIndex,
    /// An argument has the wrong shape or value.
    #[error("input `{name}`: {message}")]
    Input {
        /// The argument.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An index location (`path`, `usearch:path`, `milvus://host:port/collection`) that cannot
    /// be used.
    #[error("index location `{uri}`: {message}")]
    Uri {
        /// The location as given.
        uri: String,
        /// What is wrong.
        message: String,
    },
    /// An operation this backend does not offer (e.g. per-branch galleries on usearch).
    #[error("{backend} index: {message}")]
    Unsupported {
        /// The backend (`flat`, `usearch`, `milvus`).
        backend: &'static str,
        /// What is not supported, and what to use instead.
        message: String,
    },
    /// The engine behind an index failed (usearch library error, or a Milvus server error).
    #[error("{backend} index {location}: {message}")]
    Backend {
        /// The backend (`usearch`, `milvus`).
        backend: &'static str,
        /// The file or `server/collection`.
        location: String,
        /// The engine's message.
        message: String,
    },
    /// A server could not be reached (down, refusing, or timing out) after bounded retries.
    #[error("milvus server {endpoint} unreachable after {attempts} attempt(s) ({during}): {message}")]
    Unreachable {
        /// The server (`http://host:port`).
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The operation (`connect`, `insert`, `search`, …).
        during: String,
        /// The last error.
        message: String,
    },
    /// A collection exists but is not a DetailFusion gallery of the expected shape.
    #[error("milvus collection {collection}: wrong schema: {message}")]
    Schema {
        /// `server/collection`.
        collection: String,
        /// What does not match.
        message: String,
    },
    /// Some batches of an insert reached the engine and others did not: the gallery now holds
    /// `inserted` but not `failed`.
    #[error(
        "{location}: partial insert: {} image(s) inserted, {} not inserted (first: `{}`): {message}",
        inserted.len(), failed.len(), failed.first().map(String::as_str).unwrap_or("")
    )]
    PartialInsert {
        /// `server/collection` or file.
        location: String,
        /// Names of the images that were inserted (whole: all `Q` token vectors).
        inserted: Vec<String>,
        /// Names of the images that were not inserted.
        failed: Vec<String>,
        /// Why the rest failed.
        message: String,
    },
    /// From the model (encoding images or queries).
    #[error(transparent)]
    Model(Box<crate::DetailFusionError>),
    /// A computation error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn detail(failed: usize) -> String {
    if failed == 0 {
        String::new()
    } else {
        format!(" ({failed} image file(s) could not be read)")
    }
}

impl From<crate::DetailFusionError> for IndexError {
    fn from(e: crate::DetailFusionError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// Result alias of the index.
pub type Result<T> = std::result::Result<T, IndexError>;

impl IndexError {
    pub(crate) fn input(name: &str, message: impl ToString) -> Self {
        Self::Input {
            name: name.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, entry: &str, message: impl ToString) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            entry: entry.to_string(),
            message: message.to_string(),
        }
    }
}
