//! The on-disk layout of a staged run and where each stage starts from.
//!
//! ```text
//! <out>/stage1/{log.jsonl, checkpoint-latest/, checkpoint-best/, model/}
//! <out>/stage2/...   <out>/stage3/...   <out>/model/ (the last stage's result)
//! ```
//! A stage run alone starts from the latest earlier stage's result (`checkpoint-best` when
//! validation kept one, else `model`); `--resume` continues from its own `checkpoint-latest`.

use std::path::{Path, PathBuf};

use df_train::progress::stage_name;
use df_train::trainer::{BEST, LATEST};
use df_train::Stage;

use crate::{DetailFusionError, Result};

/// A finished stage's model directory name.
pub const MODEL_DIR: &str = "model";

/// The DetailFusion stages in order.
pub const STAGES: [Stage; 3] = [Stage::Di, Stage::Joint, Stage::Compositor];

/// `<out>/stage<N>`.
pub fn stage_dir(out: &Path, stage: Stage) -> PathBuf {
    out.join(stage_name(stage))
}

/// Where a stage's model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStart {
    /// Continue this stage from its `checkpoint-latest`.
    Resume(PathBuf),
    /// The result of an earlier stage.
    Previous(PathBuf),
    /// No earlier result: initialise from the backbone.
    Fresh,
}

/// The result of a finished stage: its best checkpoint when validation kept one, else its
/// final model.
pub fn stage_result(out: &Path, stage: Stage) -> Option<PathBuf> {
    let dir = stage_dir(out, stage);
    [dir.join(BEST), dir.join(MODEL_DIR)]
        .into_iter()
        .find(|d| d.join(crate::WEIGHTS_FILE).is_file())
}

/// Whether `stage` finished under `out` (its `model/` exists).
pub fn stage_finished(out: &Path, stage: Stage) -> bool {
    stage_dir(out, stage)
        .join(MODEL_DIR)
        .join(crate::WEIGHTS_FILE)
        .is_file()
}

/// Where `stage` starts. With `resume`, a `checkpoint-latest` of the stage is required.
pub fn stage_start(out: &Path, stage: Stage, resume: bool) -> Result<StageStart> {
    if resume {
        let ckpt = stage_dir(out, stage).join(LATEST);
        if !ckpt.join(df_train::trainer::STATE_FILE).is_file() {
            return Err(DetailFusionError::Variant(format!(
                "--resume: {} holds no checkpoint of {}",
                ckpt.display(),
                stage_name(stage)
            )));
        }
        return Ok(StageStart::Resume(ckpt));
    }
    let idx = STAGES.iter().position(|s| *s == stage).unwrap_or(0);
    let earlier = STAGES[..idx].iter().rev();
    Ok(earlier
        .filter_map(|s| stage_result(out, *s))
        .next()
        .map_or(StageStart::Fresh, StageStart::Previous))
}

/// Parses `1|2|3|all` (and `0` where the toy world has a stage 0) into stage numbers.
pub fn parse_stages(arg: &str, with_stage0: bool) -> Result<Vec<usize>> {
    let all: Vec<usize> = if with_stage0 {
        vec![0, 1, 2, 3]
    } else {
        vec![1, 2, 3]
    };
    if arg == "all" {
        return Ok(all);
    }
    match arg.parse::<usize>() {
        Ok(n) if all.contains(&n) => Ok(vec![n]),
        _ => Err(DetailFusionError::Variant(format!(
            "--stage {arg}: use {} or all",
            all.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Stage number (1–3) → stage.
pub fn stage_of(n: usize) -> Option<Stage> {
    n.checked_sub(1).and_then(|i| STAGES.get(i)).copied()
}

/// Copies `tokenizer.json` from `from` into the model directory `dir` (if it exists there).
pub fn copy_tokenizer(from: &Path, dir: &Path) -> Result<()> {
    if from.is_file() {
        let to = dir.join("tokenizer.json");
        if from != to {
            std::fs::copy(from, &to).map_err(|source| DetailFusionError::Io { path: to, source })?;
        }
    }
    Ok(())
}
