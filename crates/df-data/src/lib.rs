//! Data for DetailFusion composed image retrieval (CIR): loaders for CIRR, Fashion IQ and IPr2Pr,
//! an input pipeline, and a procedural CIR world for tests and small experiments.
//!
//! - [`cirr`], [`fashioniq`], [`ipr2pr`]: typed loaders ([`CirSample`]s plus a [`Gallery`] of image
//!   names → resolved paths). They read annotations without touching images; image validation is the
//!   opt-in [`LoadOptions::check_images`] / `validate_images` step.
//! - Bad input gives a [`DataError`] naming the file and the entry; with [`OnError::Skip`] loaders
//!   skip bad items and count them per [`SkipReason`] in a [`LoadReport`].
//! - [`pipeline`]: seeded shuffling, batching, decoding and preprocessing on worker threads; the
//!   output order depends only on the seed.
//! - [`toy`]: a seeded world of rendered shape scenes with atomic edits (IPr2Pr-like), composed
//!   queries with hard negatives (CIRR-like), scene captions and a WordPiece tokenizer.
//! - [`rng`]: the small seeded generator everything random uses.
//!
//! ```no_run
//! use df_data::{cirr::{CirrDataset, CirrSplit}, LoadOptions};
//! let val = CirrDataset::load("/data/cirr", CirrSplit::Val, &LoadOptions::default())?;
//! let s = &val.samples[0];
//! println!("{} + {:?} -> {:?}", s.reference, s.query_text(), s.target);
//! println!("{}", val.gallery.path(&s.reference).unwrap().display());
//! # Ok::<(), df_data::DataError>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cirr;
pub mod error;
pub mod fashioniq;
pub mod imageio;
pub mod ipr2pr;
mod json;
pub mod options;
pub mod pipeline;
pub mod report;
pub mod rng;
pub mod sample;
pub mod toy;

pub use error::{BoxError, DataError, Entry, ImageRole, Result};
pub use options::{ImageCheck, LoadOptions};
pub use report::{LoadReport, OnError, SkipReason, SkipStats};
pub use rng::Rng;
pub use sample::{CandidateSet, CirSample, FiqTextVariant, Gallery, GalleryImage, QueryText};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
