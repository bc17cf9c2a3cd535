//! Training for DetailFusion: the losses of SPEC §4 (the three stages and evaluation build
//! on them).

pub mod losses;
pub mod optim;

pub use losses::{LossConfig, Stage2Losses};
pub use optim::{AdamW, GradAccumulator, OptimizerConfig, Schedule};
