//! The typed interfaces through which DetailFusion's parts compose: a gallery encoder, query
//! branches and a compositor. A GM-only model (SPRC), a DI-only model and the full model are
//! all compositions of the same parts.

use candle_core::{Tensor, D};

use crate::Result;

/// What a query branch produces for a batch of (reference image, text) queries.
#[derive(Debug, Clone)]
pub struct BranchOutput {
    /// Normalised global query feature `[B, P]` (`[B, 256]`).
    pub global: Tensor,
    /// Fine-grained tokens `[B, T, P]` (`[B, 32, 256]`): the projected pass-1 queries.
    pub tokens: Tensor,
    /// Raw pass-1 query outputs `[B, T, H]`, kept for auxiliary losses.
    pub pass1_queries: Tensor,
}

impl BranchOutput {
    /// The same output cut from the graph (for frozen branches, e.g. cached in stage 3).
    pub fn detach(&self) -> Self {
        Self {
            global: self.global.detach(),
            tokens: self.tokens.detach(),
            pass1_queries: self.pass1_queries.detach(),
        }
    }
}

/// A composed query after fusion.
#[derive(Debug, Clone)]
pub struct FusedQuery {
    /// Normalised fused feature `[B, P]`.
    pub feature: Tensor,
    /// Convex branch weights `[B, 2]` as `[α_DI, α_GM]` (for a per-dimension gate, its mean).
    pub weights: Tensor,
}

/// Encodes gallery images into per-token features.
pub trait GalleryEncoder {
    /// `image: [B, N, W]` ViT features (after `ln_vision`) → normalised `[B, Q, P]`.
    fn encode_gallery(&self, image: &Tensor) -> Result<Tensor>;
}

/// A query branch (DI or GM).
pub trait QueryBranch {
    /// `image: [B, N, W]` reference ViT features, `input_ids, attention_mask: [B, L]`.
    fn encode_query(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<BranchOutput>;
}

/// Fuses the DI and GM branch outputs into one query feature.
pub trait Compositor {
    /// `di`, `gm`: the two branches' outputs for the same batch → `[B, P]` plus weights.
    fn compose(&self, di: &BranchOutput, gm: &BranchOutput) -> Result<FusedQuery>;
}

/// Max-over-tokens similarity `s(q, z) = max_k ⟨q, z_k⟩`.
///
/// `queries: [B, P]`, `gallery: [N, Q, P]` → `[B, N]`. Differentiable.
pub fn max_token_scores(queries: &Tensor, gallery: &Tensor) -> Result<Tensor> {
    let (n, q, p) = gallery.dims3()?;
    let flat = gallery.reshape((n * q, p))?;
    let sims = queries.matmul(&flat.t()?)?; // [B, N·Q]
    let b = queries.dim(0)?;
    Ok(sims.reshape((b, n, q))?.max(D::Minus1)?)
}

/// Per-query scores against each query's own item: `queries: [B, P]`, `items: [B, Q, P]` → `[B]`.
pub fn paired_max_token_scores(queries: &Tensor, items: &Tensor) -> Result<Tensor> {
    let sims = items.matmul(&queries.unsqueeze(2)?)?.squeeze(2)?; // [B, Q]
    Ok(sims.max(D::Minus1)?)
}
