//! Error type of the facade.

use std::path::PathBuf;

/// Errors of building, loading, saving and running a [`crate::DetailFusion`] model.
#[derive(Debug, thiserror::Error)]
pub enum DetailFusionError {
    /// From the encoders (checkpoints, images, tokenizer, inputs).
    #[error(transparent)]
    Encoder(#[from] df_encoders::EncoderError),
    /// A model file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model `config.json` is malformed or inconsistent.
    #[error("model config {}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A weight file lacks a tensor or has one of the wrong shape.
    #[error("model weights {}: {source}", path.display())]
    Weights {
        /// The file.
        path: PathBuf,
        /// The underlying error; names the tensor.
        source: candle_core::Error,
    },
    /// The operation does not fit this model variant.
    #[error("{0}")]
    Variant(String),
    /// From a training run.
    #[error(transparent)]
    Train(#[from] df_train::TrainError),
    /// A computation error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the facade.
pub type Result<T> = std::result::Result<T, DetailFusionError>;
