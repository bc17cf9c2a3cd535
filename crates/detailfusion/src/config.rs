//! The whole-model config, saved as `config.json` beside the weights.

use df_compositor::CompositorConfig;
use df_encoders::{Blip2Config, ImageProcessor};
use serde::{Deserialize, Serialize};

/// Which branches a model has: the ablations are compositions of the same parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// DI + GM + compositor (DetailFusion).
    #[default]
    Full,
    /// GM only, its own Q-Former as gallery encoder (SPRC).
    GmOnly,
    /// DI only.
    DiOnly,
}

/// Where gallery features come from (SPEC §3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GalleryMode {
    /// The DI Q-Former in image mode: one embedding space, one index (default).
    #[default]
    SharedDi,
    /// DI's own image encoder plus a separate GM image encoder; scores are fused with the
    /// compositor's weights, `s = α_DI·s(q_DI, z_DI) + α_GM·s(q_GM, z_GM)`.
    PerBranch,
}

fn default_max_txt_len() -> usize {
    32
}

/// Everything needed to rebuild a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetailFusionConfig {
    /// Sizes of the BLIP-2 backbone (shared by all branches).
    pub blip2: Blip2Config,
    /// The compositor.
    #[serde(default)]
    pub compositor: CompositorConfig,
    /// Which branches exist.
    #[serde(default)]
    pub variant: Variant,
    /// Where gallery features come from.
    #[serde(default)]
    pub gallery: GalleryMode,
    /// Text length (32).
    #[serde(default = "default_max_txt_len")]
    pub max_txt_len: usize,
    /// Image preprocessing.
    #[serde(default)]
    pub image_processor: ImageProcessor,
}

impl DetailFusionConfig {
    /// A config around a BLIP-2 backbone with every other choice at its default.
    pub fn from_blip2(blip2: Blip2Config) -> Self {
        let compositor = CompositorConfig {
            hidden_size: blip2.image_text_hidden_size,
            ..Default::default()
        };
        let image_processor = ImageProcessor::new(blip2.vision_config.image_size);
        Self {
            blip2,
            compositor,
            variant: Variant::default(),
            gallery: GalleryMode::default(),
            max_txt_len: default_max_txt_len(),
            image_processor,
        }
    }

    /// Whether the model has a DI branch.
    pub fn has_di(&self) -> bool {
        self.variant != Variant::GmOnly
    }

    /// Whether the model has a GM branch.
    pub fn has_gm(&self) -> bool {
        self.variant != Variant::DiOnly
    }
}
