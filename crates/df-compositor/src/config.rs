//! Compositor configuration; every field is a [design] choice with SPEC §3's default.

use serde::{Deserialize, Serialize};

/// How the Global-Detail Feature Fusion Block combines the two branch features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FusionMode {
    /// Per-query convex weights `softmax(MLP([c_DI; c_GM]))` (default).
    Softmax,
    /// Per-dimension gate `g = σ(MLP([c_DI; c_GM]))`, `q = L2(g ⊙ q_DI + (1 − g) ⊙ q_GM)`.
    Gate,
    /// Fixed weights, no parameters (the "DI + GM, 0.5/0.5" ablation).
    Fixed {
        /// Weight of the DI branch; GM gets `1 − di_weight`.
        di_weight: f64,
    },
}

/// Sizes and options of the compositor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompositorConfig {
    /// Feature width `P` (256).
    pub hidden_size: usize,
    /// Attention heads of the extraction block (8).
    pub num_attention_heads: usize,
    /// Whether `q_b` attends the opposite branch's tokens.
    pub attend_opposite: bool,
    /// Whether `q_b` attends its own branch's tokens.
    pub attend_same: bool,
    /// Whether the extraction block ends with an FFN (+ residual, LayerNorm).
    pub use_ffn: bool,
    /// FFN width (1024).
    pub intermediate_size: usize,
    /// Hidden width of the fusion MLP (256).
    pub fusion_hidden_size: usize,
    /// Fusion rule.
    pub fusion: FusionMode,
    /// LayerNorm eps (1e-5, PyTorch's default).
    pub layer_norm_eps: f64,
}

impl Default for CompositorConfig {
    fn default() -> Self {
        Self {
            hidden_size: 256,
            num_attention_heads: 8,
            attend_opposite: true,
            attend_same: true,
            use_ffn: true,
            intermediate_size: 1024,
            fusion_hidden_size: 256,
            fusion: FusionMode::Softmax,
            layer_norm_eps: 1e-5,
        }
    }
}

impl CompositorConfig {
    /// Checks that sizes fit; the error names the field.
    pub fn validate(&self) -> candle_core::Result<()> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            candle_core::bail!(
                "compositor config: `num_attention_heads` {} must divide `hidden_size` {}",
                self.num_attention_heads,
                self.hidden_size
            );
        }
        if let FusionMode::Fixed { di_weight } = self.fusion {
            if !(0.0..=1.0).contains(&di_weight) {
                candle_core::bail!("compositor config: `fusion.di_weight` {di_weight} is outside [0, 1]");
            }
        }
        Ok(())
    }
}
