//! The BLIP-2 Q-Former: BERT layers whose first `query_length` positions are learned queries.
//! Self-attention runs over all positions; the query positions alone cross-attend the image
//! every `cross_attention_frequency` layers and use their own FFN. Weight names follow
//! Hugging Face `Blip2QFormerModel` (`qformer.*`) and `Blip2TextEmbeddings` (`embeddings.*`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::config::QFormerConfig;
use crate::nn::{additive_mask, attention, split_heads, LayerNorm};

/// Word + absolute position embeddings of the text (`embeddings`). The LayerNorm that BERT
/// applies to embeddings lives in [`QFormerModel`] because it also covers the queries.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
}

impl TextEmbeddings {
    /// Loads `word_embeddings` and `position_embeddings`.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                h,
                vb.pp("position_embeddings"),
            )?,
        })
    }

    /// Word embeddings only: `[B, L]` ids → `[B, L, H]`.
    pub fn words(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.word_embeddings.forward(input_ids)
    }

    /// Position embeddings `0..len`: `[1, len, H]`.
    pub fn positions(&self, len: usize) -> Result<Tensor> {
        let dev = self.position_embeddings.embeddings().device();
        let ids = Tensor::arange(0u32, len as u32, dev)?;
        self.position_embeddings.forward(&ids)?.unsqueeze(0)
    }

    /// `[B, L]` ids → word + position embeddings `[B, L, H]`, with `queries: [B, Q, H]`
    /// prepended when given (they get no position embedding) → `[B, Q + L, H]`.
    pub fn forward(&self, input_ids: &Tensor, queries: Option<&Tensor>) -> Result<Tensor> {
        let len = input_ids.dim(1)?;
        let text = self.words(input_ids)?.broadcast_add(&self.positions(len)?)?;
        match queries {
            Some(q) => Tensor::cat(&[q, &text], 1),
            None => Ok(text),
        }
    }
}

/// Multi-head attention plus BERT's output block (`dense`, residual, `LayerNorm`).
#[derive(Debug, Clone)]
struct QFormerAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    layer_norm: LayerNorm,
    heads: usize,
    scale: f64,
}

impl QFormerAttention {
    fn new(cfg: &QFormerConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        Ok(Self {
            query: candle_nn::linear(h, h, att.pp("query"))?,
            key: candle_nn::linear(kv_width, h, att.pp("key"))?,
            value: candle_nn::linear(kv_width, h, att.pp("value"))?,
            dense: candle_nn::linear(h, h, vb.pp("output.dense"))?,
            layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            scale: ((h / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `xs: [B, S, H]` attends `kv: [B, Sk, W]` → `[B, S, H]`.
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(xs)?, self.heads)?;
        let k = split_heads(&self.key.forward(kv)?, self.heads)?;
        let v = split_heads(&self.value.forward(kv)?, self.heads)?;
        let ctx = attention(&q, &k, &v, mask, self.scale)?;
        self.layer_norm.forward(&(self.dense.forward(&ctx)? + xs)?)
    }
}

/// BERT feed-forward block: `intermediate.dense`, activation, `output.dense`, residual, LN.
#[derive(Debug, Clone)]
struct FeedForward {
    intermediate: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    act: candle_nn::Activation,
}

impl FeedForward {
    fn new(cfg: &QFormerConfig, vb: VarBuilder, intermediate: &str, output: &str) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            intermediate: candle_nn::linear(h, i, vb.pp(intermediate).pp("dense"))?,
            output: candle_nn::linear(i, h, vb.pp(output).pp("dense"))?,
            layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp(output).pp("LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.intermediate.forward(xs)?)?;
        self.layer_norm.forward(&(self.output.forward(&h)? + xs)?)
    }
}

/// One Q-Former layer (`qformer.encoder.layer.{i}`).
#[derive(Debug, Clone)]
pub struct QFormerLayer {
    attention: QFormerAttention,
    crossattention: Option<QFormerAttention>,
    text_ffn: FeedForward,
    query_ffn: FeedForward,
}

impl QFormerLayer {
    /// Loads layer `index`; it has cross-attention when `index % cross_attention_frequency == 0`.
    pub fn new(cfg: &QFormerConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let crossattention = if index % cfg.cross_attention_frequency == 0 {
            Some(QFormerAttention::new(
                cfg,
                cfg.encoder_hidden_size,
                vb.pp("crossattention"),
            )?)
        } else {
            None
        };
        Ok(Self {
            attention: QFormerAttention::new(cfg, cfg.hidden_size, vb.pp("attention"))?,
            crossattention,
            text_ffn: FeedForward::new(cfg, vb.clone(), "intermediate", "output")?,
            query_ffn: FeedForward::new(cfg, vb, "intermediate_query", "output_query")?,
        })
    }

    /// `xs: [B, S, H]`; the first `query_length` rows are queries. `image: [B, N, W]` is
    /// required when this layer cross-attends and `query_length > 0`.
    pub fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        image: Option<&Tensor>,
        query_length: usize,
    ) -> Result<Tensor> {
        let xs = self.attention.forward(xs, xs, mask)?;
        if query_length == 0 {
            return self.text_ffn.forward(&xs);
        }
        let seq = xs.dim(1)?;
        let mut queries = xs.narrow(1, 0, query_length)?;
        if let Some(cross) = &self.crossattention {
            let image = image.ok_or_else(|| {
                candle_core::Error::Msg(
                    "a cross-attention layer with query positions needs image features".into(),
                )
            })?;
            queries = cross.forward(&queries, image, None)?;
        }
        let queries = self.query_ffn.forward(&queries)?;
        if seq == query_length {
            return Ok(queries);
        }
        let text = self
            .text_ffn
            .forward(&xs.narrow(1, query_length, seq - query_length)?)?;
        Tensor::cat(&[&queries, &text], 1)
    }
}

/// The Q-Former encoder stack with its input LayerNorm (`qformer`).
#[derive(Debug, Clone)]
pub struct QFormerModel {
    layernorm: LayerNorm,
    layers: Vec<QFormerLayer>,
}

impl QFormerModel {
    /// Loads `layernorm` and `encoder.layer.*`.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| QFormerLayer::new(cfg, i, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layernorm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            layers,
        })
    }

    /// Runs the stack on already embedded inputs.
    ///
    /// - `embeds: [B, S, H]`: queries (first `query_length` rows) then text embeddings;
    /// - `attention_mask: [B, S]` (1 keep, 0 pad), `None` = all kept;
    /// - `image: [B, N, W]` features that query rows cross-attend.
    ///
    /// Returns the last hidden state `[B, S, H]`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        query_length: usize,
        attention_mask: Option<&Tensor>,
        image: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mask = attention_mask
            .map(|m| additive_mask(m, embeds.dtype()))
            .transpose()?;
        let mut xs = self.layernorm.forward(embeds)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, mask.as_ref(), image, query_length)?;
        }
        Ok(xs)
    }
}
