//! Stages 1–3 on the real benchmarks: IPr2Pr for stage 1, CIRR or Fashion IQ train for
//! stages 2 and 3, validation on their val split every epoch (the best checkpoint is kept by
//! SPEC §4's criterion). Images are read from the layouts df-data loads; each unique image
//! pays for the frozen ViT once (an on-disk cache under the output directory).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use df_data::cirr::{CirrDataset, CirrSplit};
use df_data::fashioniq::{Category, FashionIqDataset, FiqSplit};
use df_data::ipr2pr::Ipr2prDataset;
use df_data::{CirSample, Gallery, LoadOptions, QueryText, Rng};
use df_encoders::TextProcessor;
use df_train::progress::stage_name;
use df_train::{train, Benchmark, Hooks, Reporter, Stage, StageConfig, TrainSummary};

use super::stages::{copy_tokenizer, stage_dir, stage_start, StageStart, MODEL_DIR};
use super::vision::FrozenVision;
use crate::benchmarks::{evaluate_cirr_features, evaluate_fashioniq_features};
use crate::{
    DetailFusion, DetailFusionConfig, DetailFusionError, Result, StageTrainer, TrainItem, TrainingData,
};

/// Images per ViT batch.
const VIT_BATCH: usize = 32;

/// Everything a real-data stage needs besides its [`StageConfig`].
pub struct BenchmarkRun<'a> {
    /// CIRR or Fashion IQ.
    pub benchmark: Benchmark,
    /// The dataset root (CIRR: `captions/`, `image_splits/`, images; Fashion IQ: `captions/`,
    /// `image_splits/`, `images/`).
    pub data_root: PathBuf,
    /// The IPr2Pr root (folder layout) for stage 1.
    pub ipr2pr_root: Option<PathBuf>,
    /// The BLIP-2 checkpoint a stage starts from when no earlier stage left a model (any
    /// layout `Checkpoint::resolve` reads).
    pub blip2: String,
    /// Model options for a fresh start (variant, gallery mode, compositor); `None`: the
    /// defaults around the BLIP-2 config.
    pub model: Option<DetailFusionConfig>,
    /// `tokenizer.json`; default: the starting model's, else the BLIP-2 directory's.
    pub tokenizer: Option<PathBuf>,
    /// Output directory (see [`super::stages`]).
    pub out: PathBuf,
    /// Device.
    pub device: Device,
    /// Progress and metrics.
    pub reporter: Option<&'a dyn Reporter>,
    /// Log lines.
    pub log: &'a dyn Fn(&str),
}

fn err(msg: impl Into<String>) -> DetailFusionError {
    DetailFusionError::Variant(msg.into())
}

fn data_err(e: df_data::DataError) -> DetailFusionError {
    err(format!("data: {e}"))
}

/// The stage-1 IPr2Pr triplets, or stage 2/3's benchmark train split, as samples + gallery.
fn train_split(run: &BenchmarkRun, stage: Stage) -> Result<(Vec<CirSample>, Gallery, &'static str)> {
    let opts = LoadOptions::default();
    if stage == Stage::Di {
        let root = run
            .ipr2pr_root
            .as_ref()
            .ok_or_else(|| err("stage 1 trains on IPr2Pr: give its root (--ipr2pr-root)"))?;
        let (s, g) = Ipr2prDataset::load(root, &opts).map_err(data_err)?.to_cir();
        return Ok((s, g, "ipr2pr"));
    }
    match run.benchmark {
        Benchmark::Cirr => {
            let d = CirrDataset::load(&run.data_root, CirrSplit::Train, &opts).map_err(data_err)?;
            Ok((d.samples, d.gallery, "cirr"))
        }
        Benchmark::FashionIq => {
            let (mut samples, mut gallery) = (vec![], Gallery::new());
            for c in Category::ALL {
                let d =
                    FashionIqDataset::load(&run.data_root, c, FiqSplit::Train, &opts).map_err(data_err)?;
                for img in d.gallery.iter() {
                    gallery.insert(img.name.clone(), img.path.clone());
                }
                samples.extend(d.samples);
            }
            Ok((samples, gallery, "fashioniq"))
        }
    }
}

/// Triplets by gallery index. Fashion IQ texts are drawn once per run from SPRC's four
/// variants with `seed` (other datasets use their caption as is). Hard negatives are the
/// CIRR `img_set` members other than the reference and the targets (hard or soft with a
/// non-negative score); Fashion IQ has none.
pub fn train_items(samples: &[CirSample], gallery: &Gallery, seed: u64) -> Result<Vec<TrainItem>> {
    let mut rng = Rng::new(seed);
    samples
        .iter()
        .filter(|s| s.target.is_some())
        .map(|s| {
            let pos = |name: &str, role: &str| {
                gallery.position(name).ok_or_else(|| {
                    err(format!(
                        "pair {}: {role} image `{name}` is not in the split's image list",
                        s.pair_id
                    ))
                })
            };
            let text = match &s.text {
                QueryText::FashionIq(_) => s.text.training_text(&mut rng),
                QueryText::Single(t) => t.clone(),
            };
            let target = s.target.as_deref().unwrap_or_default();
            let soft_target = |m: &str| s.target_soft.iter().any(|(n, v)| n == m && *v >= 0.0);
            let members = s.candidates.iter().flat_map(|c| &c.members);
            let negatives = members
                .filter(|m| *m != &s.reference && *m != target && !soft_target(m))
                .map(|m| pos(m, "candidate-set"))
                .collect::<Result<Vec<_>>>()?;
            Ok(TrainItem {
                reference: pos(&s.reference, "reference")?,
                target: pos(target, "target")?,
                text,
                negatives,
            })
        })
        .collect()
}

/// ViT features of every gallery image, through the cache `<out>/vit_cache.safetensors`
/// (keys: `<prefix>/<name>`).
pub fn gallery_vit(
    model: &DetailFusion,
    vision: &FrozenVision,
    gallery: &Gallery,
    prefix: &str,
    cache: &Path,
    log: &dyn Fn(&str),
) -> Result<Vec<Tensor>> {
    let keys: Vec<String> = gallery.names().map(|n| format!("{prefix}/{n}")).collect();
    let paths = gallery.paths();
    let proc = &model.config().image_processor;
    let pixels = |idx: &[usize]| -> Result<Tensor> {
        let batch: Vec<&PathBuf> = idx.iter().map(|&i| &paths[i]).collect();
        Ok(proc.preprocess_batch(&batch, model.device())?)
    };
    vision.cached_features(&keys, cache, VIT_BATCH, &pixels, log)
}

enum ValData {
    Cirr(CirrDataset, Vec<Tensor>),
    Fiq(Vec<FashionIqDataset>, Vec<Vec<Tensor>>),
}

fn val_data(
    run: &BenchmarkRun,
    model: &DetailFusion,
    vision: &FrozenVision,
    cache: &Path,
) -> Result<ValData> {
    let opts = LoadOptions::default();
    match run.benchmark {
        Benchmark::Cirr => {
            let d = CirrDataset::load(&run.data_root, CirrSplit::Val, &opts).map_err(data_err)?;
            let v = gallery_vit(model, vision, &d.gallery, "cirr", cache, run.log)?;
            Ok(ValData::Cirr(d, v))
        }
        Benchmark::FashionIq => {
            let (mut ds, mut vs) = (vec![], vec![]);
            for c in Category::ALL {
                let d = FashionIqDataset::load(&run.data_root, c, FiqSplit::Val, &opts).map_err(data_err)?;
                vs.push(gallery_vit(
                    model,
                    vision,
                    &d.gallery,
                    "fashioniq",
                    cache,
                    run.log,
                )?);
                ds.push(d);
            }
            Ok(ValData::Fiq(ds, vs))
        }
    }
}

fn load_model(start: &StageStart, run: &BenchmarkRun) -> Result<DetailFusion> {
    match start {
        StageStart::Resume(d) | StageStart::Previous(d) => DetailFusion::load(d, &run.device),
        StageStart::Fresh if run.blip2.is_empty() => Err(err(format!(
            "no earlier stage result under {}: give the BLIP-2 checkpoint to start from (--blip2)",
            run.out.display()
        ))),
        StageStart::Fresh => DetailFusion::from_blip2(&run.blip2, run.model.clone(), &run.device),
    }
}

fn tokenizer_path(start: &StageStart, run: &BenchmarkRun) -> Result<PathBuf> {
    if let Some(t) = &run.tokenizer {
        return Ok(t.clone());
    }
    let candidates = match start {
        StageStart::Resume(d) | StageStart::Previous(d) => vec![d.join("tokenizer.json")],
        StageStart::Fresh => vec![],
    };
    candidates
        .into_iter()
        .chain([Path::new(&run.blip2).join("tokenizer.json")])
        .find(|p| p.is_file())
        .ok_or_else(|| err("no tokenizer.json beside the model or the BLIP-2 checkpoint: give --tokenizer"))
}

/// Runs one stage on a benchmark: builds or loads the model (see [`stage_start`]), encodes
/// every image once, trains with validation, and writes `<out>/stage<N>/model`.
pub fn train_benchmark_stage(run: &BenchmarkRun, cfg: &StageConfig, resume: bool) -> Result<TrainSummary> {
    let stage = cfg.stage;
    if stage == Stage::Itc {
        return Err(err("stage 0 (ITC) exists for the toy world only"));
    }
    let start = stage_start(&run.out, stage, resume)?;
    (run.log)(&format!("{}: starting from {start:?}", stage_name(stage)));
    if stage == Stage::Compositor && start == StageStart::Fresh {
        (run.log)("warning: stage 3 on branches no earlier stage trained");
    }
    let model = load_model(&start, run)?;
    let tok = tokenizer_path(&start, run)?;
    let text = TextProcessor::from_file(&tok)?.with_max_txt_len(model.config().max_txt_len)?;
    let dtype = cfg.precision.frozen_dtype(&run.device);
    let vision = FrozenVision::new(&model, dtype)?;
    let cache = run.out.join("vit_cache.safetensors");

    let (samples, gallery, prefix) = train_split(run, stage)?;
    let items = train_items(&samples, &gallery, cfg.trainer.seed)?;
    if items.is_empty() {
        return Err(err(format!(
            "{}: no training triplet with a target",
            stage_name(stage)
        )));
    }
    (run.log)(&format!(
        "{}: {} triplets over {} images",
        stage_name(stage),
        items.len(),
        gallery.len()
    ));
    let image_feats = gallery_vit(&model, &vision, &gallery, prefix, &cache, run.log)?;
    let val = if cfg.validate {
        Some(val_data(run, &model, &vision, &cache)?)
    } else {
        None
    };
    let data = TrainingData {
        items,
        image_feats,
        text: text.clone(),
    };
    let trainer = StageTrainer::new(&model, &data, cfg.losses.clone());
    let validate = |t: &StageTrainer| -> df_train::Result<f64> {
        let m = t.model();
        let value = match val.as_ref() {
            Some(ValData::Cirr(d, v)) => evaluate_cirr_features(m, &text, d, v).map(|r| r.criterion),
            Some(ValData::Fiq(d, v)) => evaluate_fashioniq_features(m, &text, d, v).map(|r| r.criterion()),
            None => Ok(0.0),
        };
        value.map_err(|e| df_train::TrainError::Model(e.to_string()))
    };
    let hooks = Hooks {
        validate: val
            .is_some()
            .then_some(&validate as df_train::trainer::Validate<StageTrainer>),
        on_step: None,
        reporter: run.reporter,
    };
    let dir = stage_dir(&run.out, stage);
    let resume_dir = match &start {
        StageStart::Resume(d) => Some(d.as_path()),
        _ => None,
    };
    let summary = train(
        &trainer,
        stage,
        data.items.len(),
        &cfg.trainer,
        &dir,
        resume_dir,
        &hooks,
    )?;
    if !summary.stopped_early {
        let model_dir = dir.join(MODEL_DIR);
        model.save(&model_dir)?;
        copy_tokenizer(&tok, &model_dir)?;
        for d in [
            dir.join(df_train::trainer::BEST),
            dir.join(df_train::trainer::LATEST),
        ] {
            if d.is_dir() {
                copy_tokenizer(&tok, &d)?;
            }
        }
        cfg.to_file(dir.join("stage.json"))
            .map_err(|e| err(format!("writing stage.json: {e}")))?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use df_data::{CandidateSet, Entry};

    use super::*;

    fn gallery(names: &[&str]) -> Gallery {
        let mut g = Gallery::new();
        for n in names {
            g.insert(n.to_string(), PathBuf::from(format!("{n}.png")));
        }
        g
    }

    fn sample(members: &[&str], soft: &[(&str, f32)]) -> CirSample {
        CirSample {
            pair_id: 9,
            source: Entry::File,
            reference: "r".into(),
            text: QueryText::Single("make it blue".into()),
            target: Some("t".into()),
            target_soft: soft.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            candidates: Some(CandidateSet {
                id: 1,
                members: members.iter().map(|m| m.to_string()).collect(),
                reference_rank: None,
                target_rank: None,
            }),
        }
    }

    #[test]
    fn cirr_negatives_are_the_candidate_set_minus_reference_and_targets() {
        let g = gallery(&["r", "t", "a", "b", "c"]);
        let s = sample(&["r", "t", "a", "b", "c"], &[("t", 1.0), ("b", 0.5), ("c", -1.0)]);
        let items = train_items(&[s], &g, 0).unwrap();
        // `b` may be a target too (soft score 0.5); `c` is marked not one.
        assert_eq!(items[0].negatives, vec![2, 4]);
        assert_eq!((items[0].reference, items[0].target), (0, 1));
    }

    #[test]
    fn an_unknown_candidate_is_named() {
        let s = sample(&["r", "t", "ghost"], &[]);
        let err = train_items(&[s], &gallery(&["r", "t"]), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pair 9") && err.contains("`ghost`"), "{err}");
    }
}
