//! The toy-world pipeline: a procedural CIR world (df-data), stage 0 pretraining of a tiny
//! BLIP-2 as the stand-in for real weights, then DetailFusion's stages 1–3 exactly as on real
//! data, and CIRR-style evaluation. One [`ToyPreset`] holds every setting.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use df_data::cirr::CirrSplit;
use df_data::toy::{Scene, ToyConfig, ToyWorld, CELLS};
use df_encoders::text_processing::PaddingStrategy;
use df_encoders::{Blip2Config, ImageProcessor, QFormerConfig, TextProcessor, VisionConfig};
use df_train::eval::{cirr_val_metrics, CirrMetrics, CirrQuery};
use df_train::{train, Hooks, LossConfig, OptimizerConfig, Schedule, Stage, TrainerConfig};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::{
    DetailFusion, DetailFusionConfig, DetailFusionError, ItcPretrainer, Result, SceneParsing, TrainItem,
};

/// Every setting of a toy run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToyPreset {
    /// The world.
    pub world: ToyConfig,
    /// Tiny BLIP-2 sizes (the vocabulary size is set from the toy tokenizer).
    pub blip2: Blip2Config,
    /// Model options (variant, gallery mode, compositor); `blip2` inside is replaced.
    pub model: Option<DetailFusionConfig>,
    /// Stage 0 (image–text contrastive pretraining).
    pub stage0: TrainerConfig,
    /// At most this many training images for stage 0 (an even subsample), to bound its time.
    pub stage0_max_images: usize,
    /// Reuse this stage-0 BLIP-2 checkpoint (a directory written by an earlier run's
    /// `blip2/`) instead of training one; ablations share one stand-in backbone this way.
    pub stage0_checkpoint: Option<std::path::PathBuf>,
    /// Stage 0 adds hard negatives to each batch: images one edit away (edit pairs, and the
    /// reference, target and negatives of each training query).
    pub stage0_hard_negatives: bool,
    /// [design] Stage 0's scene-parsing loss: linear heads predict each grid cell's shape,
    /// colour and size, so that the stand-in backbone sees what the edits change (weight 0:
    /// captions only). See [`SceneParsing`].
    pub stage0_scene: SceneParsing,
    /// Stage 1 (DI on atomic edits); `None` skips it (the "without stage 1" ablation).
    pub stage1: Option<TrainerConfig>,
    /// Stage 2 (joint).
    pub stage2: TrainerConfig,
    /// Stage 3 (compositor).
    pub stage3: TrainerConfig,
    /// Stage-2 loss weights.
    pub losses: LossConfig,
    /// Stages 2 and 3 evaluate on the val split after each epoch and continue from (and ship)
    /// their best epoch by the SPEC §4 criterion, as on the real benchmarks.
    pub validate: bool,
}

fn stage_cfg(epochs: usize, batch: usize, lr: f64, seed: u64) -> TrainerConfig {
    TrainerConfig {
        epochs,
        batch_size: batch,
        drop_last: true,
        seed,
        optimizer: OptimizerConfig {
            lr,
            grad_clip: Some(1.0),
            schedule: Schedule::CosineWarmup { warmup_steps: 20 },
            ..Default::default()
        },
        checkpoint_every: None,
        max_steps: None,
    }
}

impl Default for ToyPreset {
    fn default() -> Self {
        // 7,500 training queries: stage 2 generalises with data far more than with epochs
        // (on one stage-0 backbone: 2,500 queries x 12 epochs reached toy val 58, 7,500 x 6
        // reached 65).
        let mut world = ToyConfig::default().with_counts(7500, 200, 300);
        world.ipr2pr = 2500;
        Self {
            world,
            blip2: toy_blip2(64, 100),
            model: None,
            // A from-scratch ViT learns slowly at 1e-3 in 372 steps (text-to-image R@1 on the
            // toy test split: 3e-3 14.0, 1e-3 8-10); warm up over 40 steps.
            stage0: TrainerConfig {
                optimizer: OptimizerConfig {
                    schedule: Schedule::CosineWarmup { warmup_steps: 40 },
                    ..stage_cfg(4, 64, 3e-3, 0).optimizer
                },
                ..stage_cfg(4, 64, 3e-3, 0)
            },
            stage0_max_images: 6000,
            stage0_checkpoint: None,
            stage0_hard_negatives: true,
            stage0_scene: SceneParsing {
                weight: 1.0,
                ..SceneParsing::default()
            },
            stage1: Some(stage_cfg(6, 32, 3e-4, 1)),
            stage2: stage_cfg(5, 64, 5e-4, 2),
            stage3: stage_cfg(10, 64, 1e-3, 3),
            // Two candidate-set negatives per query in stages 2 and 3.
            losses: LossConfig {
                hard_negatives: 2,
                ..LossConfig::default()
            },
            validate: true,
        }
    }
}

/// The tiny BLIP-2 of the toy world: 64 px images, 8 px patches, width 96.
pub fn toy_blip2(image_size: usize, vocab_size: usize) -> Blip2Config {
    Blip2Config {
        vision_config: VisionConfig {
            hidden_size: 96,
            intermediate_size: 192,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            image_size,
            patch_size: 8,
            ..Default::default()
        },
        qformer_config: QFormerConfig {
            vocab_size,
            hidden_size: 96,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            intermediate_size: 192,
            max_position_embeddings: 80,
            cross_attention_frequency: 2,
            encoder_hidden_size: 96,
            ..Default::default()
        },
        num_query_tokens: 8,
        image_text_hidden_size: 64,
    }
}

/// Longest toy text in tokens, special tokens included (within [`toy_blip2`]'s 80 positions).
pub const TOY_MAX_TXT_LEN: usize = 64;

/// A generated world with its images rendered and preprocessed once.
pub struct ToyData {
    /// The world.
    pub world: ToyWorld,
    /// Text processing with the world's own tokenizer.
    pub text: TextProcessor,
    /// Every distinct scene's image at the model's input size, kept as 8-bit RGB (a quarter
    /// of preprocessed `f32`); [`ToyData::pixels`] preprocesses rows on demand.
    images: Vec<RgbImage>,
    processor: ImageProcessor,
    device: Device,
    /// Scene key → row (image index).
    pub index: HashMap<u128, usize>,
    /// One caption per row.
    pub captions: Vec<String>,
    /// One [`Scene::cell_labels`] per row.
    labels: Vec<[[u8; 3]; CELLS as usize]>,
}

impl ToyData {
    /// Generates and renders the world of `cfg`.
    pub fn generate(cfg: &ToyConfig, device: &Device) -> Result<Self> {
        Self::generate_splits(cfg, &CirrSplit::ALL, true, device)
    }

    /// Like [`ToyData::generate`], but renders only the images of `splits` (and of the edit
    /// pairs when `edits`), e.g. just the test split for evaluation.
    pub fn generate_splits(
        cfg: &ToyConfig,
        splits: &[CirrSplit],
        edits: bool,
        device: &Device,
    ) -> Result<Self> {
        let world = ToyWorld::generate(cfg).map_err(data_err)?;
        let tokenizer = df_data::toy::build_tokenizer().map_err(data_err)?;
        // Padding to the batch's longest text gives the same features as padding to 32
        // (padding is masked) at a fraction of the cost.
        // Scene captions run to ~45 tokens (4 objects and the background): BLIP-2's 32 would cut
        // the last object and the background from a quarter of them.
        let text = TextProcessor::from_tokenizer(tokenizer)?
            .with_max_txt_len(TOY_MAX_TXT_LEN)?
            .with_padding_strategy(PaddingStrategy::Longest)?;
        let mut scenes: Vec<&Scene> = vec![];
        let mut index = HashMap::new();
        let all = world
            .splits
            .iter()
            .filter(|s| splits.contains(&s.split))
            .flat_map(|s| s.images.iter().map(|i| &i.scene));
        let pairs = if edits { &world.edit_pairs[..] } else { &[] };
        let edits = pairs.iter().flat_map(|p| [&p.original, &p.edited]);
        for scene in all.chain(edits) {
            index.entry(scene.key()).or_insert_with(|| {
                scenes.push(scene);
                scenes.len() - 1
            });
        }
        let processor = ImageProcessor::new(cfg.image_size as usize);
        let images = scenes
            .iter()
            .map(|scene| processor.resize_and_crop(&world.render(scene)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let captions = scenes.iter().map(|s| s.caption()).collect();
        let labels = scenes.iter().map(|s| s.cell_labels()).collect();
        Ok(Self {
            world,
            text,
            images,
            processor,
            device: device.clone(),
            index,
            captions,
            labels,
        })
    }

    /// Number of distinct images (rows).
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the world has no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Preprocessed pixels `[rows.len(), 3, S, S]` of `rows`.
    pub fn pixels(&self, rows: &[usize]) -> Result<Tensor> {
        let per = self.processor.values_per_image();
        let mut values = vec![0f32; rows.len() * per];
        for (out, &r) in values.chunks_mut(per).zip(rows) {
            let img = self.images.get(r).ok_or_else(|| self.no_row(r))?;
            self.processor.preprocess_rgb_into(img, out)?;
        }
        let s = self.processor.image_size;
        Ok(Tensor::from_vec(values, (rows.len(), 3, s, s), &self.device)?)
    }

    /// Per-cell `[shape, colour, size]` classes `[rows.len(), CELLS, 3]` (u32) of `rows`; see
    /// [`Scene::cell_labels`].
    pub fn cell_labels(&self, rows: &[usize]) -> Result<Tensor> {
        let mut values = Vec::with_capacity(rows.len() * CELLS as usize * 3);
        for &r in rows {
            let l = self.labels.get(r).ok_or_else(|| self.no_row(r))?;
            values.extend(l.iter().flatten().map(|&v| u32::from(v)));
        }
        Ok(Tensor::from_vec(
            values,
            (rows.len(), CELLS as usize, 3),
            &self.device,
        )?)
    }

    fn no_row(&self, r: usize) -> DetailFusionError {
        DetailFusionError::Variant(format!("toy world: no image row {r} (of {})", self.len()))
    }

    /// The device that [`ToyData::pixels`] puts tensors on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A stable key per row of `pixels` (the scene's hex key), for [`crate::vit_cache`].
    pub fn keys(&self) -> Vec<String> {
        let mut keys = vec![String::new(); self.index.len()];
        for (key, &row) in &self.index {
            keys[row] = format!("{key:032x}");
        }
        keys
    }

    /// Row of a scene.
    pub fn row(&self, scene: &Scene) -> usize {
        self.index[&scene.key()]
    }

    fn split(&self, split: CirrSplit) -> &df_data::toy::ToySplit {
        // `ToyWorld::generate` always makes all three splits.
        self.world.split(split).expect("toy worlds have every split")
    }

    /// For each of `rows` (rows of `pixels`), the positions in `rows` of the images one edit
    /// away from it: the other image of its edit pairs, and the other members (reference,
    /// target, negatives) of the training queries it belongs to.
    pub fn partners(&self, rows: &[usize]) -> Vec<Vec<usize>> {
        let pos: HashMap<usize, usize> = rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        let mut out = vec![Vec::new(); rows.len()];
        let mut link = |scenes: &[&Scene]| {
            let group: Vec<usize> = scenes
                .iter()
                .filter_map(|s| self.index.get(&s.key()).and_then(|r| pos.get(r)).copied())
                .collect();
            for &a in &group {
                out[a].extend(group.iter().copied().filter(|&b| b != a));
            }
        };
        for p in &self.world.edit_pairs {
            link(&[&p.original, &p.edited]);
        }
        let train = self.split(CirrSplit::Train);
        for q in &train.queries {
            let group: Vec<&Scene> = q.members.iter().map(|&m| &train.images[m].scene).collect();
            link(&group);
        }
        for v in &mut out {
            v.sort_unstable();
            v.dedup();
        }
        out
    }

    /// Rows of the images used in training (train split and edit pairs).
    pub fn train_rows(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = self
            .split(CirrSplit::Train)
            .images
            .iter()
            .map(|i| self.row(&i.scene))
            .collect();
        rows.extend(
            self.world
                .edit_pairs
                .iter()
                .flat_map(|p| [self.row(&p.original), self.row(&p.edited)]),
        );
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// Stage-1 triplets (atomic edits) and stage-2/3 triplets (composed train queries).
    pub fn items(&self) -> (Vec<TrainItem>, Vec<TrainItem>) {
        let edits = self
            .world
            .edit_pairs
            .iter()
            .map(|p| TrainItem {
                reference: self.row(&p.original),
                target: self.row(&p.edited),
                text: p.instruction.clone(),
                negatives: vec![],
            })
            .collect();
        let train = self.split(CirrSplit::Train);
        let queries = train
            .queries
            .iter()
            .map(|q| TrainItem {
                reference: self.row(&train.images[q.reference].scene),
                target: self.row(&train.images[q.target].scene),
                text: q.caption.clone(),
                negatives: q
                    .members
                    .iter()
                    .filter(|&&m| m != q.reference && m != q.target)
                    .map(|&m| self.row(&train.images[m].scene))
                    .collect(),
            })
            .collect();
        (edits, queries)
    }
}

fn data_err(e: df_data::DataError) -> DetailFusionError {
    DetailFusionError::Variant(format!("toy world: {e}"))
}

/// Frozen ViT features of every row of `data`, `[T, W]` each.
pub fn vit_features(model: &DetailFusion, data: &ToyData) -> Result<Vec<Tensor>> {
    let rows: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(128) {
        let f = model.vision_features(&data.pixels(chunk)?)?;
        for i in 0..chunk.len() {
            out.push(f.get(i)?);
        }
    }
    Ok(out)
}

/// Composed-query scores `[queries][split images]` of `model` on a split.
pub fn query_scores(
    model: &DetailFusion,
    data: &ToyData,
    feats: &[Tensor],
    split: CirrSplit,
) -> Result<Vec<Vec<f32>>> {
    let s = data.split(split);
    let rows: Vec<usize> = s.images.iter().map(|i| data.row(&i.scene)).collect();
    let mut gallery = vec![];
    for chunk in rows.chunks(128) {
        let f: Vec<&Tensor> = chunk.iter().map(|&r| &feats[r]).collect();
        gallery.push(model.encode_image_embeds(&Tensor::stack(&f, 0)?)?);
    }
    let tokens = Tensor::cat(&gallery.iter().map(|g| &g.tokens).collect::<Vec<_>>(), 0)?;
    let gm_tokens = gallery
        .iter()
        .map(|g| g.gm_tokens.clone())
        .collect::<Option<Vec<_>>>()
        .map(|v| Tensor::cat(&v, 0))
        .transpose()?;
    let gallery = crate::GalleryFeatures { tokens, gm_tokens };
    let mut scores: Vec<Vec<f32>> = vec![];
    for chunk in s.queries.chunks(64) {
        let refs: Vec<&Tensor> = chunk.iter().map(|q| &feats[rows[q.reference]]).collect();
        let texts: Vec<&str> = chunk.iter().map(|q| q.caption.as_str()).collect();
        let tb = data.text.encode_batch(&texts, model.device())?;
        let q = model.encode_query_embeds(&Tensor::stack(&refs, 0)?, &tb.input_ids, &tb.attention_mask)?;
        scores.extend(model.score(&q, &gallery)?.to_vec2::<f32>()?);
    }
    Ok(scores)
}

/// CIRR-style metrics of `model` on a split (gallery = the split's images, reference removed).
pub fn evaluate(
    model: &DetailFusion,
    data: &ToyData,
    feats: &[Tensor],
    split: CirrSplit,
) -> Result<CirrMetrics> {
    split_metrics(data, split, &query_scores(model, data, feats, split)?)
}

/// CIRR-style metrics of `scores: [queries][split images]` (from [`query_scores`]).
pub fn split_metrics(data: &ToyData, split: CirrSplit, scores: &[Vec<f32>]) -> Result<CirrMetrics> {
    let s = data.split(split);
    let names: Vec<&str> = s.images.iter().map(|i| i.name.as_str()).collect();
    let queries: Vec<CirrQuery> = s
        .queries
        .iter()
        .map(|q| CirrQuery {
            pair_id: q.pair_id as i64,
            reference: names[q.reference].to_string(),
            target: Some(names[q.target].to_string()),
            members: q.members.iter().map(|&m| names[m].to_string()).collect(),
        })
        .collect();
    cirr_val_metrics(&queries, &names, scores)
        .map_err(|e| DetailFusionError::Variant(format!("evaluation: {e}")))
}

/// How often one kind of hard negative outscores its query's target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EditWins {
    /// The edit that turns the target into the negative ([`df_data::toy::Edit::kind`]).
    pub kind: &'static str,
    /// Negatives of this kind over the split's queries.
    pub negatives: usize,
    /// Of those, how many score at least as high as the target.
    pub wins: usize,
}

/// Per kind of edit, how often a query's hard negative scores at least as high as its target,
/// from `scores: [queries][split images]` ([`query_scores`] or [`caption_scores`]). A kind
/// near 50 % is one the scores cannot see.
pub fn negative_wins_by_edit(data: &ToyData, split: CirrSplit, scores: &[Vec<f32>]) -> Result<Vec<EditWins>> {
    let s = data.split(split);
    if scores.len() != s.queries.len() || scores.iter().any(|r| r.len() != s.images.len()) {
        return Err(DetailFusionError::Variant(format!(
            "scores: expected {} rows of {} images",
            s.queries.len(),
            s.images.len()
        )));
    }
    let mut out: Vec<EditWins> = df_data::toy::Edit::KINDS
        .iter()
        .map(|&kind| EditWins {
            kind,
            negatives: 0,
            wins: 0,
        })
        .collect();
    for (q, row) in s.queries.iter().zip(scores) {
        for n in &q.negatives {
            let k = out
                .iter_mut()
                .find(|e| e.kind == n.edit.kind())
                .expect("every kind is listed");
            k.negatives += 1;
            k.wins += usize::from(row[n.image] >= row[q.target]);
        }
    }
    Ok(out)
}

/// Caption-to-image scores `[queries][split images]` of a (stage-0) BLIP-2: each query's *target
/// caption* against every image of the split, max over query tokens. What the backbone can tell
/// apart when the text says everything.
pub fn caption_scores(
    blip2: &df_encoders::Blip2Model,
    data: &ToyData,
    split: CirrSplit,
) -> Result<Vec<Vec<f32>>> {
    let s = data.split(split);
    let rows: Vec<usize> = s.images.iter().map(|i| data.row(&i.scene)).collect();
    let mut tokens = vec![];
    for chunk in rows.chunks(128) {
        tokens.push(blip2.image_features(&data.pixels(chunk)?)?);
    }
    let tokens = Tensor::cat(&tokens, 0)?; // [N, Q, P]
    let mut scores = vec![];
    for chunk in s.queries.chunks(64) {
        let caps: Vec<String> = chunk.iter().map(|q| s.images[q.target].scene.caption()).collect();
        let caps: Vec<&str> = caps.iter().map(|c| c.as_str()).collect();
        let tb = data.text.encode_batch(&caps, data.device())?;
        let text = blip2.text_features(&tb.input_ids, &tb.attention_mask)?; // [B, P]
        let batch = df_encoders::cir::max_token_scores(&text, &tokens)?; // [B, N]
        scores.extend(batch.to_vec2::<f32>()?);
    }
    Ok(scores)
}

/// What a toy run produced.
#[derive(Debug, Clone, Serialize)]
pub struct ToyReport {
    /// Test metrics after each stage that ran (`"blip2"` is zero-shot after stage 0).
    pub test: Vec<(String, CirrMetrics)>,
    /// Wall-clock seconds per phase.
    pub seconds: Vec<(String, f64)>,
}

/// Runs stages 0–3 of `preset` and writes the final model to `out/model` (plus the stage-0
/// BLIP-2 checkpoint to `out/blip2`, each stage's result to `out/stage<N>/model`, and the
/// tokenizer next to each). Step lines go to `log` as JSON; for progress bars, stage
/// selection and resuming see [`crate::training::toy_stages::run_toy_stages`].
pub fn run(preset: &ToyPreset, out: &Path, log: &dyn Fn(&str)) -> Result<(DetailFusion, ToyReport)> {
    let opts = crate::training::toy_stages::ToyRunOptions {
        stages: vec![0, 1, 2, 3],
        resume: false,
        reporter: None,
        log,
    };
    let (model, report) = crate::training::toy_stages::run_toy_stages(preset, out, &opts)?;
    let model = model.ok_or_else(|| DetailFusionError::Variant("the toy run trained no model".into()))?;
    Ok((model, report))
}

pub(crate) fn write_tokenizer(data: &ToyData, dir: &Path) -> Result<()> {
    let path = dir.join("tokenizer.json");
    data.text
        .tokenizer()
        .save(&path, false)
        .map_err(|e| DetailFusionError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        })
}

/// At most `max` training rows (0: all), an even subsample. With hard negatives, half of them
/// are the subsample and the other half one near-duplicate of each, so that pairs stay together.
fn stage0_rows(data: &ToyData, max: usize, hard_negatives: bool) -> Vec<usize> {
    let all = data.train_rows();
    if max == 0 || all.len() <= max {
        return all;
    }
    let seeds = if hard_negatives { max.div_ceil(2) } else { max };
    let step = all.len() as f64 / seeds as f64;
    let seeds = (0..seeds).map(|i| (i as f64 * step) as usize);
    if !hard_negatives {
        return seeds.map(|i| all[i]).collect();
    }
    let partners = data.partners(&all);
    let mut taken = vec![false; all.len()];
    let mut rows = Vec::with_capacity(max);
    for i in seeds {
        for j in std::iter::once(i).chain(partners[i].iter().copied().find(|&j| !taken[j])) {
            if !taken[j] && rows.len() < max {
                taken[j] = true;
                rows.push(all[j]);
            }
        }
    }
    rows
}

/// Stage 0 on an even subsample of the training images; writes a Hugging Face checkpoint
/// (with the tokenizer) to `dir`.
pub(crate) fn pretrain(
    preset: &ToyPreset,
    data: &ToyData,
    blip2: &Blip2Config,
    run_dir: &Path,
    dir: &Path,
    hooks: &Hooks<ItcPretrainer>,
) -> Result<()> {
    let rows = stage0_rows(data, preset.stage0_max_images, preset.stage0_hard_negatives);
    let dev = data.device().clone();
    let mut pre = ItcPretrainer::new(
        blip2.clone(),
        data.pixels(&rows)?,
        rows.iter().map(|&r| data.captions[r].clone()).collect(),
        data.text.clone(),
        &dev,
    )?;
    if preset.stage0_hard_negatives {
        pre = pre.with_hard_negatives(data.partners(&rows))?;
    }
    if preset.stage0_scene.weight > 0.0 {
        pre = pre.with_scene_parsing(data.cell_labels(&rows)?, &preset.stage0_scene)?;
    }
    train(&pre, Stage::Itc, rows.len(), &preset.stage0, run_dir, None, hooks)?;
    pre.save_hf(dir)?;
    write_tokenizer(data, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage0_subsample_keeps_near_duplicates_together() {
        let mut cfg = ToyConfig::default().with_counts(16, 2, 2);
        cfg.ipr2pr = 16;
        let data = ToyData::generate(&cfg, &Device::Cpu).unwrap();
        let all = data.train_rows();
        let max = all.len() / 3;
        let plain = stage0_rows(&data, max, false);
        assert_eq!(plain.len(), max);
        let hard = stage0_rows(&data, max, true);
        assert!(hard.len() <= max && hard.len() > max / 2);
        let mut unique = hard.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), hard.len(), "a row taken twice");
        // Most rows find a partner inside the subsample; without pairing few do.
        let paired = |rows: &[usize]| data.partners(rows).iter().filter(|p| !p.is_empty()).count();
        assert!(
            paired(&hard) * 10 >= hard.len() * 9,
            "{} of {}",
            paired(&hard),
            hard.len()
        );
        assert!(paired(&plain) < paired(&hard));
        assert_eq!(stage0_rows(&data, 0, true), all);
    }

    #[test]
    fn scene_captions_are_never_truncated() {
        let mut cfg = ToyConfig::default().with_counts(40, 2, 2);
        cfg.min_objects = 4;
        let data = ToyData::generate(&cfg, &Device::Cpu).unwrap();
        let tok = df_data::toy::build_tokenizer().unwrap();
        let longest = data.captions.iter().max_by_key(|c| c.len()).unwrap();
        let full = tok.encode(longest.as_str(), true).unwrap().len();
        assert!(full > 32, "{full} tokens: {longest}");
        let ids = data.text.encode(longest, &Device::Cpu).unwrap().input_ids;
        assert_eq!(ids.dim(1).unwrap(), full, "{longest}");
        // Pixels come back preprocessed, as many rows as asked, and a bad row is named.
        let px = data.pixels(&[0, 1]).unwrap();
        assert_eq!(px.dims(), &[2, 3, 64, 64]);
        let err = data.pixels(&[data.len()]).unwrap_err().to_string();
        assert!(err.contains(&format!("row {}", data.len())), "{err}");
    }

    #[test]
    fn negative_wins_count_by_edit_kind() {
        let data = ToyData::generate_splits(
            &ToyConfig::default().with_counts(4, 4, 30),
            &[CirrSplit::Test1],
            false,
            &Device::Cpu,
        )
        .unwrap();
        let s = data.split(CirrSplit::Test1);
        // The target scores 1; move negatives 2 (they win), every other negative 0.
        let scores: Vec<Vec<f32>> = s
            .queries
            .iter()
            .map(|q| {
                let mut row = vec![0.0; s.images.len()];
                row[q.target] = 1.0;
                for n in q.negatives.iter().filter(|n| n.edit.kind() == "move") {
                    row[n.image] = 2.0;
                }
                row
            })
            .collect();
        let wins = negative_wins_by_edit(&data, CirrSplit::Test1, &scores).unwrap();
        let total: usize = wins.iter().map(|w| w.negatives).sum();
        let expected: usize = s.queries.iter().map(|q| q.negatives.len()).sum();
        assert_eq!(total, expected);
        for w in &wins {
            let want = if w.kind == "move" { w.negatives } else { 0 };
            assert_eq!(w.wins, want, "{w:?}");
        }
        assert!(wins.iter().any(|w| w.kind == "move" && w.negatives > 0));
        // Scores of the wrong shape are refused, not indexed out of bounds.
        let err = negative_wins_by_edit(&data, CirrSplit::Test1, &scores[1..]).unwrap_err();
        assert!(err.to_string().contains("expected 30 rows"), "{err}");
    }
}
