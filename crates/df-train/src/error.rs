//! Error type of the training crate.

use std::path::{Path, PathBuf};

/// Training errors; each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint is incomplete or corrupt.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting is unusable.
    #[error("training config: {0}")]
    Config(String),
    /// A config file is unreadable or holds a bad value.
    #[error("{}: `{field}`: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The field's dotted path (`trainer.optimizer.lr`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error("loss diverged at step {step}: {loss}")]
    Diverged {
        /// Optimiser step.
        step: usize,
        /// The value.
        loss: f64,
    },
    /// From the model.
    #[error("model: {0}")]
    Model(String),
    /// A computation error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: &Path, e: candle_core::Error) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

/// Result alias of the training crate.
pub type Result<T> = std::result::Result<T, TrainError>;
