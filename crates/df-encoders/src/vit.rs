//! The BLIP-2 vision transformer (EVA ViT-g/14 in the real model): patch embedding, class
//! token, learned positions, pre-LN blocks with q/v bias, and the final `post_layernorm`
//! (LAVIS `ln_vision`). Weight names follow Hugging Face `Blip2VisionModel`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::VisionConfig;
use crate::nn::{attention, feed_forward, linear_epilogue, split_heads_stacked, LayerNorm};

/// Patch + class + position embeddings (`vision_model.embeddings`).
#[derive(Debug, Clone)]
pub struct VisionEmbeddings {
    class_embedding: Tensor,
    /// The stride-`p` convolution as a linear map over flattened `(c, kh, kw)` patches: the
    /// same numbers as `Conv2d`, but a plain GEMM forwards and backwards.
    patch_embedding: Linear,
    patch_size: usize,
    position_embedding: Tensor,
}

impl VisionEmbeddings {
    /// Loads the embeddings.
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        // Fresh towers: N(0, 0.02²) like BLIP-2's `initializer_range` (zeros would leave
        // positions to be learnt from nothing).
        let embed_init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let class_embedding = vb.get_with_hints((1, 1, d), "class_embedding", embed_init)?;
        let p = cfg.patch_size;
        let weight = vb.get_with_hints(
            (d, 3, p, p),
            "patch_embedding.weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = vb.get_with_hints(d, "patch_embedding.bias", candle_nn::Init::Const(0.0))?;
        let patch_embedding = Linear::new(weight.reshape((d, 3 * p * p))?, Some(bias));
        let position_embedding =
            vb.get_with_hints((1, cfg.num_positions(), d), "position_embedding", embed_init)?;
        Ok(Self {
            class_embedding,
            patch_embedding,
            patch_size: p,
            position_embedding,
        })
    }

    /// `[B, 3, H, W]` pixels → `[B, 1 + H·W/p², D]` tokens.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let unfolded = pixel_values
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, c * p * p))?;
        let patches = self.patch_embedding.forward(&unfolded)?;
        let d = patches.dim(2)?;
        let cls = self.class_embedding.broadcast_as((b, 1, d))?;
        let tokens = Tensor::cat(&[&cls, &patches], 1)?;
        tokens.broadcast_add(&self.position_embedding)
    }
}

/// Multi-head self-attention with a fused `qkv` projection whose key bias is zero.
#[derive(Debug, Clone)]
pub struct VisionAttention {
    qkv: Linear,
    projection: Linear,
    num_heads: usize,
    scale: f64,
}

impl VisionAttention {
    /// Loads `qkv.weight` and either `qkv.bias` (transformers 5) or `q_bias` + `v_bias`
    /// (transformers 4 and LAVIS).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        // A fresh (untrained) tower needs random q/k weights: with zeros their gradient is zero
        // too, and attention would stay uniform for good.
        let weight = vb.get_with_hints((3 * d, d), "qkv.weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let bias = if !cfg.qkv_bias {
            None
        } else if vb.contains_tensor("qkv.bias") {
            Some(vb.get(3 * d, "qkv.bias")?)
        } else {
            let q = vb.get(d, "q_bias")?;
            let v = vb.get(d, "v_bias")?;
            Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
        };
        let qkv = Linear::new(weight, bias);
        let projection = candle_nn::linear(d, d, vb.pp("projection"))?;
        let num_heads = cfg.num_attention_heads;
        Ok(Self {
            qkv,
            projection,
            num_heads,
            scale: ((d / num_heads) as f64).powf(-0.5),
        })
    }

    /// `[B, S, D]` → `[B, S, D]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_residual(xs, None)
    }

    /// `projection(attention(xs)) (+ residual)`, the residual added in the projection's pass.
    fn forward_residual(&self, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let qkv = linear_epilogue(&self.qkv, xs, None, None)?;
        let [q, k, v] = <[Tensor; 3]>::try_from(split_heads_stacked(&qkv, 3, self.num_heads)?)
            .expect("three projections");
        let ctx = attention(&q, &k, &v, None, self.scale)?;
        linear_epilogue(&self.projection, &ctx, None, residual)
    }
}

/// One pre-LN transformer block.
#[derive(Debug, Clone)]
pub struct VisionLayer {
    self_attn: VisionAttention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: candle_nn::Activation,
    layer_norm2: LayerNorm,
}

impl VisionLayer {
    /// Loads one block.
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            self_attn: VisionAttention::new(cfg, vb.pp("self_attn"))?,
            layer_norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: candle_nn::linear(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
            act: cfg.hidden_act,
            layer_norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
        })
    }

    /// `[B, S, D]` → `[B, S, D]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self
            .self_attn
            .forward_residual(&self.layer_norm1.forward(xs)?, Some(xs))?;
        feed_forward(
            &self.fc1,
            &self.fc2,
            self.act,
            &self.layer_norm2.forward(&xs)?,
            &xs,
        )
    }
}

/// The vision tower (`vision_model`): embeddings, blocks, `post_layernorm`.
#[derive(Debug, Clone)]
pub struct VisionModel {
    embeddings: VisionEmbeddings,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
    config: VisionConfig,
}

impl VisionModel {
    /// Loads the tower; `post_layernorm` uses `cfg.ln_vision_eps` when set (LAVIS: 1e-5).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let embeddings = VisionEmbeddings::new(cfg, vb.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| VisionLayer::new(cfg, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let eps = cfg.ln_vision_eps.unwrap_or(cfg.layer_norm_eps);
        let post_layernorm = LayerNorm::new(cfg.hidden_size, eps, vb.pp("post_layernorm"))?;
        Ok(Self {
            embeddings,
            layers,
            post_layernorm,
            config: cfg.clone(),
        })
    }

    /// The config the tower was built with.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// `[B, 3, H, W]` normalised pixels → `[B, 1 + N, D]` image features after `ln_vision`
    /// (`[B, 257, 1408]` for ViT-g at 224 px).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pixel_values = pixel_values.to_dtype(self.post_layernorm_dtype())?;
        let mut xs = self.embeddings.forward(&pixel_values)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        self.post_layernorm.forward(&xs)
    }

    fn post_layernorm_dtype(&self) -> candle_core::DType {
        self.embeddings.position_embedding.dtype()
    }
}
