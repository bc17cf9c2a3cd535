//! The Global-Detail Feature Fusion Block.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use df_encoders::nn::{l2_normalize, softmax_last_dim};
use df_encoders::FusedQuery;

use crate::{CompositorConfig, FusionMode};

/// Fuses the two global features with per-query weights (`mlp.fc1`, `mlp.fc2`).
#[derive(Debug, Clone)]
pub struct GlobalDetailFusion {
    pub(crate) mlp: Option<(Linear, Linear)>,
    pub(crate) mode: FusionMode,
}

impl GlobalDetailFusion {
    /// Builds the fusion MLP (`2P → hidden → 2` for softmax, `→ P` for the gate).
    pub fn new(cfg: &CompositorConfig, vb: VarBuilder) -> Result<Self> {
        let (p, h) = (cfg.hidden_size, cfg.fusion_hidden_size);
        let out = match cfg.fusion {
            FusionMode::Softmax => Some(2),
            FusionMode::Gate => Some(p),
            FusionMode::Fixed { .. } => None,
        };
        let mlp = out
            .map(|o| -> Result<_> {
                Ok((
                    candle_nn::linear(2 * p, h, vb.pp("mlp.fc1"))?,
                    candle_nn::linear(h, o, vb.pp("mlp.fc2"))?,
                ))
            })
            .transpose()?;
        Ok(Self {
            mlp,
            mode: cfg.fusion,
        })
    }

    /// `context`: `(c_DI, c_GM)` `[B, P]` each (unused for fixed weights); `q_di, q_gm: [B, P]`.
    pub fn forward(
        &self,
        context: Option<&(Tensor, Tensor)>,
        q_di: &Tensor,
        q_gm: &Tensor,
    ) -> Result<FusedQuery> {
        let b = q_di.dim(0)?;
        let logits = match (&self.mlp, context) {
            (Some((fc1, fc2)), Some((c_di, c_gm))) => {
                let x = Tensor::cat(&[c_di, c_gm], 1)?;
                Some(fc2.forward(&fc1.forward(&x)?.gelu_erf()?)?)
            }
            (Some(_), None) => candle_core::bail!("fusion MLP needs the extraction block's context features"),
            (None, _) => None,
        };
        match (self.mode, logits) {
            (FusionMode::Softmax, Some(l)) => {
                let weights = softmax_last_dim(&l)?; // [B, 2]
                let mixed = (q_di.broadcast_mul(&weights.narrow(1, 0, 1)?)?
                    + q_gm.broadcast_mul(&weights.narrow(1, 1, 1)?)?)?;
                Ok(FusedQuery {
                    feature: l2_normalize(&mixed)?,
                    weights,
                })
            }
            (FusionMode::Gate, Some(l)) => {
                let g = candle_nn::ops::sigmoid(&l)?; // [B, P]
                let mixed = ((q_di * &g)? + (q_gm * (1.0 - &g)?)?)?;
                let mean = g.mean_keepdim(1)?;
                Ok(FusedQuery {
                    feature: l2_normalize(&mixed)?,
                    weights: Tensor::cat(&[&mean, &(1.0 - &mean)?], 1)?,
                })
            }
            (FusionMode::Fixed { di_weight }, _) => {
                let mixed = ((q_di * di_weight)? + (q_gm * (1.0 - di_weight))?)?;
                let w = Tensor::new(&[di_weight as f32, (1.0 - di_weight) as f32], q_di.device())?
                    .to_dtype(q_di.dtype())?
                    .unsqueeze(0)?
                    .broadcast_as((b, 2))?
                    .contiguous()?;
                Ok(FusedQuery {
                    feature: l2_normalize(&mixed)?,
                    weights: w,
                })
            }
            _ => candle_core::bail!("fusion mode {:?} has no MLP", self.mode),
        }
    }
}
