//! A whole BLIP-2 stage-1 model: the frozen vision tower plus one hybrid encoder.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::{Checkpoint, LoadOptions};
use crate::config::Blip2Config;
use crate::hybrid::{ComposedQuery, HybridEncoder};
use crate::vit::VisionModel;
use crate::Result;

/// BLIP-2 stage-1 (`Blip2ForImageTextRetrieval` without the ITM head).
#[derive(Debug, Clone)]
pub struct Blip2Model {
    /// The vision tower (`vision_model`).
    pub vision: VisionModel,
    /// The Q-Former with its queries and projections.
    pub encoder: HybridEncoder,
    config: Blip2Config,
}

impl Blip2Model {
    /// Builds the model from `vb` rooted at the checkpoint's top level.
    pub fn new(cfg: &Blip2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            vision: VisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?,
            encoder: HybridEncoder::new(cfg, vb)?,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint (directory, hub repo id, `.pth`/`.pt` file) — see [`Checkpoint::resolve`].
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<(Self, Checkpoint)> {
        let ck = Checkpoint::resolve(spec, opts)?;
        let model = Self::from_checkpoint(&ck, opts.dtype, &opts.device)?;
        Ok((model, ck))
    }

    /// Builds the model from a resolved checkpoint; errors name the tensor and the file.
    pub fn from_checkpoint(ck: &Checkpoint, dtype: DType, device: &Device) -> Result<Self> {
        let vb = ck.var_builder(dtype, device)?;
        Self::new(&ck.config, vb).map_err(|e| ck.error(e))
    }

    /// The config.
    pub fn config(&self) -> &Blip2Config {
        &self.config
    }

    /// `[B, 3, S, S]` pixels → image features after `ln_vision`, `[B, N, W]` (`[B, 257, 1408]`).
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.vision.forward(pixel_values)?)
    }

    /// `[B, 3, S, S]` pixels → normalised gallery features `[B, Q, P]` (`[B, 32, 256]`).
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.encoder.image_features(&self.vision_features(pixel_values)?)
    }

    /// Normalised BLIP-2 text features `[B, P]` of `input_ids, attention_mask: [B, L]`.
    pub fn text_features(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.encoder.text_features(input_ids, attention_mask)
    }

    /// SPRC composed query of reference pixels `[B, 3, S, S]` and text `[B, L]`.
    pub fn composed_query(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ComposedQuery> {
        let image = self.vision_features(pixel_values)?;
        self.encoder.composed_query(&image, input_ids, attention_mask)
    }
}
