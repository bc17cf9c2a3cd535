//! Stage config files: every hyper-parameter of one training stage, in JSON or TOML, with
//! SPRC's recipe as the default ([`StageConfig::sprc`]). Loading names the file and the field
//! at fault.

use std::path::Path;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::optim::Schedule;
use crate::trainer::{Stage, TrainerConfig};
use crate::{LossConfig, OptimizerConfig, Result, TrainError};

/// The dtype of the frozen parts (the ViT, and in stage 3 the cached branch outputs).
/// Trainable weights and the optimiser state always stay `f32`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// `bf16` on CUDA, `f32` elsewhere.
    #[default]
    Auto,
    /// Full precision.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl Precision {
    /// The dtype frozen parts run in on `device`.
    pub fn frozen_dtype(self, device: &Device) -> DType {
        match self {
            Precision::Auto if device.is_cuda() => DType::BF16,
            Precision::Auto | Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// The benchmark a stage config is for (they differ in learning rate and epochs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    /// CIRR.
    Cirr,
    /// Fashion IQ.
    FashionIq,
}

fn yes() -> bool {
    true
}

/// Everything one stage needs besides the data and the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Which stage: `di` (1), `joint` (2) or `compositor` (3); `itc` is the toy stage 0.
    pub stage: Stage,
    /// Loop and optimiser settings.
    #[serde(default)]
    pub trainer: TrainerConfig,
    /// Stage-2 loss weights (γ, SPRC's auxiliary losses).
    #[serde(default)]
    pub losses: LossConfig,
    /// Dtype of the frozen parts.
    #[serde(default)]
    pub precision: Precision,
    /// Validate after every epoch and keep the best checkpoint (SPEC §4 criterion).
    #[serde(default = "yes")]
    pub validate: bool,
}

impl StageConfig {
    /// SPRC's recipe for `stage` on `benchmark`.
    ///
    /// Stage 2 is SPRC's: AdamW β (0.9, 0.98), ε 1e-7, weight decay 0.05, lr 1e-5 (CIRR) /
    /// 2e-5 (Fashion IQ), batch 128, 50 / 30 epochs, OneCycle with `pct_start = 1.5 / epochs`
    /// and `div_factor = 100`, no clipping, no accumulation. Stages 1 and 3 are not in SPRC;
    /// they keep its optimiser and choose their own schedule (design choices, see
    /// `configs/README.md`).
    pub fn sprc(benchmark: Benchmark, stage: Stage) -> Self {
        let one_cycle = |epochs: usize| Schedule::OneCycle {
            pct_start: 1.5 / epochs as f64,
            div_factor: 100.0,
            final_div_factor: 1e4,
        };
        let (epochs, lr, schedule, validate) = match (stage, benchmark) {
            (Stage::Itc | Stage::Di, _) => (3, 2e-5, Schedule::CosineWarmup { warmup_steps: 500 }, false),
            (Stage::Joint, Benchmark::Cirr) => (50, 1e-5, one_cycle(50), true),
            (Stage::Joint, Benchmark::FashionIq) => (30, 2e-5, one_cycle(30), true),
            (Stage::Compositor, _) => (10, 1e-4, Schedule::CosineWarmup { warmup_steps: 200 }, true),
        };
        Self {
            stage,
            trainer: TrainerConfig {
                epochs,
                batch_size: 128,
                drop_last: true,
                seed: 0,
                optimizer: OptimizerConfig {
                    lr,
                    schedule,
                    ..Default::default()
                },
                checkpoint_every: Some(1000),
                max_steps: None,
            },
            losses: LossConfig::default(),
            precision: Precision::Auto,
            validate,
        }
    }

    /// Reads a `.toml` file or (any other extension) a JSON file, then checks every value.
    /// Errors name the file and the field: `configs/cirr/stage2.json: trainer.optimizer.lr: ...`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let cfg: Self = parse_config(path, &text)?;
        cfg.validate()
            .map_err(|(field, message)| TrainError::ConfigFile {
                path: path.into(),
                field,
                message,
            })?;
        Ok(cfg)
    }

    /// Writes the config as pretty JSON, or as TOML when `path` ends in `.toml`.
    pub fn to_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = if is_toml(path) {
            toml::to_string_pretty(self).map_err(|e| TrainError::Config(e.to_string()))?
        } else {
            serde_json::to_string_pretty(self).map_err(|e| TrainError::Config(e.to_string()))? + "\n"
        };
        std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
    }

    /// Checks every value; the error is `(field path, what is wrong)`.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        validate_trainer(&self.trainer, "trainer")?;
        let l = &self.losses;
        for (name, v) in [
            ("gamma", l.gamma),
            ("text_only_weight", l.text_only_weight),
            ("align_weight", l.align_weight),
        ] {
            check(v.is_finite() && v >= 0.0, &format!("losses.{name}"), v, "≥ 0")?;
        }
        Ok(())
    }
}

fn check(
    ok: bool,
    field: &str,
    value: impl std::fmt::Debug,
    want: &str,
) -> std::result::Result<(), (String, String)> {
    if ok {
        Ok(())
    } else {
        Err((field.to_string(), format!("must be {want}, got {value:?}")))
    }
}

/// Checks a [`TrainerConfig`]'s values; fields are reported under `prefix`.
pub fn validate_trainer(t: &TrainerConfig, prefix: &str) -> std::result::Result<(), (String, String)> {
    let f = |name: &str| format!("{prefix}.{name}");
    check(t.batch_size > 0, &f("batch_size"), t.batch_size, "positive")?;
    if let Some(n) = t.checkpoint_every {
        check(n > 0, &f("checkpoint_every"), n, "positive (or null)")?;
    }
    let o = &t.optimizer;
    let f = |name: &str| format!("{prefix}.optimizer.{name}");
    check(o.lr.is_finite() && o.lr > 0.0, &f("lr"), o.lr, "positive")?;
    check((0.0..1.0).contains(&o.beta1), &f("beta1"), o.beta1, "in [0, 1)")?;
    check((0.0..1.0).contains(&o.beta2), &f("beta2"), o.beta2, "in [0, 1)")?;
    check(o.eps.is_finite() && o.eps > 0.0, &f("eps"), o.eps, "positive")?;
    check(o.weight_decay >= 0.0, &f("weight_decay"), o.weight_decay, "≥ 0")?;
    if let Some(c) = o.grad_clip {
        check(c > 0.0, &f("grad_clip"), c, "positive (or null)")?;
    }
    check(
        o.accumulation_steps > 0,
        &f("accumulation_steps"),
        o.accumulation_steps,
        "positive",
    )?;
    match o.schedule {
        Schedule::OneCycle {
            pct_start,
            div_factor,
            final_div_factor,
        } => {
            let g = |name: &str| format!("{prefix}.optimizer.schedule.{name}");
            check(
                pct_start > 0.0 && pct_start <= 1.0,
                &g("pct_start"),
                pct_start,
                "in (0, 1]",
            )?;
            check(div_factor > 0.0, &g("div_factor"), div_factor, "positive")?;
            check(
                final_div_factor > 0.0,
                &g("final_div_factor"),
                final_div_factor,
                "positive",
            )?;
        }
        Schedule::Constant | Schedule::CosineWarmup { .. } => {}
    }
    Ok(())
}

fn is_toml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// Parses `text` (TOML when `path` ends in `.toml`, JSON otherwise) into `T`; a type or
/// syntax error names `path` and the field's dotted path.
pub fn parse_config<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let err = |field: String, message: String| TrainError::ConfigFile {
        path: path.into(),
        field,
        message,
    };
    let field = |p: &serde_path_to_error::Path| {
        let s = p.to_string();
        if s == "." {
            "(top level)".to_string()
        } else {
            s
        }
    };
    if is_toml(path) {
        let de = toml::Deserializer::parse(text).map_err(|e| err("(syntax)".into(), e.to_string()))?;
        serde_path_to_error::deserialize(de)
            .map_err(|e| err(field(e.path()), e.inner().message().to_string()))
    } else {
        let mut de = serde_json::Deserializer::from_str(text);
        let v: T = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| err(field(e.path()), e.inner().to_string()))?;
        de.end().map_err(|e| err("(syntax)".into(), e.to_string()))?;
        Ok(v)
    }
}
