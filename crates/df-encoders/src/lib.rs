//! BLIP-2 encoders for DetailFusion: the EVA vision transformer, the Q-Former and its hybrid
//! modes (image, SPRC composed query, text-only prompt, plain text), image and text
//! processing, and checkpoint loading (Hugging Face safetensors, sharded or not, hub cache,
//! and LAVIS / SPRC PyTorch files).
//!
//! Shapes use `B` batch, `Q` learned queries (32), `H` Q-Former width (768), `N` image tokens
//! (257), `W` ViT width (1408), `P` contrastive width (256), `L` text length (32).

pub mod blip2;
pub mod checkpoint;
pub mod cir;
pub mod config;
pub mod error;
pub mod hybrid;
pub mod image_processing;
pub mod nn;
pub mod qformer;
pub mod text_processing;
pub mod vit;

pub use blip2::Blip2Model;
pub use checkpoint::{Checkpoint, CheckpointFormat, LoadOptions};
pub use cir::{BranchOutput, Compositor, FusedQuery, GalleryEncoder, QueryBranch};
pub use config::{Blip2Config, QFormerConfig, VisionConfig};
pub use error::{EncoderError, Result};
pub use hybrid::{ComposedQuery, HybridEncoder};
pub use image_processing::ImageProcessor;
pub use qformer::{QFormerModel, TextEmbeddings};
pub use text_processing::{TextBatch, TextProcessor};
pub use vit::VisionModel;
