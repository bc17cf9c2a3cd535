//! The model side of the three training stages (SPEC §4): which variables each stage trains
//! and its loss, over cached frozen-ViT features; and the staged runs built on it: on the
//! benchmarks ([`real`]) and on the toy world ([`toy_stages`]), with the on-disk layout of
//! [`stages`] and the mixed-precision frozen ViT of [`vision`].

pub mod real;
pub mod stages;
pub mod toy_stages;
pub mod vision;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{Tensor, Var};
use df_encoders::{BranchOutput, TextProcessor};
use df_train::losses::{contrastive_loss, hard_negative_contrastive_loss, scalar, Stage2Inputs};
use df_train::{LossConfig, Stage, Stage2Losses, StageModel, TrainError};

use crate::{DetailFusion, GalleryFeatures};

/// One training triplet, by image index into [`TrainingData::image_feats`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainItem {
    /// Reference image.
    pub reference: usize,
    /// Target image.
    pub target: usize,
    /// Modification text (or edit instruction).
    pub text: String,
    /// Hard negatives: images of the query's candidate set that are not targets (empty where
    /// the dataset has none). Used when [`LossConfig::hard_negatives`] is above 0.
    pub negatives: Vec<usize>,
}

/// Up to `k` hard negatives of each item of a batch, as distinct image indices, never a target
/// of the batch (it is a column already, and a positive for its own query). Which `k` rotates
/// with the batch's composition, so each epoch's reshuffle sees other negatives.
pub fn batch_negatives(items: &[&TrainItem], k: usize) -> Vec<usize> {
    if k == 0 {
        return vec![];
    }
    let targets: HashSet<usize> = items.iter().map(|t| t.target).collect();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for t in items {
        h = df_data::rng::mix64(h ^ (t.reference as u64) ^ ((t.target as u64) << 32));
    }
    let mut seen = HashSet::new();
    let mut out = vec![];
    for (p, t) in items.iter().enumerate() {
        let n = t.negatives.len();
        if n == 0 {
            continue;
        }
        let start = (df_data::rng::mix64(h ^ p as u64) % n as u64) as usize;
        let picks = (0..n).map(|j| t.negatives[(start + j) % n]);
        let fresh = picks.filter(|i| !targets.contains(i));
        for i in fresh.take(k) {
            if seen.insert(i) {
                out.push(i);
            }
        }
    }
    out
}

/// Triplets plus the frozen ViT features of every unique image, computed once.
pub struct TrainingData {
    /// The triplets.
    pub items: Vec<TrainItem>,
    /// ViT features after `ln_vision`, one `[T, W]` tensor per unique image, in `f32` or in
    /// the frozen parts' reduced precision (cast to `f32` per batch).
    pub image_feats: Vec<Tensor>,
    /// Tokenizer and text clean-up.
    pub text: TextProcessor,
}

/// Stage 3's inputs, computed once (everything upstream of the compositor is frozen).
struct Stage3Cache {
    /// DI and GM outputs of every item.
    di: BranchOutput,
    gm: BranchOutput,
    /// Gallery tokens `[U, Q, P]` of every image used as a target or hard negative.
    gallery: Tensor,
    /// Image index → row of `gallery`.
    rows: HashMap<usize, usize>,
}

/// A [`DetailFusion`] model bound to its training data.
pub struct StageTrainer<'a> {
    model: &'a DetailFusion,
    data: &'a TrainingData,
    losses: LossConfig,
    stage3: OnceLock<Stage3Cache>,
}

/// One stage-2 batch: reference ViT features `[B, T, W]`, gallery ViT features
/// `[B + N, T, W]` (targets, then N hard negatives), text ids and mask `[B, L]`.
struct Batch {
    reference: Tensor,
    gallery: Tensor,
    ids: Tensor,
    mask: Tensor,
}

impl<'a> StageTrainer<'a> {
    /// Binds `model` to `data`.
    pub fn new(model: &'a DetailFusion, data: &'a TrainingData, losses: LossConfig) -> Self {
        Self {
            model,
            data,
            losses,
            stage3: OnceLock::new(),
        }
    }

    /// The model being trained.
    pub fn model(&self) -> &DetailFusion {
        self.model
    }

    fn gather(&self, images: impl Iterator<Item = usize>) -> candle_core::Result<Tensor> {
        let feats: Vec<&Tensor> = images.map(|i| &self.data.image_feats[i]).collect();
        // Trainable parts run in f32 whatever the frozen ViT ran in.
        Tensor::stack(&feats, 0)?.to_dtype(candle_core::DType::F32)
    }

    fn items(&self, idx: &[usize]) -> Vec<&TrainItem> {
        idx.iter().map(|&i| &self.data.items[i]).collect()
    }

    /// Targets of the batch, then its hard negatives.
    fn gallery_images(&self, items: &[&TrainItem]) -> Vec<usize> {
        let mut images: Vec<usize> = items.iter().map(|t| t.target).collect();
        images.extend(batch_negatives(items, self.losses.hard_negatives));
        images
    }

    fn batch(&self, idx: &[usize], negatives: bool) -> crate::Result<Batch> {
        let items = self.items(idx);
        let reference = self.gather(items.iter().map(|t| t.reference))?;
        let gallery = if negatives {
            self.gallery_images(&items)
        } else {
            items.iter().map(|t| t.target).collect()
        };
        let gallery = self.gather(gallery.into_iter())?;
        let texts: Vec<&str> = items.iter().map(|t| t.text.as_str()).collect();
        let tb = self.data.text.encode_batch(&texts, self.model.device())?;
        Ok(Batch {
            reference,
            gallery,
            ids: tb.input_ids,
            mask: tb.attention_mask,
        })
    }

    fn stage3_cache(&self) -> crate::Result<&Stage3Cache> {
        if let Some(c) = self.stage3.get() {
            return Ok(c);
        }
        let all: Vec<usize> = (0..self.data.items.len()).collect();
        let (mut di_parts, mut gm_parts) = (vec![], vec![]);
        for chunk in all.chunks(64) {
            let b = self.batch(chunk, false)?;
            let q = self.model.encode_query_embeds(&b.reference, &b.ids, &b.mask)?;
            let (Some(di), Some(gm)) = (q.di, q.gm) else {
                return Err(crate::DetailFusionError::Variant(
                    "stage 3 needs both branches".into(),
                ));
            };
            di_parts.push(di.detach());
            gm_parts.push(gm.detach());
        }
        // Targets, plus negatives only when batches will ask for them.
        let with_negatives = self.losses.hard_negatives > 0;
        let mut images: Vec<usize> = vec![];
        let mut rows = HashMap::new();
        for t in &self.data.items {
            let negatives = if with_negatives { &t.negatives[..] } else { &[] };
            for &i in std::iter::once(&t.target).chain(negatives) {
                rows.entry(i).or_insert_with(|| {
                    images.push(i);
                    images.len() - 1
                });
            }
        }
        let mut z = vec![];
        for chunk in images.chunks(64) {
            let feats = self.gather(chunk.iter().copied())?;
            z.push(self.model.encode_image_embeds(&feats)?.tokens.detach());
        }
        let cat = |v: Vec<BranchOutput>| -> candle_core::Result<BranchOutput> {
            let g: Vec<&Tensor> = v.iter().map(|b| &b.global).collect();
            let t: Vec<&Tensor> = v.iter().map(|b| &b.tokens).collect();
            let p: Vec<&Tensor> = v.iter().map(|b| &b.pass1_queries).collect();
            Ok(BranchOutput {
                global: Tensor::cat(&g, 0)?.contiguous()?,
                tokens: Tensor::cat(&t, 0)?.contiguous()?,
                pass1_queries: Tensor::cat(&p, 0)?.contiguous()?,
            })
        };
        let cache = Stage3Cache {
            di: cat(di_parts)?,
            gm: cat(gm_parts)?,
            gallery: Tensor::cat(&z, 0)?.contiguous()?,
            rows,
        };
        Ok(self.stage3.get_or_init(|| cache))
    }

    fn stage_loss(&self, stage: Stage, idx: &[usize]) -> crate::Result<(Tensor, Vec<(String, f32)>)> {
        let m = self.model;
        if stage == Stage::Itc {
            return Err(crate::DetailFusionError::Variant(
                "stage 0 trains an ItcPretrainer, not DetailFusion".into(),
            ));
        }
        if stage == Stage::Compositor {
            let c = self.stage3_cache()?;
            let ids = Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), m.device())?;
            let gallery: Vec<u32> = self
                .gallery_images(&self.items(idx))
                .iter()
                .map(|i| c.rows[i] as u32)
                .collect();
            let gallery = Tensor::new(gallery, m.device())?;
            let pick = |b: &BranchOutput| -> candle_core::Result<BranchOutput> {
                Ok(BranchOutput {
                    global: b.global.index_select(&ids, 0)?,
                    tokens: b.tokens.index_select(&ids, 0)?,
                    pass1_queries: b.pass1_queries.index_select(&ids, 0)?,
                })
            };
            let q = m.fuse(Some(pick(&c.di)?), Some(pick(&c.gm)?))?;
            let loss = contrastive_loss(&q.feature, &c.gallery.index_select(&gallery, 0)?, m.temp())?;
            return Ok((loss, vec![]));
        }
        // Stage 1 keeps its own hard negative (the reference); stage 2 adds candidate sets.
        let Batch {
            reference,
            gallery,
            ids,
            mask,
        } = self.batch(idx, stage == Stage::Joint)?;
        let GalleryFeatures { tokens: z, gm_tokens } = m.encode_image_embeds(&gallery)?;
        if stage == Stage::Di {
            let di = m
                .di()
                .ok_or_else(|| crate::DetailFusionError::Variant("stage 1 needs a DI branch".into()))?;
            let q = df_encoders::QueryBranch::encode_query(di, &reference, &ids, &mask)?;
            let z_ref = m.encode_image_embeds(&reference)?.tokens;
            let loss = hard_negative_contrastive_loss(&q.global, &z, &z_ref, di.temp())?;
            return Ok((loss, vec![]));
        }
        let q = m.encode_query_embeds(&reference, &ids, &mask)?;
        let z_gm = gm_tokens.unwrap_or_else(|| z.clone());
        match (m.di(), m.gm(), &q.di, &q.gm) {
            (Some(di), Some(gm), Some(qd), Some(qg)) => {
                let text_only = gm.text_only_features(&ids, &mask)?;
                let l = Stage2Losses::compute(
                    Stage2Inputs {
                        q_gm: &qg.global,
                        q_di: &qd.global,
                        text_only: &text_only,
                        gm_pass1: &qg.pass1_queries,
                        prompt_tokens: gm.prompt_tokens(),
                        targets: &z,
                        targets_gm: &z_gm,
                        temp_gm: gm.temp(),
                        temp_di: di.temp(),
                    },
                    &self.losses,
                )?;
                let parts = vec![
                    ("loss_gm".to_string(), scalar(&l.gm)?),
                    ("loss_di".to_string(), scalar(&l.di)?),
                    ("loss_text_only".to_string(), scalar(&l.text_only)?),
                    ("loss_align".to_string(), scalar(&l.align)?),
                ];
                Ok((l.total, parts))
            }
            (Some(di), None, Some(qd), None) => Ok((contrastive_loss(&qd.global, &z, di.temp())?, vec![])),
            (None, Some(gm), None, Some(qg)) => {
                let text_only = gm.text_only_features(&ids, &mask)?;
                let l = (contrastive_loss(&qg.global, &z, gm.temp())?
                    + (contrastive_loss(&text_only, &z, gm.temp())? * self.losses.text_only_weight)?
                    + (df_train::losses::prompt_alignment_loss(&qg.pass1_queries, gm.prompt_tokens())?
                        * self.losses.align_weight)?)?;
                Ok((l, vec![]))
            }
            _ => Err(crate::DetailFusionError::Variant("model has no branch".into())),
        }
    }
}

impl StageModel for StageTrainer<'_> {
    fn trainable(&self, stage: Stage) -> Vec<(String, Var)> {
        match stage {
            Stage::Itc => vec![],
            Stage::Di => self.model.vars(&["di."]),
            Stage::Joint => self.model.vars(&["di.", "gm.", "gm_gallery."]),
            Stage::Compositor => {
                let mut v = self.model.vars(&["compositor."]);
                v.extend(self.model.vars(&["temp"]));
                v
            }
        }
    }

    fn loss(&self, stage: Stage, indices: &[usize]) -> df_train::Result<(Tensor, Vec<(String, f32)>)> {
        self.stage_loss(stage, indices).map_err(|e| match e {
            crate::DetailFusionError::Candle(c) => TrainError::Candle(c),
            other => TrainError::Model(other.to_string()),
        })
    }

    fn save(&self, dir: &Path) -> df_train::Result<()> {
        self.model.save(dir).map_err(|e| TrainError::Model(e.to_string()))
    }
}
