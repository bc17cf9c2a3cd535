//! # detailfusion
//!
//! DetailFusion composed image retrieval in Rust. This facade re-exports the workspace crates
//! that applications use:
//!
//! - [`encoders`]: BLIP-2 vision transformer and Q-Former, the hybrid modes, image and text
//!   processing, checkpoint loading.
//!
//! Shapes in the docs use `B` batch, `Q` queries (32), `P` embedding width (256).

pub use df_encoders as encoders;
pub use df_encoders::{
    Blip2Config, Blip2Model, Checkpoint, CheckpointFormat, ComposedQuery, EncoderError, ImageProcessor,
    LoadOptions, TextBatch, TextProcessor,
};
