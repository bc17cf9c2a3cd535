//! Training for DetailFusion: the losses of SPEC §4 (the three stages and evaluation build
//! on them).

mod error;
pub mod eval;
pub mod losses;
pub mod optim;
pub mod trainer;

pub use error::{Result, TrainError};
pub use losses::{LossConfig, Stage2Losses};
pub use optim::{AdamW, GradAccumulator, OptimizerConfig, Schedule};
pub use trainer::{train, Hooks, Stage, StageModel, TrainSummary, TrainerConfig, TrainerState};
