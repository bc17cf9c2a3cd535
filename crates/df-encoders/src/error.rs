//! Error type of the encoder crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running the encoders.
///
/// Each variant names the file, key, tensor or entry at fault so that a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `config.json` (or other JSON file) could not be parsed, or lacks a needed key.
    #[error("config {}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A config value is inconsistent (e.g. hidden size not divisible by the head count).
    #[error("invalid config: `{key}`: {message}")]
    InvalidConfig {
        /// The offending key, dotted (`qformer_config.hidden_size`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint lacks a tensor, has one of the wrong shape, or cannot be parsed.
    #[error("checkpoint {}: {source}", path.display())]
    Checkpoint {
        /// The checkpoint file (or directory).
        path: PathBuf,
        /// The underlying error; names the tensor.
        source: candle_core::Error,
    },
    /// A file needed from a Hugging Face hub repository is not in the local cache.
    #[error("hub repo `{repo}`: file `{file}` not found ({message})")]
    HubFile {
        /// The repo id.
        repo: String,
        /// The file within the repo.
        file: String,
        /// Why it could not be had.
        message: String,
    },
    /// An image could not be opened or decoded.
    #[error("image {}: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The `tokenizer.json` file (or `<in memory>`).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A tensor given to a forward method has the wrong shape or dtype.
    #[error("input `{name}`: {message}")]
    Input {
        /// The argument name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An error from candle during computation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the encoder crate.
pub type Result<T> = std::result::Result<T, EncoderError>;

impl EncoderError {
    /// Wraps a candle error with the checkpoint path it came from.
    pub fn checkpoint(path: impl Into<PathBuf>, source: candle_core::Error) -> Self {
        Self::Checkpoint {
            path: path.into(),
            source,
        }
    }
}
