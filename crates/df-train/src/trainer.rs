//! The stage-agnostic training loop: seeded epoch order, micro-batch accumulation, clipping,
//! AdamW with a schedule, JSONL metrics and a pluggable [`Reporter`] (progress bars), atomic
//! checkpoints every N steps and at epoch ends, exact resumption, and best-checkpoint selection
//! by a validation callback.
//!
//! The model side is a [`StageModel`]: it names the variables a stage trains and computes
//! the stage's loss for a batch, so freezing is a matter of which variables the optimiser sees.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::optim::{clip_grad_norm, AdamW, GradAccumulator, OptimizerConfig};
use crate::progress::{EpochMetrics, Reporter, RunInfo, StepMetrics};
use crate::{Result, TrainError};

/// The three DetailFusion stages (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Stage 0 of the toy pipeline: BLIP-2-style image–text contrastive pretraining, the
    /// stand-in for BLIP-2 weights.
    Itc,
    /// DI pretraining on image edits.
    Di,
    /// Joint fine-tuning of DI and GM.
    Joint,
    /// Compositor only, everything else frozen.
    Compositor,
}

/// A model that can be trained stage by stage.
pub trait StageModel {
    /// The variables `stage` trains, by name (sorted, stable).
    fn trainable(&self, stage: Stage) -> Vec<(String, Var)>;
    /// The scalar loss of `stage` on the items `indices` of the training set, plus named parts
    /// for logging.
    fn loss(&self, stage: Stage, indices: &[usize]) -> Result<(Tensor, Vec<(String, f32)>)>;
    /// Writes the model into `dir` (which exists).
    fn save(&self, dir: &Path) -> Result<()>;
}

/// Loop settings of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Items per micro-batch.
    pub batch_size: usize,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Seed of the data order.
    pub seed: u64,
    /// Optimiser and schedule.
    pub optimizer: OptimizerConfig,
    /// Write a checkpoint every this many optimiser steps (and at each epoch end).
    pub checkpoint_every: Option<usize>,
    /// Stop after this many optimiser steps in this call (for tests and time limits).
    pub max_steps: Option<usize>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 32,
            drop_last: true,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            checkpoint_every: None,
            max_steps: None,
        }
    }
}

/// Where the loop is; saved in every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Stage being trained.
    pub stage: Option<Stage>,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Micro-batches of this epoch already consumed.
    pub batch_in_epoch: usize,
    /// Optimiser steps so far.
    pub global_step: usize,
    /// Best validation value so far (higher is better).
    pub best: Option<f64>,
    /// Seed of the data order.
    pub seed: u64,
}

/// File names inside a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// See [`OPTIMIZER_FILE`].
pub const STATE_FILE: &str = "trainer.json";
/// The rolling checkpoint's directory name under the output directory.
pub const LATEST: &str = "checkpoint-latest";
/// The best checkpoint's directory name under the output directory.
pub const BEST: &str = "checkpoint-best";

/// The order of items in `epoch`: a Fisher–Yates shuffle seeded by `(seed, epoch)` only, so
/// it does not depend on workers, batch size or where a run was resumed.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut state = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        // SplitMix64.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Summary of a [`train`] call.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The stage trained.
    pub stage: Stage,
    /// Final loop state.
    pub state: TrainerState,
    /// Mean loss of the last epoch run.
    pub last_epoch_loss: f64,
    /// Whether `max_steps` stopped the run early.
    pub stopped_early: bool,
    /// The epochs finished in this call.
    pub epochs: Vec<EpochMetrics>,
    /// Wall-clock seconds of this call.
    pub seconds: f64,
}

/// Validation callback: a value to maximise.
pub type Validate<'a, M> = &'a dyn Fn(&M) -> Result<f64>;

/// Callbacks of a run.
pub struct Hooks<'a, M> {
    /// Validation after each epoch; higher is better. The best epoch is kept in
    /// [`BEST`].
    pub validate: Option<Validate<'a, M>>,
    /// Called with each step's JSON log line (also written to `log.jsonl`).
    pub on_step: Option<&'a dyn Fn(&serde_json::Value)>,
    /// Progress and metrics: bars, log lines, tables ([`crate::ProgressReporter`] or your own).
    pub reporter: Option<&'a dyn Reporter>,
}

impl<M> Default for Hooks<'_, M> {
    fn default() -> Self {
        Self {
            validate: None,
            on_step: None,
            reporter: None,
        }
    }
}

struct JsonLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonLog {
    fn open(path: PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { path, file })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}").map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Trains `stage` of `model` on `n_items` items; checkpoints go under `out`, metrics to
/// `out/log.jsonl` (one `{"kind": "step"}` line per optimiser step, one `{"kind": "epoch"}`
/// line per epoch). With `resume`, continues from a checkpoint directory written by this
/// function (the model itself must already have been loaded from it).
pub fn train<M: StageModel>(
    model: &M,
    stage: Stage,
    n_items: usize,
    cfg: &TrainerConfig,
    out: &Path,
    resume: Option<&Path>,
    hooks: &Hooks<M>,
) -> Result<TrainSummary> {
    if cfg.batch_size == 0 || cfg.optimizer.accumulation_steps == 0 {
        return Err(TrainError::Config(
            "`batch_size` and `accumulation_steps` must be positive".into(),
        ));
    }
    let batches = if cfg.drop_last {
        n_items / cfg.batch_size
    } else {
        n_items.div_ceil(cfg.batch_size)
    };
    if batches == 0 {
        return Err(TrainError::Config(format!(
            "{n_items} items make no batch of {} (drop_last = {})",
            cfg.batch_size, cfg.drop_last
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let call_started = Instant::now();
    let steps_per_epoch = batches.div_ceil(cfg.optimizer.accumulation_steps);
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut opt = AdamW::new(model.trainable(stage), cfg.optimizer.clone())?;
    let mut state = TrainerState {
        stage: Some(stage),
        seed: cfg.seed,
        ..Default::default()
    };
    if let Some(dir) = resume {
        state = read_state(dir)?;
        if state.stage != Some(stage) {
            return Err(TrainError::Config(format!(
                "checkpoint {} is of stage {:?}, not {stage:?}",
                dir.display(),
                state.stage
            )));
        }
        let opt_file = dir.join(OPTIMIZER_FILE);
        let tensors = candle_core::safetensors::load(&opt_file, &candle_core::Device::Cpu)
            .map_err(|e| TrainError::checkpoint(&opt_file, e))?;
        opt.load_state(&tensors)
            .map_err(|e| TrainError::checkpoint(&opt_file, e))?;
    }
    let mut log = JsonLog::open(out.join("log.jsonl"))?;
    if let Some(r) = hooks.reporter {
        r.start(&RunInfo {
            stage,
            epochs: cfg.epochs,
            steps_per_epoch,
            total_steps,
            start_step: state.global_step,
            items: n_items,
            batch_size: cfg.batch_size,
        });
    }
    let mut summary = TrainSummary {
        stage,
        state: state.clone(),
        last_epoch_loss: f64::NAN,
        stopped_early: false,
        epochs: vec![],
        seconds: 0.0,
    };
    let finish =
        |mut summary: TrainSummary, state: TrainerState, stopped_early: bool| -> Result<TrainSummary> {
            summary.state = state;
            summary.stopped_early = stopped_early;
            summary.seconds = call_started.elapsed().as_secs_f64();
            if let Some(r) = hooks.reporter {
                r.finish(&summary);
            }
            Ok(summary)
        };
    let mut acc = GradAccumulator::default();
    let mut steps_this_call = 0usize;
    while state.epoch < cfg.epochs {
        let order = epoch_order(n_items, cfg.seed, state.epoch);
        let (mut loss_sum, mut loss_n, mut items_seen) = (0f64, 0usize, 0usize);
        let started = Instant::now();
        while state.batch_in_epoch < batches {
            let b = state.batch_in_epoch;
            let idx = &order[b * cfg.batch_size..((b + 1) * cfg.batch_size).min(n_items)];
            let (loss, parts) = model.loss(stage, idx)?;
            let loss_value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged {
                    step: state.global_step,
                    loss: loss_value,
                });
            }
            acc.add(opt.collect(&loss.backward()?))?;
            loss_sum += loss_value;
            loss_n += 1;
            items_seen += idx.len();
            state.batch_in_epoch += 1;
            let epoch_done = state.batch_in_epoch == batches;
            if acc.count() < cfg.optimizer.accumulation_steps && !epoch_done {
                continue;
            }
            let mut grads = acc.take_mean()?;
            let grad_norm = match cfg.optimizer.grad_clip {
                Some(max) => clip_grad_norm(&mut grads, max)?,
                None => crate::optim::global_norm(&grads)?,
            };
            let lr = cfg
                .optimizer
                .schedule
                .lr(cfg.optimizer.lr, state.global_step, total_steps);
            opt.step(&grads, lr)?;
            state.global_step += 1;
            steps_this_call += 1;
            let metrics = StepMetrics {
                stage,
                epoch: state.epoch,
                step: state.global_step,
                total_steps,
                loss: loss_value,
                lr,
                grad_norm,
                items_per_s: items_seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
                elapsed_s: call_started.elapsed().as_secs_f64(),
                parts,
            };
            let line = metrics.to_json();
            log.write(&line)?;
            if let Some(f) = hooks.on_step {
                f(&line);
            }
            if let Some(r) = hooks.reporter {
                r.step(&metrics);
            }
            let periodic = cfg
                .checkpoint_every
                .is_some_and(|n| n > 0 && state.global_step % n == 0);
            if periodic && !epoch_done {
                write_checkpoint(model, &opt, &state, &out.join(LATEST))?;
            }
            if cfg.max_steps.is_some_and(|m| steps_this_call >= m) && !epoch_done {
                summary.last_epoch_loss = loss_sum / loss_n as f64;
                return finish(summary, state, true);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        summary.last_epoch_loss = loss_sum / loss_n.max(1) as f64;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        let mut val = None;
        let mut is_best = false;
        if let Some(validate) = hooks.validate {
            let value = validate(model)?;
            val = Some(value);
            if state.best.is_none_or(|b| value > b) {
                state.best = Some(value);
                is_best = true;
                write_checkpoint(model, &opt, &state, &out.join(BEST))?;
            }
        }
        write_checkpoint(model, &opt, &state, &out.join(LATEST))?;
        let em = EpochMetrics {
            stage,
            epoch: state.epoch - 1,
            global_step: state.global_step,
            loss: summary.last_epoch_loss,
            val,
            best: state.best,
            is_best,
            seconds,
            items_per_s: items_seen as f64 / seconds.max(1e-9),
        };
        log.write(&em.to_json())?;
        if let Some(r) = hooks.reporter {
            r.epoch(&em);
        }
        summary.epochs.push(em);
        if cfg.max_steps.is_some_and(|m| steps_this_call >= m) && state.epoch < cfg.epochs {
            return finish(summary, state, true);
        }
    }
    finish(summary, state, false)
}

/// Reads a checkpoint's loop state.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path,
        message: e.to_string(),
    })
}

/// Writes model, optimiser and loop state into `dir` atomically: everything goes to a
/// sibling temporary directory that then replaces `dir`.
pub fn write_checkpoint<M: StageModel>(
    model: &M,
    opt: &AdamW,
    state: &TrainerState,
    dir: &Path,
) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", dir.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    model.save(&tmp)?;
    let opt_state: HashMap<String, Tensor> = opt.state()?;
    candle_core::safetensors::save(&opt_state, tmp.join(OPTIMIZER_FILE))
        .map_err(|e| TrainError::checkpoint(&tmp.join(OPTIMIZER_FILE), e))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Config(e.to_string()))?;
    std::fs::write(tmp.join(STATE_FILE), json).map_err(|e| TrainError::io(&tmp, e))?;
    let old = PathBuf::from(format!("{}.old", dir.display()));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
