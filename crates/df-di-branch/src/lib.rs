//! DetailFusion's Detail-oriented Inference (DI) branch (SPEC §3).
//!
//! A BLIP-2 hybrid encoder of its own, pretrained on image-edit triplets (stage 1). In image
//! mode it is also the gallery encoder by default, so the gallery has one embedding space.

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use df_encoders::{Blip2Config, BranchOutput, GalleryEncoder, HybridEncoder, QueryBranch};

/// The DI branch. Weight names: the hybrid encoder's (`query_tokens`, `embeddings.*`,
/// `qformer.*`, `vision_projection`, `text_projection`), `token_projection` and `temp`.
#[derive(Debug, Clone)]
pub struct DiBranch {
    encoder: HybridEncoder,
    token_projection: Linear,
    temp: Tensor,
}

impl DiBranch {
    /// Builds the branch; `temp` starts at 0.07 when `vb` lacks it.
    pub fn new(cfg: &Blip2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, p) = (cfg.qformer_config.hidden_size, cfg.image_text_hidden_size);
        Ok(Self {
            encoder: HybridEncoder::new(cfg, vb.clone())?,
            token_projection: candle_nn::linear(h, p, vb.pp("token_projection"))?,
            temp: vb.get_with_hints((), "temp", candle_nn::Init::Const(0.07))?,
        })
    }

    /// The underlying hybrid encoder.
    pub fn encoder(&self) -> &HybridEncoder {
        &self.encoder
    }

    /// The learnable temperature (a scalar; clamp it to [0.001, 0.5] when used).
    pub fn temp(&self) -> &Tensor {
        &self.temp
    }
}

impl QueryBranch for DiBranch {
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

impl GalleryEncoder for DiBranch {
    fn encode_gallery(&self, image: &Tensor) -> df_encoders::Result<Tensor> {
        self.encoder.image_features(image)
    }
}
