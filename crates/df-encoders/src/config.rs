//! Serde configs whose field names are those of the Hugging Face `config.json` of BLIP-2
//! (`Blip2Config`, `Blip2VisionConfig`, `Blip2QFormerConfig`).
//!
//! Defaults are the Hugging Face class defaults (ViT-g/14 and BERT-base), because
//! `save_pretrained` omits keys equal to them; only the two sub-configs are required.

use std::path::Path;

use candle_nn::Activation;
use serde::{Deserialize, Serialize};

use crate::{EncoderError, Result};

/// Vision transformer config (`vision_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Token width (1408 for ViT-g).
    pub hidden_size: usize,
    /// MLP width (6144 for ViT-g).
    pub intermediate_size: usize,
    /// Number of blocks (39 for BLIP-2's ViT-g).
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input resolution.
    pub image_size: usize,
    /// Patch size.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Eps of every LayerNorm, `post_layernorm` (LAVIS `ln_vision`) included.
    pub layer_norm_eps: f64,
    /// Whether attention has q/v biases.
    pub qkv_bias: bool,
    /// DetailFusion extension: eps of the final LayerNorm when it differs from
    /// `layer_norm_eps` (LAVIS `ln_vision` uses 1e-5). Absent in Hugging Face configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ln_vision_eps: Option<f64>,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            ln_vision_eps: None,
        }
    }
}

impl VisionConfig {
    /// Number of patches plus the class token (257 for ViT-g at 224 px).
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// Q-Former config (`qformer_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QFormerConfig {
    /// Vocabulary size of the word embeddings.
    pub vocab_size: usize,
    /// Hidden width (768).
    pub hidden_size: usize,
    /// Number of BERT layers (12).
    pub num_hidden_layers: usize,
    /// Attention heads (12).
    pub num_attention_heads: usize,
    /// FFN width (3072).
    pub intermediate_size: usize,
    /// FFN activation.
    pub hidden_act: Activation,
    /// Number of absolute positions.
    pub max_position_embeddings: usize,
    /// LayerNorm eps (1e-12).
    pub layer_norm_eps: f64,
    /// Padding token id.
    pub pad_token_id: u32,
    /// Only `absolute` is supported.
    pub position_embedding_type: String,
    /// A cross-attention block every this many layers (layer `i` has one when `i % f == 0`).
    pub cross_attention_frequency: usize,
    /// Width of the image features cross-attended (the ViT width).
    pub encoder_hidden_size: usize,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
        }
    }
}

fn default_num_query_tokens() -> usize {
    32
}

fn default_image_text_hidden_size() -> usize {
    256
}

/// Top-level BLIP-2 config (`config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blip2Config {
    /// Vision transformer.
    pub vision_config: VisionConfig,
    /// Q-Former.
    pub qformer_config: QFormerConfig,
    /// Learned query tokens (32).
    #[serde(default = "default_num_query_tokens")]
    pub num_query_tokens: usize,
    /// Width of the contrastive projections (256).
    #[serde(default = "default_image_text_hidden_size")]
    pub image_text_hidden_size: usize,
}

impl Default for Blip2Config {
    fn default() -> Self {
        Self {
            vision_config: VisionConfig::default(),
            qformer_config: QFormerConfig::default(),
            num_query_tokens: default_num_query_tokens(),
            image_text_hidden_size: default_image_text_hidden_size(),
        }
    }
}

impl Blip2Config {
    /// Reads and validates a `config.json`; errors name the file and the key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| EncoderError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            EncoderError::Config { message, .. } => EncoderError::Config {
                path: path.into(),
                message,
            },
            EncoderError::InvalidConfig { key, message } => EncoderError::Config {
                path: path.into(),
                message: format!("`{key}`: {message}"),
            },
            other => other,
        })
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| EncoderError::Config {
            path: "<json>".into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes fit together; the error names the key at fault.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let q = &self.qformer_config;
        let bad = |key: &str, message: String| {
            Err(EncoderError::InvalidConfig {
                key: key.into(),
                message,
            })
        };
        let positive = [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("qformer_config.hidden_size", q.hidden_size),
            ("qformer_config.num_attention_heads", q.num_attention_heads),
            (
                "qformer_config.cross_attention_frequency",
                q.cross_attention_frequency,
            ),
            ("num_query_tokens", self.num_query_tokens),
        ];
        for (key, value) in positive {
            if value == 0 {
                return bad(key, "must be positive".into());
            }
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            return bad(
                "vision_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    v.num_attention_heads, v.hidden_size
                ),
            );
        }
        if q.hidden_size % q.num_attention_heads != 0 {
            return bad(
                "qformer_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    q.num_attention_heads, q.hidden_size
                ),
            );
        }
        if v.image_size % v.patch_size != 0 {
            return bad(
                "vision_config.patch_size",
                format!("{} does not divide image_size {}", v.patch_size, v.image_size),
            );
        }
        if q.encoder_hidden_size != v.hidden_size {
            return bad(
                "qformer_config.encoder_hidden_size",
                format!(
                    "{} differs from vision_config.hidden_size {}",
                    q.encoder_hidden_size, v.hidden_size
                ),
            );
        }
        if q.position_embedding_type != "absolute" {
            return bad(
                "qformer_config.position_embedding_type",
                format!(
                    "`{}` is not supported (only `absolute`)",
                    q.position_embedding_type
                ),
            );
        }
        Ok(())
    }
}
