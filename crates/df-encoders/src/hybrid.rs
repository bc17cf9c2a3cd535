//! The hybrid-modal encoder: one Q-Former with its learned queries and contrastive
//! projections, run in the four modes of SPEC §2 (image, SPRC composed query, text-only
//! prompt, plain text).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::cir::BranchOutput;
use crate::config::Blip2Config;
use crate::nn::l2_normalize;
use crate::qformer::{QFormerModel, TextEmbeddings};
use crate::{EncoderError, Result};

/// Output of the SPRC two-pass composed query.
#[derive(Debug, Clone)]
pub struct ComposedQuery {
    /// Normalised composed feature `[B, P]` (`P` = `image_text_hidden_size`, 256).
    pub feature: Tensor,
    /// Pass-1 query outputs `[B, Q, H]` (`[B, 32, 768]`): the queries after fusing the
    /// reference image with the text; DetailFusion's fine-grained tokens project them.
    pub pass1_queries: Tensor,
}

/// A Q-Former with its queries and projections (`query_tokens`, `embeddings`, `qformer`,
/// `vision_projection`, `text_projection` in a Hugging Face checkpoint).
#[derive(Debug, Clone)]
pub struct HybridEncoder {
    query_tokens: Tensor,
    embeddings: TextEmbeddings,
    qformer: QFormerModel,
    vision_projection: Linear,
    text_projection: Linear,
    image_width: usize,
}

impl HybridEncoder {
    /// Loads the encoder from the root of a BLIP-2 checkpoint.
    pub fn new(cfg: &Blip2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let q = &cfg.qformer_config;
        let (h, p) = (q.hidden_size, cfg.image_text_hidden_size);
        Ok(Self {
            query_tokens: vb.get_with_hints(
                (1, cfg.num_query_tokens, h),
                "query_tokens",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            embeddings: TextEmbeddings::new(q, vb.pp("embeddings"))?,
            qformer: QFormerModel::new(q, vb.pp("qformer"))?,
            vision_projection: candle_nn::linear(h, p, vb.pp("vision_projection"))?,
            text_projection: candle_nn::linear(h, p, vb.pp("text_projection"))?,
            image_width: q.encoder_hidden_size,
        })
    }

    /// The learned queries `[1, Q, H]`.
    pub fn query_tokens(&self) -> &Tensor {
        &self.query_tokens
    }

    /// Number of learned queries `Q`.
    pub fn num_queries(&self) -> usize {
        self.query_tokens.dims()[1]
    }

    /// The Q-Former stack, for callers composing their own modes.
    pub fn qformer(&self) -> &QFormerModel {
        &self.qformer
    }

    /// The text embeddings.
    pub fn embeddings(&self) -> &TextEmbeddings {
        &self.embeddings
    }

    /// Projects hidden states to the contrastive space with `text_projection`: `[.., H]` → `[.., P]`.
    pub fn project_text(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.text_projection.forward(xs)?)
    }

    /// Image mode, raw: queries cross-attend `image: [B, N, W]` → query outputs `[B, Q, H]`.
    pub fn image_query_outputs(&self, image: &Tensor) -> Result<Tensor> {
        let b = self.check_image(image)?;
        let queries = self.expand_queries(b)?;
        Ok(self
            .qformer
            .forward(&queries, self.num_queries(), None, Some(image))?)
    }

    /// Image mode (gallery side): `image: [B, N, W]` (e.g. `[B, 257, 1408]`) → normalised
    /// per-token features `[B, Q, P]` (`[B, 32, 256]`).
    pub fn image_features(&self, image: &Tensor) -> Result<Tensor> {
        let out = self.image_query_outputs(image)?;
        Ok(l2_normalize(&self.vision_projection.forward(&out)?)?)
    }

    /// Plain text features (the BLIP-2 ITC text side): `input_ids, attention_mask: [B, L]`
    /// → normalised `[B, P]` from the `[CLS]` position.
    pub fn text_features(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        check_text(input_ids, attention_mask)?;
        let (input_ids, attention_mask) = trim_padding(input_ids, attention_mask)?;
        let embeds = self.embeddings.forward(&input_ids, None)?;
        let h = self
            .qformer
            .forward_rows(&embeds, 0, Some(&attention_mask), None, 0..1)?;
        self.cls_feature(&h, 0)
    }

    /// SPRC two-pass composed query.
    ///
    /// Pass 1: queries ⊕ text, queries cross-attend the reference `image: [B, N, W]`.
    /// Pass 2: pass-1 queries ⊕ text, no image, every position through the text FFN.
    /// The feature is `L2(text_projection(H[:, Q]))`, the text `[CLS]` position.
    pub fn composed_query(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ComposedQuery> {
        let b = self.check_image(image)?;
        check_text(input_ids, attention_mask)?;
        if input_ids.dim(0)? != b {
            return Err(input_err(
                "input_ids",
                format!("batch {} differs from the image batch {b}", input_ids.dim(0)?),
            ));
        }
        let q = self.num_queries();
        let (input_ids, attention_mask) = trim_padding(input_ids, attention_mask)?;
        let mask = self.with_query_mask(&attention_mask)?;
        let queries = self.expand_queries(b)?;
        let embeds = self.embeddings.forward(&input_ids, Some(&queries))?;
        // Only the query rows of pass 1 and the [CLS] row of pass 2 are read: the last layer of
        // each pass computes just those.
        let pass1_queries = self
            .qformer
            .forward_rows(&embeds, q, Some(&mask), Some(image), 0..q)?;
        let embeds = self.embeddings.forward(&input_ids, Some(&pass1_queries))?;
        let h2 = self
            .qformer
            .forward_rows(&embeds, 0, Some(&mask), None, q..q + 1)?;
        Ok(ComposedQuery {
            feature: self.cls_feature(&h2, 0)?,
            pass1_queries,
        })
    }

    /// SPRC text-only prompt mode: `prompt_tokens: [1, Q', H]` are inserted after `[CLS]`
    /// (`[CLS] ⊕ prompts ⊕ text[1:]`, positions over the whole sequence) → normalised `[B, P]`
    /// from position 0.
    pub fn prompt_text_features(
        &self,
        prompt_tokens: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        check_text(input_ids, attention_mask)?;
        let (b, l) = input_ids.dims2()?;
        let (_, np, h) = prompt_tokens.dims3().map_err(|_| {
            input_err(
                "prompt_tokens",
                format!("expected [1, Q, H], got {:?}", prompt_tokens.dims()),
            )
        })?;
        let words = self.embeddings.words(input_ids)?;
        let prompts = prompt_tokens.broadcast_as((b, np, h))?.to_dtype(words.dtype())?;
        let seq = Tensor::cat(
            &[&words.narrow(1, 0, 1)?, &prompts, &words.narrow(1, 1, l - 1)?],
            1,
        )?;
        let seq = seq.broadcast_add(&self.embeddings.positions(np + l)?)?;
        let ones = Tensor::ones((b, np), attention_mask.dtype(), attention_mask.device())?;
        let mask = Tensor::cat(
            &[
                &attention_mask.narrow(1, 0, 1)?,
                &ones,
                &attention_mask.narrow(1, 1, l - 1)?,
            ],
            1,
        )?;
        let out = self.qformer.forward_rows(&seq, 0, Some(&mask), None, 0..1)?;
        self.cls_feature(&out, 0)
    }

    /// A DetailFusion branch output: the composed query's global feature plus its pass-1
    /// queries projected by `token_projection` (`[B, Q, H]` → `[B, Q, P]`).
    pub fn branch_output(
        &self,
        token_projection: &Linear,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<BranchOutput> {
        let q = self.composed_query(image, input_ids, attention_mask)?;
        Ok(BranchOutput {
            global: q.feature,
            tokens: token_projection.forward(&q.pass1_queries)?,
            pass1_queries: q.pass1_queries,
        })
    }

    fn cls_feature(&self, hidden: &Tensor, position: usize) -> Result<Tensor> {
        let cls = hidden.narrow(1, position, 1)?.squeeze(1)?;
        Ok(l2_normalize(&self.text_projection.forward(&cls)?)?)
    }

    fn expand_queries(&self, b: usize) -> Result<Tensor> {
        let (_, q, h) = self.query_tokens.dims3()?;
        Ok(self.query_tokens.broadcast_as((b, q, h))?.contiguous()?)
    }

    fn with_query_mask(&self, attention_mask: &Tensor) -> Result<Tensor> {
        let b = attention_mask.dim(0)?;
        let ones = Tensor::ones(
            (b, self.num_queries()),
            attention_mask.dtype(),
            attention_mask.device(),
        )?;
        Ok(Tensor::cat(&[&ones, attention_mask], 1)?)
    }

    fn check_image(&self, image: &Tensor) -> Result<usize> {
        match image.dims() {
            &[b, _, w] if w == self.image_width => Ok(b),
            dims => Err(input_err(
                "image",
                format!("expected [B, N, {}], got {dims:?}", self.image_width),
            )),
        }
    }
}

fn input_err(name: &str, message: String) -> EncoderError {
    EncoderError::Input {
        name: name.into(),
        message,
    }
}

/// Drops the trailing columns that are padding in every row of the batch (`attention_mask`
/// 0): masked keys get zero attention weight and positions are absolute, so the outputs at
/// the kept positions do not change. Texts padded to `max_txt_len` get shorter; a batch
/// whose longest text fills the length is returned as is.
fn trim_padding(input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let l = attention_mask.dim(1)?;
    let keep = attention_mask
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?
        .iter()
        .filter_map(|row| row.iter().rposition(|&m| m != 0.0))
        .max()
        .map_or(1, |last| last + 1);
    if keep >= l {
        return Ok((input_ids.clone(), attention_mask.clone()));
    }
    Ok((input_ids.narrow(1, 0, keep)?, attention_mask.narrow(1, 0, keep)?))
}

fn check_text(input_ids: &Tensor, attention_mask: &Tensor) -> Result<()> {
    let (b, l) = input_ids.dims2().map_err(|_| {
        input_err(
            "input_ids",
            format!("expected [B, L], got {:?}", input_ids.dims()),
        )
    })?;
    if l == 0 {
        return Err(input_err(
            "input_ids",
            "empty sequence (needs at least [CLS])".into(),
        ));
    }
    if attention_mask.dims() != [b, l] {
        return Err(input_err(
            "attention_mask",
            format!(
                "expected {:?} like input_ids, got {:?}",
                [b, l],
                attention_mask.dims()
            ),
        ));
    }
    if !matches!(input_ids.dtype(), DType::U32 | DType::I64 | DType::U8) {
        return Err(input_err(
            "input_ids",
            format!("integer ids expected, got {:?}", input_ids.dtype()),
        ));
    }
    Ok(())
}
