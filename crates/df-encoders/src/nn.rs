//! Small building blocks shared by the ViT and the Q-Former.
//!
//! candle's fused LayerNorm and softmax kernels have no backward pass, so each block here picks
//! the fused kernel only when no gradient can flow through its inputs (frozen towers, inference)
//! and the differentiable composition of basic ops otherwise.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension, differentiable when its inputs track gradients.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of width `size` under `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if needs_grad(&[xs, &self.weight, &self.bias]) {
            candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
        } else {
            candle_nn::ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// True when any tensor is a variable or depends on one.
pub fn needs_grad(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// Softmax over the last dimension, differentiable when the input tracks gradients.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// Scaled dot-product attention.
///
/// `q: [B, h, Sq, d]`, `k, v: [B, h, Sk, d]`, `mask`: additive, broadcastable to `[B, h, Sq, Sk]`.
/// Returns `[B, Sq, h·d]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = softmax_last_dim(&scores)?;
    let (b, h, sq, d) = q.dims4()?;
    probs.matmul(v)?.transpose(1, 2)?.reshape((b, sq, h * d))
}

/// Splits `[B, S, h·d]` into heads `[B, h, S, d]` (contiguous).
pub fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, w) = xs.dims3()?;
    xs.reshape((b, s, heads, w / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Turns a `[B, S]` 0/1 mask (any dtype) into the additive `[B, 1, 1, S]` mask BERT uses
/// (`0` kept, `-10000` masked).
pub fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((1.0 - m)? * -10000.0)?.to_dtype(dtype)?.reshape((b, 1, 1, s))
}

/// L2-normalises the last dimension (as `torch.nn.functional.normalize`, eps 1e-12).
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    xs.broadcast_div(&norm)
}
