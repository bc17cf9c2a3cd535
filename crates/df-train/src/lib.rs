//! Training for DetailFusion (SPEC §4, §6): the losses, the optimiser recipe, the stage loop
//! with checkpoints and exact resumption, stage config files, progress reporting, and the
//! benchmark metrics.

pub mod config;
mod error;
pub mod eval;
pub mod losses;
pub mod optim;
pub mod progress;
pub mod trainer;

pub use config::{Benchmark, Precision, StageConfig};
pub use error::{Result, TrainError};
pub use losses::{LossConfig, Stage2Losses};
pub use optim::{AdamW, GradAccumulator, OptimizerConfig, Schedule};
pub use progress::{EpochMetrics, ProgressReporter, Reporter, RunInfo, StepMetrics};
pub use trainer::{train, Hooks, Stage, StageModel, TrainSummary, TrainerConfig, TrainerState};
