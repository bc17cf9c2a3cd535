//! SPRC's optimiser recipe: AdamW with decoupled weight decay, OneCycle or cosine-with-warmup
//! schedules, global-norm gradient clipping and gradient accumulation. The optimiser state
//! is plain named tensors so that checkpoints can hold it and resuming is exact.

use std::collections::HashMap;
use std::f64::consts::PI;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Learning-rate schedule over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// PyTorch's `OneCycleLR` (cosine annealing, two phases).
    OneCycle {
        /// Fraction of steps spent warming up (SPRC: 1.5 / epochs).
        pct_start: f64,
        /// Initial rate = peak / `div_factor`.
        div_factor: f64,
        /// Final rate = initial / `final_div_factor`.
        final_div_factor: f64,
    },
    /// Linear warm-up then cosine decay to zero.
    CosineWarmup {
        /// Warm-up steps.
        warmup_steps: usize,
    },
}

impl Schedule {
    /// The learning rate at optimiser step `step` (0-based) of `total` steps with peak `peak`.
    pub fn lr(&self, peak: f64, step: usize, total: usize) -> f64 {
        let total = total.max(1);
        match *self {
            Schedule::Constant => peak,
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let initial = peak / div_factor;
                let min = initial / final_div_factor;
                let end1 = (pct_start * total as f64 - 1.0).max(0.0);
                let end2 = (total - 1) as f64;
                let s = step as f64;
                let anneal =
                    |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0);
                if s <= end1 && end1 > 0.0 {
                    anneal(initial, peak, s / end1)
                } else {
                    let span = (end2 - end1).max(1.0);
                    anneal(peak, min, ((s - end1) / span).min(1.0))
                }
            }
            Schedule::CosineWarmup { warmup_steps } => {
                if step < warmup_steps {
                    peak * (step + 1) as f64 / warmup_steps as f64
                } else {
                    let span = (total - warmup_steps).max(1) as f64;
                    let pct = ((step - warmup_steps) as f64 / span).min(1.0);
                    peak * 0.5 * (1.0 + (PI * pct).cos())
                }
            }
        }
    }
}

/// Optimiser settings (SPRC's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate (1e-5 CIRR, 2e-5 Fashion IQ).
    pub lr: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimiser step.
    pub accumulation_steps: usize,
    /// Learning-rate schedule.
    pub schedule: Schedule,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-7,
            weight_decay: 0.05,
            grad_clip: None,
            accumulation_steps: 1,
            schedule: Schedule::OneCycle {
                pct_start: 0.3,
                div_factor: 25.0,
                final_div_factor: 1e4,
            },
        }
    }
}

/// AdamW (PyTorch semantics) over named variables, with inspectable state.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    cfg: OptimizerConfig,
}

impl AdamW {
    /// An optimiser for `vars` (name, variable), state zeroed.
    pub fn new(vars: Vec<(String, Var)>, cfg: OptimizerConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            step: 0,
            cfg,
        })
    }

    /// The optimised variables.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The gradients of our variables from a backward pass, by name (absent: no gradient).
    pub fn collect(&self, grads: &GradStore) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
            .collect()
    }

    /// One update with learning rate `lr`; `grads` by variable name (after accumulation and
    /// clipping). Variables without a gradient still decay, as in PyTorch only when they had
    /// one: here they are left untouched.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.step += 1;
        let c = &self.cfg;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(name) else { continue };
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
            let update = ((&m / bc1)? / denom)?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The state as named tensors (`m.<name>`, `v.<name>`, `step`) for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        let dev = self
            .m
            .first()
            .map(|t| t.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert("step".into(), Tensor::new(&[self.step as u32], &dev)?);
        Ok(out)
    }

    /// Restores [`AdamW::state`]; a missing or mis-shaped entry is an error naming it.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str, like: &Tensor| -> Result<Tensor> {
            let t = state
                .get(k)
                .ok_or_else(|| candle_core::Error::CannotFindTensor { path: k.into() })?;
            if t.shape() != like.shape() {
                candle_core::bail!(
                    "optimizer state `{k}`: shape {:?}, expected {:?}",
                    t.shape(),
                    like.shape()
                );
            }
            t.to_device(like.device())?.to_dtype(like.dtype())
        };
        for i in 0..self.vars.len() {
            let name = &self.vars[i].0;
            self.m[i] = get(&format!("m.{name}"), &self.m[i])?;
            self.v[i] = get(&format!("v.{name}"), &self.v[i])?;
        }
        let step = state
            .get("step")
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: "step".into() })?;
        self.step = step.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}

/// Sums gradients over micro-batches.
#[derive(Default)]
pub struct GradAccumulator {
    sums: HashMap<String, Tensor>,
    count: usize,
}

impl GradAccumulator {
    /// Adds one micro-batch's gradients.
    pub fn add(&mut self, grads: HashMap<String, Tensor>) -> Result<()> {
        for (name, g) in grads {
            let sum = match self.sums.remove(&name) {
                Some(s) => (s + g)?,
                None => g,
            };
            self.sums.insert(name, sum);
        }
        self.count += 1;
        Ok(())
    }

    /// Micro-batches added since the last [`GradAccumulator::take_mean`].
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean gradient per variable; resets the accumulator.
    pub fn take_mean(&mut self) -> Result<HashMap<String, Tensor>> {
        let n = self.count.max(1) as f64;
        self.count = 0;
        self.sums.drain().map(|(k, g)| Ok((k, (g / n)?))).collect()
    }
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}
