//! The Fine-grained Feature Extraction Block.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use df_encoders::nn::{softmax_last_dim, LayerNorm};
use df_encoders::BranchOutput;

use crate::CompositorConfig;

/// Multi-head attention of one query vector over a token set (`q_proj`, `k_proj`, `v_proj`,
/// `out_proj`).
#[derive(Debug, Clone)]
pub struct CrossAttention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) out_proj: Linear,
    pub(crate) heads: usize,
    pub(crate) scale: f64,
}

impl CrossAttention {
    /// Builds a `width`-wide attention with `heads` heads.
    pub fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q_proj: candle_nn::linear(width, width, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(width, width, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(width, width, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(width, width, vb.pp("out_proj"))?,
            heads,
            scale: ((width / heads) as f64).powf(-0.5),
        })
    }

    /// `query: [B, P]` attends `tokens: [B, T, P]` → `[B, P]`.
    ///
    /// With a single query the token projections fold into the query side: per head,
    /// `q'·(W_k x_t + b_k) = (W_kᵀ q')·x_t + const` (softmax drops the constant, so `b_k` has
    /// no effect, as in any attention) and `Σ_t p_t (W_v x_t + b_v) = W_v (Σ_t p_t x_t) + b_v`.
    /// The `T·P²` projections of the tokens become `P²` work per query: the same function
    /// (and gradients) at about a tenth of the FLOPs for `T = 32`.
    pub fn forward(&self, query: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let (b, p) = query.dims2()?;
        let (h, d) = (self.heads, p / self.heads);
        let q = self
            .q_proj
            .forward(query)?
            .reshape((b, h, d))?
            .transpose(0, 1)?
            .contiguous()?; // [H, B, d]
        let wk = self.k_proj.weight().reshape((h, d, p))?;
        let u = (q.matmul(&wk)?.transpose(0, 1)?.contiguous()? * self.scale)?; // [B, H, P]
        let scores = u.matmul(&tokens.transpose(1, 2)?)?; // [B, H, T]
        let probs = softmax_last_dim(&scores)?;
        let pooled = probs.matmul(tokens)?.transpose(0, 1)?.contiguous()?; // [H, B, P]
        let wv_t = self.v_proj.weight().reshape((h, d, p))?.transpose(1, 2)?; // [H, P, d]
        let ctx = pooled
            .matmul(&wv_t.contiguous()?)?
            .transpose(0, 1)?
            .reshape((b, p))?; // [B, P]
        let ctx = match self.v_proj.bias() {
            Some(bv) => ctx.broadcast_add(bv)?,
            None => ctx,
        };
        self.out_proj.forward(&ctx)
    }
}

/// One branch's extraction: `c_b = LN(q_b + u_opp + u_same)`, then `LN(c_b + FFN(c_b))`.
#[derive(Debug, Clone)]
pub struct ExtractionBlock {
    pub(crate) opposite: Option<CrossAttention>,
    pub(crate) same: Option<CrossAttention>,
    pub(crate) norm: LayerNorm,
    pub(crate) ffn: Option<(Linear, Linear, LayerNorm)>,
}

impl ExtractionBlock {
    /// Weight names: `opposite.*`, `same.*`, `norm`, `ffn.fc1`, `ffn.fc2`, `ffn_norm`.
    pub fn new(cfg: &CompositorConfig, vb: VarBuilder) -> Result<Self> {
        let (p, h) = (cfg.hidden_size, cfg.num_attention_heads);
        let attn = |on: bool, name: &str| on.then(|| CrossAttention::new(p, h, vb.pp(name))).transpose();
        let ffn = if cfg.use_ffn {
            Some((
                candle_nn::linear(p, cfg.intermediate_size, vb.pp("ffn.fc1"))?,
                candle_nn::linear(cfg.intermediate_size, p, vb.pp("ffn.fc2"))?,
                LayerNorm::new(p, cfg.layer_norm_eps, vb.pp("ffn_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            opposite: attn(cfg.attend_opposite, "opposite")?,
            same: attn(cfg.attend_same, "same")?,
            norm: LayerNorm::new(p, cfg.layer_norm_eps, vb.pp("norm"))?,
            ffn,
        })
    }

    /// `global: [B, P]`, `own, other: [B, T, P]` → `c: [B, P]`.
    pub fn forward(&self, global: &Tensor, own: &Tensor, other: &Tensor) -> Result<Tensor> {
        let mut x = global.clone();
        if let Some(a) = &self.opposite {
            x = (x + a.forward(global, other)?)?;
        }
        if let Some(a) = &self.same {
            x = (x + a.forward(global, own)?)?;
        }
        let c = self.norm.forward(&x)?;
        match &self.ffn {
            None => Ok(c),
            Some((fc1, fc2, norm)) => {
                let h = fc2.forward(&fc1.forward(&c)?.gelu_erf()?)?;
                norm.forward(&(c + h)?)
            }
        }
    }
}

/// The Fine-grained Feature Extraction Block for both branches (`di.*`, `gm.*`).
#[derive(Debug, Clone)]
pub struct FineGrainedExtraction {
    pub(crate) di: ExtractionBlock,
    pub(crate) gm: ExtractionBlock,
}

impl FineGrainedExtraction {
    /// Builds both branch blocks.
    pub fn new(cfg: &CompositorConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            di: ExtractionBlock::new(cfg, vb.pp("di"))?,
            gm: ExtractionBlock::new(cfg, vb.pp("gm"))?,
        })
    }

    /// Context features `(c_DI, c_GM)`, each `[B, P]`.
    pub fn forward(&self, di: &BranchOutput, gm: &BranchOutput) -> Result<(Tensor, Tensor)> {
        let c_di = self.di.forward(&di.global, &di.tokens, &gm.tokens)?;
        let c_gm = self.gm.forward(&gm.global, &gm.tokens, &di.tokens)?;
        Ok((c_di, c_gm))
    }
}
