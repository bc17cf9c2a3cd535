//! DetailFusion's Global feature Matching (GM) branch: SPRC's query encoder (SPEC §3), with
//! its learned `prompt_tokens` for the text-only auxiliary loss.

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use df_encoders::{Blip2Config, BranchOutput, GalleryEncoder, HybridEncoder, QueryBranch};

/// The GM branch. Weight names: the hybrid encoder's, `prompt_tokens`, `token_projection`,
/// `temp` (an SPRC checkpoint provides all but `token_projection`).
#[derive(Debug, Clone)]
pub struct GmBranch {
    encoder: HybridEncoder,
    prompt_tokens: Tensor,
    token_projection: Linear,
    temp: Tensor,
}

impl GmBranch {
    /// Builds the branch; `prompt_tokens` start as N(0, 0.02²) and `temp` at 0.07 when absent.
    pub fn new(cfg: &Blip2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, p) = (cfg.qformer_config.hidden_size, cfg.image_text_hidden_size);
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            encoder: HybridEncoder::new(cfg, vb.clone())?,
            prompt_tokens: vb.get_with_hints((1, cfg.num_query_tokens, h), "prompt_tokens", init)?,
            token_projection: candle_nn::linear(h, p, vb.pp("token_projection"))?,
            temp: vb.get_with_hints((), "temp", candle_nn::Init::Const(0.07))?,
        })
    }

    /// The underlying hybrid encoder.
    pub fn encoder(&self) -> &HybridEncoder {
        &self.encoder
    }

    /// SPRC's learned prompts `[1, Q, H]`.
    pub fn prompt_tokens(&self) -> &Tensor {
        &self.prompt_tokens
    }

    /// The learnable temperature (a scalar).
    pub fn temp(&self) -> &Tensor {
        &self.temp
    }

    /// SPRC's text-only feature `[B, P]` (prompts stand in for the image).
    pub fn text_only_features(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> df_encoders::Result<Tensor> {
        self.encoder
            .prompt_text_features(&self.prompt_tokens, input_ids, attention_mask)
    }
}

impl QueryBranch for GmBranch {
    fn encode_query(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> df_encoders::Result<BranchOutput> {
        self.encoder
            .branch_output(&self.token_projection, image, input_ids, attention_mask)
    }
}

impl GalleryEncoder for GmBranch {
    fn encode_gallery(&self, image: &Tensor) -> df_encoders::Result<Tensor> {
        self.encoder.image_features(image)
    }
}
