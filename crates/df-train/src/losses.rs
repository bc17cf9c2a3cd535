//! Contrastive losses with max-over-tokens scores (SPEC §4). All are differentiable.

use candle_core::{DType, Result, Tensor};
use df_encoders::cir::{max_token_scores, paired_max_token_scores};
use serde::{Deserialize, Serialize};

/// Temperature bounds of BLIP-2 / SPRC.
pub const TEMP_RANGE: (f64, f64) = (0.001, 0.5);

/// Loss weights of stage 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight γ of the DI contrastive loss (1.0; swept over {0.2, 0.5, 1.0, 2.0}).
    pub gamma: f64,
    /// Weight of SPRC's text-only (relative) contrastive loss on GM (0.4 on CIRR).
    pub text_only_weight: f64,
    /// Weight of SPRC's prompt-alignment MSE on GM (0.4 on CIRR).
    pub align_weight: f64,
    /// [design] Candidate-set negatives per query added to each stage-2 and stage-3 batch's
    /// gallery (0: in-batch negatives only, as in SPRC). They are images one detail away from
    /// the target (CIRR `img_set` members that are not targets), so the loss sees the
    /// distinctions that CIRR's subset recall measures.
    pub hard_negatives: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            gamma: 1.0,
            text_only_weight: 0.4,
            align_weight: 0.4,
            hard_negatives: 0,
        }
    }
}

fn targets(b: usize, dev: &candle_core::Device) -> Result<Tensor> {
    Tensor::arange(0u32, b as u32, dev)
}

fn scaled(logits: &Tensor, temp: &Tensor) -> Result<Tensor> {
    let t = temp.clamp(TEMP_RANGE.0, TEMP_RANGE.1)?.to_dtype(logits.dtype())?;
    logits.broadcast_div(&t)
}

/// In-batch contrastive loss `L_con`: `queries: [B, P]` against `targets: [B, Q, P]`
/// (query `i`'s positive is target `i`), scores `max_k ⟨q_i, z_j,k⟩ / τ`, τ clamped.
pub fn contrastive_loss(queries: &Tensor, targets_feats: &Tensor, temp: &Tensor) -> Result<Tensor> {
    let logits = max_token_scores(queries, targets_feats).map_err(to_candle)?;
    let b = queries.dim(0)?;
    candle_nn::loss::cross_entropy(&scaled(&logits, temp)?, &targets(b, queries.device())?)
}

/// Stage-1 DI loss: [`contrastive_loss`] with each query's own reference image
/// (`references: [B, Q, P]`) as one extra hard negative column.
pub fn hard_negative_contrastive_loss(
    queries: &Tensor,
    targets_feats: &Tensor,
    references: &Tensor,
    temp: &Tensor,
) -> Result<Tensor> {
    let in_batch = max_token_scores(queries, targets_feats).map_err(to_candle)?; // [B, B]
    let own_ref = paired_max_token_scores(queries, references).map_err(to_candle)?; // [B]
    let logits = Tensor::cat(&[&in_batch, &own_ref.unsqueeze(1)?], 1)?;
    let b = queries.dim(0)?;
    candle_nn::loss::cross_entropy(&scaled(&logits, temp)?, &targets(b, queries.device())?)
}

/// SPRC's prompt-alignment loss: MSE between the mean pass-1 query output `[B, Q, H]` and
/// the mean of the (detached) prompt tokens `[1, Q, H]`.
pub fn prompt_alignment_loss(pass1_queries: &Tensor, prompt_tokens: &Tensor) -> Result<Tensor> {
    let fused = pass1_queries.mean(1)?; // [B, H]
    let prompts = prompt_tokens.detach().mean(1)?.broadcast_as(fused.shape())?;
    (fused - prompts)?.sqr()?.mean_all()
}

/// The parts of the stage-2 objective and their weighted sum.
#[derive(Debug, Clone)]
pub struct Stage2Losses {
    /// `L_con(q_GM, z)`.
    pub gm: Tensor,
    /// `L_con(q_DI, z)`.
    pub di: Tensor,
    /// SPRC text-only loss on GM.
    pub text_only: Tensor,
    /// SPRC prompt-alignment loss on GM.
    pub align: Tensor,
    /// `gm + γ·di + w_t·text_only + w_a·align`.
    pub total: Tensor,
}

/// Inputs of the stage-2 objective (all from one batch).
#[derive(Debug, Clone, Copy)]
pub struct Stage2Inputs<'a> {
    /// GM global features `[B, P]`.
    pub q_gm: &'a Tensor,
    /// DI global features `[B, P]`.
    pub q_di: &'a Tensor,
    /// GM text-only features `[B, P]`.
    pub text_only: &'a Tensor,
    /// GM pass-1 query outputs `[B, Q, H]`.
    pub gm_pass1: &'a Tensor,
    /// GM prompt tokens `[1, Q, H]`.
    pub prompt_tokens: &'a Tensor,
    /// Target gallery features `[B, Q, P]` (the shared space).
    pub targets: &'a Tensor,
    /// Targets in GM's own space (same as `targets` unless galleries are per branch).
    pub targets_gm: &'a Tensor,
    /// GM temperature (scalar).
    pub temp_gm: &'a Tensor,
    /// DI temperature (scalar).
    pub temp_di: &'a Tensor,
}

impl Stage2Losses {
    /// Computes the stage-2 objective.
    pub fn compute(x: Stage2Inputs, cfg: &LossConfig) -> Result<Self> {
        let gm = contrastive_loss(x.q_gm, x.targets_gm, x.temp_gm)?;
        let di = contrastive_loss(x.q_di, x.targets, x.temp_di)?;
        let text_only = contrastive_loss(x.text_only, x.targets_gm, x.temp_gm)?;
        let align = prompt_alignment_loss(x.gm_pass1, x.prompt_tokens)?;
        let total = (((&gm + (&di * cfg.gamma)?)? + (&text_only * cfg.text_only_weight)?)?
            + (&align * cfg.align_weight)?)?;
        Ok(Self {
            gm,
            di,
            text_only,
            align,
            total,
        })
    }
}

fn to_candle(e: df_encoders::EncoderError) -> candle_core::Error {
    match e {
        df_encoders::EncoderError::Candle(c) => c,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

/// A scalar loss as `f32` (for logging).
pub fn scalar(loss: &Tensor) -> Result<f32> {
    loss.to_dtype(DType::F32)?.to_scalar::<f32>()
}

/// BLIP-2's image–text contrastive loss: `image: [B, Q, P]` per-token features, `text: [B, P]`,
/// similarity `max_k ⟨z_i,k, t_j⟩ / τ`, cross-entropy both ways, averaged.
pub fn itc_loss(image: &Tensor, text: &Tensor, temp: &Tensor) -> Result<Tensor> {
    let i2t = scaled(&max_token_scores(text, image).map_err(to_candle)?.t()?, temp)?; // [B_img, B_txt]
    let b = text.dim(0)?;
    let t = targets(b, text.device())?;
    let a = candle_nn::loss::cross_entropy(&i2t, &t)?;
    let c = candle_nn::loss::cross_entropy(&i2t.t()?.contiguous()?, &t)?;
    (a + c)? / 2.0
}
