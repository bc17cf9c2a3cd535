//! The BLIP-2 Q-Former: BERT layers whose first `query_length` positions are learned queries.
//! Self-attention runs over all positions; the query positions alone cross-attend the image
//! every `cross_attention_frequency` layers and use their own FFN. Weight names follow
//! Hugging Face `Blip2QFormerModel` (`qformer.*`) and `Blip2TextEmbeddings` (`embeddings.*`).

use std::ops::Range;

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::config::QFormerConfig;
use crate::nn::{
    additive_mask, attention, feed_forward, linear_epilogue, split_heads, split_heads_stacked, stack_linears,
    LayerNorm,
};

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

/// Input rows up to which stacked projections (`qkv`, `kv`) are used.
const STACKED_MAX_ROWS: usize = 512;

fn rows(xs: &Tensor) -> Result<usize> {
    Ok(xs.elem_count() / xs.dim(D::Minus1)?)
}

/// Multi-head attention plus BERT's output block (`dense`, residual, `LayerNorm`).
#[derive(Debug, Clone)]
struct QFormerAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    /// `[query; key; value]` stacked, for self-attention at inference (`query`, `key` and
    /// `value` are then views into it).
    qkv: Option<Linear>,
    /// `[key; value]` stacked, at inference.
    kv: Option<Linear>,
    dense: Linear,
    layer_norm: LayerNorm,
    heads: usize,
    scale: f64,
}

impl QFormerAttention {
    /// Self-attention (`kv_width` = hidden size) or cross-attention on `kv_width`-wide image
    /// features (`cross`).
    fn new(cfg: &QFormerConfig, kv_width: usize, cross: bool, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        let mut query = candle_nn::linear(h, h, att.pp("query"))?;
        let mut key = candle_nn::linear(kv_width, h, att.pp("key"))?;
        let mut value = candle_nn::linear(kv_width, h, att.pp("value"))?;
        // Stack the projections that read the same input into one GEMM (inference only).
        let (mut qkv, mut kv) = (None, None);
        if !cross {
            if let Some((fused, views)) = stack_linears(&[&query, &key, &value])? {
                [query, key, value] = <[Linear; 3]>::try_from(views).expect("three views");
                kv = Some(Linear::new(
                    fused.weight().narrow(0, h, 2 * h)?,
                    fused.bias().map(|b| b.narrow(0, h, 2 * h)).transpose()?,
                ));
                qkv = Some(fused);
            }
        } else if let Some((fused, views)) = stack_linears(&[&key, &value])? {
            [key, value] = <[Linear; 2]>::try_from(views).expect("two views");
            kv = Some(fused);
        }
        let dense = candle_nn::linear(h, h, vb.pp("output.dense"))?;
        Ok(Self {
            query,
            key,
            value,
            qkv,
            kv,
            dense,
            layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            scale: ((h / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// The stacked projection `fused` when it applies to `rows` input rows: stacking helps the
    /// small GEMMs of short inputs and slows the large ones (measured on 2 AVX2 cores).
    fn stacked<'a>(&self, fused: &'a Option<Linear>, rows: usize) -> Option<&'a Linear> {
        fused.as_ref().filter(|_| rows <= STACKED_MAX_ROWS)
    }

    /// The `n` stacked projections `fused` of `xs: [.., W]`, laid out as `[B, S, n·H]` by
    /// `layout` (identity, or the unpacking of packed rows), split into heads `[B, h, S, d]`.
    fn stacked_heads(
        &self,
        fused: &Linear,
        xs: &Tensor,
        n: usize,
        layout: impl Fn(Tensor) -> Result<Tensor>,
    ) -> Result<Vec<Tensor>> {
        split_heads_stacked(&layout(linear_epilogue(fused, xs, None, None)?)?, n, self.heads)
    }

    /// Heads `[B, h, S, d]` of one projection of `xs`, laid out by `layout` as in
    /// [`Self::stacked_heads`].
    fn heads_of(
        &self,
        linear: &Linear,
        xs: &Tensor,
        layout: impl Fn(Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        split_heads(&layout(linear_epilogue(linear, xs, None, None)?)?, self.heads)
    }

    /// Keys and values of `kv` as heads, laid out by `layout` as in [`Self::stacked_heads`].
    fn keys_values(
        &self,
        kv: &Tensor,
        layout: impl Fn(Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        match self.stacked(&self.kv, rows(kv)?) {
            Some(fused) => {
                let [k, v] = two(self.stacked_heads(fused, kv, 2, layout)?);
                Ok((k, v))
            }
            None => Ok((
                self.heads_of(&self.key, kv, &layout)?,
                self.heads_of(&self.value, kv, &layout)?,
            )),
        }
    }

    /// Queries, keys and values of `xs` (self-attention) as heads, laid out by `layout` as in
    /// [`Self::stacked_heads`].
    fn queries_keys_values(
        &self,
        xs: &Tensor,
        layout: impl Fn(Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        match self.stacked(&self.qkv, rows(xs)?) {
            Some(fused) => {
                let [q, k, v] = three(self.stacked_heads(fused, xs, 3, layout)?);
                Ok((q, k, v))
            }
            None => {
                let q = self.heads_of(&self.query, xs, &layout)?;
                let (k, v) = self.keys_values(xs, layout)?;
                Ok((q, k, v))
            }
        }
    }

    /// `xs: [B, S, H]` attends `kv: [B, Sk, W]` → `[B, S, H]`.
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (q, k, v) = if xs.id() == kv.id() {
            self.queries_keys_values(xs, Ok)?
        } else {
            let q = self.heads_of(&self.query, xs, Ok)?;
            let (k, v) = self.keys_values(kv, Ok)?;
            (q, k, v)
        };
        let ctx = attention(&q, &k, &v, mask, self.scale)?;
        self.layer_norm
            .forward(&linear_epilogue(&self.dense, &ctx, None, Some(xs))?)
    }

    /// Self-attention over packed rows `xs: [R, H]` (see [`Packing`]); the projections run on
    /// the packed rows and are laid out per item only for the attention itself.
    ///
    /// `own: None` computes every row → `[R, H]`; `own: Some((index, n))` only the packed rows
    /// `index` (`[B·n]`, `n` per item, all real) → `[B, n, H]`.
    fn forward_packed(
        &self,
        xs: &Tensor,
        pk: &Packing,
        mask: &Tensor,
        own: Option<(&Tensor, usize)>,
    ) -> Result<Tensor> {
        let (b, s) = (pk.batch, pk.len);
        let unpack = |t: Tensor| -> Result<Tensor> {
            let w = t.dim(1)?;
            t.index_select(&pk.scatter, 0)?.reshape((b, s, w))
        };
        match own {
            None => {
                let (q, k, v) = self.queries_keys_values(xs, unpack)?;
                let ctx = attention(&q, &k, &v, Some(mask), self.scale)?;
                let ctx = ctx.reshape((b * s, ()))?.index_select(&pk.keep, 0)?;
                self.layer_norm
                    .forward(&linear_epilogue(&self.dense, &ctx, None, Some(xs))?)
            }
            Some((index, n)) => {
                let (k, v) = self.keys_values(xs, unpack)?;
                let rows = xs.index_select(index, 0)?.reshape((b, n, ()))?;
                let q = self.heads_of(&self.query, &rows, Ok)?;
                let ctx = attention(&q, &k, &v, Some(mask), self.scale)?;
                self.layer_norm
                    .forward(&linear_epilogue(&self.dense, &ctx, None, Some(&rows))?)
            }
        }
    }
}

fn two(v: Vec<Tensor>) -> [Tensor; 2] {
    <[Tensor; 2]>::try_from(v).expect("two projections")
}

fn three(v: Vec<Tensor>) -> [Tensor; 3] {
    <[Tensor; 3]>::try_from(v).expect("three projections")
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
        self.layer_norm
            .forward(&feed_forward(&self.intermediate, &self.output, self.act, xs, xs)?)
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
                true,
                vb.pp("crossattention"),
            )?)
        } else {
            None
        };
        Ok(Self {
            attention: QFormerAttention::new(cfg, cfg.hidden_size, false, vb.pp("attention"))?,
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
        self.forward_rows(xs, mask, image, query_length, 0..xs.dim(1)?)
    }

    /// As [`Self::forward`], but only the output rows `rows` are computed (every row still
    /// serves as a key and value): `[B, rows.len(), H]`.
    pub(crate) fn forward_rows(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        image: Option<&Tensor>,
        query_length: usize,
        rows: Range<usize>,
    ) -> Result<Tensor> {
        let own = if rows.len() == xs.dim(1)? {
            xs.clone()
        } else {
            xs.narrow(1, rows.start, rows.len())?
        };
        let xs = self.attention.forward(&own, xs, mask)?;
        // Query rows among the computed ones: `rows ∩ [0, query_length)`.
        let nq = query_length.clamp(rows.start, rows.end) - rows.start;
        self.ffn_blocks(&xs, image, nq, 1)
    }

    /// The layer on packed rows `xs: [R, H]` (see [`Packing`]): `[R, H]`, or with
    /// `own: Some((index, n, nq))` only the packed rows `index` (`n` per item, the first `nq`
    /// of them queries) → `[B, n, H]`.
    fn forward_packed(
        &self,
        xs: &Tensor,
        pk: &Packing,
        mask: &Tensor,
        image: Option<&Tensor>,
        own: Option<(&Tensor, usize, usize)>,
    ) -> Result<Tensor> {
        let att = self
            .attention
            .forward_packed(xs, pk, mask, own.map(|(index, n, _)| (index, n)))?;
        if let Some((_, _, nq)) = own {
            return self.ffn_blocks(&att, image, nq, 1);
        }
        self.ffn_blocks(&att, image, pk.batch * pk.queries, 0)
    }

    /// Cross-attention and query FFN on the first `nq` rows along `dim` (queries), text FFN on
    /// the rest. `xs` is `[B, S, H]` (`dim` 1) or packed `[R, H]` (`dim` 0, `nq = B·Q`).
    fn ffn_blocks(&self, xs: &Tensor, image: Option<&Tensor>, nq: usize, dim: usize) -> Result<Tensor> {
        if nq == 0 {
            return self.text_ffn.forward(xs);
        }
        let seq = xs.dim(dim)?;
        let mut queries = xs.narrow(dim, 0, nq)?;
        if let Some(cross) = &self.crossattention {
            let image = image.ok_or_else(|| {
                candle_core::Error::Msg(
                    "a cross-attention layer with query positions needs image features".into(),
                )
            })?;
            let (b, h) = (image.dim(0)?, xs.dim(xs.rank() - 1)?);
            let q3 = queries.reshape((b, (), h))?;
            queries = cross.forward(&q3, image, None)?.reshape(queries.shape())?;
        }
        let queries = self.query_ffn.forward(&queries)?;
        if seq == nq {
            return Ok(queries);
        }
        let text = self.text_ffn.forward(&xs.narrow(dim, nq, seq - nq)?)?;
        Tensor::cat(&[&queries, &text], dim)
    }
}

/// Rows of a padded batch that hold real positions, packed: row-wise blocks (projections,
/// FFNs, LayerNorms) then skip padding, and only attention sees the padded `[B, S]` layout.
/// Padded positions are masked keys (zero attention weight) and their outputs are never
/// read, so the outputs at real positions do not change.
///
/// Packed order: the `B·Q` query rows (item-major), then the real text rows (item-major).
#[derive(Debug)]
struct Packing {
    batch: usize,
    len: usize,
    queries: usize,
    /// `[R]` u32: padded flat index (`b·S + s`) of each packed row.
    keep: Tensor,
    /// `[B·S]` u32: packed row of each padded position (a real row of the same item for
    /// padding, which is masked).
    scatter: Tensor,
    /// Packed row of each padded position, on the host.
    packed_of: Vec<Option<u32>>,
}

impl Packing {
    /// `None` when nothing is padded, when a query position is padded, or when one of `rows`
    /// is padding in some item: the dense path handles those.
    fn new(mask: &Tensor, queries: usize, rows: &Range<usize>) -> Result<Option<Self>> {
        let (batch, len) = mask.dims2()?;
        let real: Vec<Vec<bool>> = mask
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?
            .into_iter()
            .map(|r| r.into_iter().map(|m| m != 0.0).collect())
            .collect();
        if real.iter().all(|r| r.iter().all(|&m| m))
            || real
                .iter()
                .any(|r| r[..queries.min(len)].iter().any(|&m| !m) || rows.clone().any(|s| !r[s]))
        {
            return Ok(None);
        }
        let mut packed_of = vec![None; batch * len];
        let mut keep = Vec::new();
        for b in 0..batch {
            for s in 0..queries {
                packed_of[b * len + s] = Some(keep.len() as u32);
                keep.push((b * len + s) as u32);
            }
        }
        for (b, r) in real.iter().enumerate() {
            for s in queries..len {
                if r[s] {
                    packed_of[b * len + s] = Some(keep.len() as u32);
                    keep.push((b * len + s) as u32);
                }
            }
        }
        let scatter: Vec<u32> = (0..batch * len)
            .map(|i| {
                packed_of[i].unwrap_or_else(|| {
                    // First real row of the same item.
                    let b = i / len;
                    (0..len).find_map(|s| packed_of[b * len + s]).unwrap_or(0)
                })
            })
            .collect();
        let dev = mask.device();
        let n = keep.len();
        Ok(Some(Self {
            batch,
            len,
            queries,
            keep: Tensor::from_vec(keep, n, dev)?,
            scatter: Tensor::from_vec(scatter, batch * len, dev)?,
            packed_of,
        }))
    }

    /// Packed indices of the positions `rows` of every item: `[B·rows.len()]`.
    fn rows_index(&self, rows: &Range<usize>, dev: &candle_core::Device) -> Result<Tensor> {
        let idx: Vec<u32> = (0..self.batch)
            .flat_map(|b| rows.clone().map(move |s| (b, s)))
            .map(|(b, s)| self.packed_of[b * self.len + s].expect("checked in Packing::new"))
            .collect();
        let n = idx.len();
        Tensor::from_vec(idx, n, dev)
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
        self.forward_rows(embeds, query_length, attention_mask, image, 0..embeds.dim(1)?)
    }

    /// As [`Self::forward`], but the last layer computes only the output rows `rows`, which
    /// is all a caller reading a few positions needs: `[B, rows.len(), H]`.
    pub(crate) fn forward_rows(
        &self,
        embeds: &Tensor,
        query_length: usize,
        attention_mask: Option<&Tensor>,
        image: Option<&Tensor>,
        rows: Range<usize>,
    ) -> Result<Tensor> {
        let packing = match attention_mask {
            Some(m) if !self.layers.is_empty() => Packing::new(m, query_length, &rows)?,
            _ => None,
        };
        let mask = attention_mask
            .map(|m| additive_mask(m, embeds.dtype()))
            .transpose()?;
        if let (Some(pk), Some(mask)) = (packing, &mask) {
            let (b, s, h) = embeds.dims3()?;
            let mut xs = self
                .layernorm
                .forward(&embeds.reshape((b * s, h))?.index_select(&pk.keep, 0)?)?;
            let (last, layers) = self.layers.split_last().expect("checked above");
            for layer in layers {
                xs = layer.forward_packed(&xs, &pk, mask, image, None)?;
            }
            let index = pk.rows_index(&rows, embeds.device())?;
            let nq = query_length.clamp(rows.start, rows.end) - rows.start;
            return last.forward_packed(&xs, &pk, mask, image, Some((&index, rows.len(), nq)));
        }
        let mut xs = self.layernorm.forward(embeds)?;
        let Some((last, layers)) = self.layers.split_last() else {
            return xs.narrow(1, rows.start, rows.len());
        };
        for layer in layers {
            xs = layer.forward(&xs, mask.as_ref(), image, query_length)?;
        }
        last.forward_rows(&xs, mask.as_ref(), image, query_length, rows)
    }
}
