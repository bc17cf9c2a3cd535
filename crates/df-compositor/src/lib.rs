//! DetailFusion's Adaptive Feature Compositor (SPEC §3).
//!
//! - [`FineGrainedExtraction`]: each branch's global feature `q_b: [B, P]` cross-attends the
//!   fine-grained tokens of the opposite branch and of its own (`[B, T, P]`), then residual,
//!   LayerNorm and an FFN give a context feature `c_b: [B, P]`.
//! - [`GlobalDetailFusion`]: per-query convex weights `[α_DI, α_GM] = softmax(MLP([c_DI; c_GM]))`
//!   and `q = L2(α_DI q_DI + α_GM q_GM)`; a per-dimension gate or fixed weights as options.
//!
//! Every design choice the paper leaves open is a [`CompositorConfig`] field.

mod config;
mod extraction;
mod fast;
mod fusion;

pub use config::{CompositorConfig, FusionMode};
pub use extraction::{CrossAttention, ExtractionBlock, FineGrainedExtraction};
pub use fusion::GlobalDetailFusion;

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use df_encoders::{BranchOutput, Compositor, FusedQuery};
use fast::FastCompositor;

/// The whole compositor: extraction then fusion. Weight names: `fine_grained.*`, `fusion.*`.
#[derive(Debug, Clone)]
pub struct AdaptiveCompositor {
    fine_grained: Option<FineGrainedExtraction>,
    fusion: GlobalDetailFusion,
    /// The weights as plain rows for small CPU inference batches, when none is trainable.
    fast: Option<Arc<FastCompositor>>,
}

impl AdaptiveCompositor {
    /// Builds the compositor (fixed-weight fusion has no parameters at all).
    pub fn new(cfg: &CompositorConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        cfg.validate()?;
        let fine_grained = match cfg.fusion {
            FusionMode::Fixed { .. } => None,
            _ => Some(FineGrainedExtraction::new(cfg, vb.pp("fine_grained"))?),
        };
        let mut compositor = Self {
            fine_grained,
            fusion: GlobalDetailFusion::new(cfg, vb.pp("fusion"))?,
            fast: None,
        };
        compositor.fast = FastCompositor::new(&compositor)?.map(Arc::new);
        Ok(compositor)
    }

    /// The context features `(c_DI, c_GM)`, each `[B, P]`; `None` for fixed fusion.
    pub fn context(
        &self,
        di: &BranchOutput,
        gm: &BranchOutput,
    ) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        self.fine_grained.as_ref().map(|f| f.forward(di, gm)).transpose()
    }
}

impl Compositor for AdaptiveCompositor {
    fn compose(&self, di: &BranchOutput, gm: &BranchOutput) -> df_encoders::Result<FusedQuery> {
        if let Some(fast) = &self.fast {
            if let Some(fused) = fast.compose(di, gm)? {
                return Ok(fused);
            }
        }
        let ctx = self.context(di, gm)?;
        Ok(self.fusion.forward(ctx.as_ref(), &di.global, &gm.global)?)
    }
}
