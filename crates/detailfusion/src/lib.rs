//! # detailfusion
//!
//! DetailFusion composed image retrieval in Rust. This facade assembles the workspace crates
//! into [`DetailFusion`] and re-exports what applications use:
//!
//! - [`encoders`]: BLIP-2 vision transformer and Q-Former, the hybrid modes, image and text
//!   processing, checkpoint loading;
//! - [`compositor`], [`di_branch`], [`gm_branch`]: the method's parts;
//! - [`train`]: the losses.
//!
//! Shapes in the docs use `B` queries, `N` gallery images, `Q` tokens per image (32), `P`
//! embedding width (256).

pub mod benchmarks;
mod config;
mod error;
pub mod index;
mod init;
mod malloc;
mod model;
mod pretrain;
pub mod toy;
pub mod training;
pub mod vit_cache;

pub use df_compositor as compositor;
pub use df_data as data;
pub use df_di_branch as di_branch;
pub use df_encoders as encoders;
pub use df_gm_branch as gm_branch;
pub use df_train as train;

pub use config::{DetailFusionConfig, GalleryMode, Variant};
pub use df_encoders::{
    Blip2Config, Blip2Model, BranchOutput, Checkpoint, CheckpointFormat, ComposedQuery, EncoderError,
    FusedQuery, ImageProcessor, LoadOptions, TextBatch, TextProcessor,
};
pub use error::{DetailFusionError, Result};
pub use init::{NameMap, Source};
pub use malloc::keep_freed_memory;
pub use model::{DetailFusion, GalleryFeatures, InitSources, QueryFeatures, CONFIG_FILE, WEIGHTS_FILE};
pub use pretrain::{ItcPretrainer, SceneParsing};
pub use training::{batch_negatives, StageTrainer, TrainItem, TrainingData};
