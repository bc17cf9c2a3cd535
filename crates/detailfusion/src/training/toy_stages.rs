//! The toy pipeline stage by stage: stage 0 (the stand-in BLIP-2) and stages 1–3, any of
//! them alone (reading the earlier stages' results from the output directory) or all in
//! order, with `--resume` continuing a stage from its `checkpoint-latest`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use df_data::cirr::CirrSplit;
use df_encoders::{Blip2Config, ImageProcessor};
use df_train::progress::stage_name;
use df_train::{train, Hooks, Reporter, Stage, TrainerConfig};

use super::stages::{stage_dir, stage_finished, stage_of, stage_start, StageStart, MODEL_DIR};
use crate::toy::{evaluate, pretrain, write_tokenizer, ToyData, ToyPreset, ToyReport};
use crate::{DetailFusion, DetailFusionConfig, DetailFusionError, Result, StageTrainer, TrainingData};

/// What to run.
pub struct ToyRunOptions<'a> {
    /// Stage numbers, in order (0 = the stand-in BLIP-2, 1–3 = DetailFusion's stages).
    pub stages: Vec<usize>,
    /// Continue each selected stage from its `checkpoint-latest` when it has one (stages
    /// already finished are skipped).
    pub resume: bool,
    /// Progress and metrics (`None`: step lines go to `log` as JSON, as before).
    pub reporter: Option<&'a dyn Reporter>,
    /// Log lines.
    pub log: &'a dyn Fn(&str),
}

/// The stage-0 BLIP-2 directory of a run.
pub fn blip2_dir(preset: &ToyPreset, out: &Path) -> PathBuf {
    preset
        .stage0_checkpoint
        .clone()
        .unwrap_or_else(|| out.join("blip2"))
}

fn stage_cfg(preset: &ToyPreset, stage: Stage) -> Option<&TrainerConfig> {
    match stage {
        Stage::Itc => Some(&preset.stage0),
        Stage::Di => preset.stage1.as_ref(),
        Stage::Joint => Some(&preset.stage2),
        Stage::Compositor => Some(&preset.stage3),
    }
}

/// Runs the selected stages of `preset` under `out`; returns the last model trained (if any
/// DetailFusion stage ran) and the report. The last model is also written to `out/model`.
pub fn run_toy_stages(
    preset: &ToyPreset,
    out: &Path,
    opts: &ToyRunOptions,
) -> Result<(Option<DetailFusion>, ToyReport)> {
    let log = opts.log;
    let dev = Device::Cpu;
    let mut seconds = vec![];
    let mut clock = std::time::Instant::now();
    let mut lap = |name: &str, seconds: &mut Vec<(String, f64)>| {
        seconds.push((name.to_string(), clock.elapsed().as_secs_f64()));
        clock = std::time::Instant::now();
    };
    let data = ToyData::generate(&preset.world, &dev)?;
    log(&format!(
        "world: {} images, vocab {}",
        data.captions.len(),
        data.text.vocab_size()
    ));
    lap("world", &mut seconds);

    let json_hook = |v: &serde_json::Value| log(&format!("{v}"));
    let on_step: Option<&dyn Fn(&serde_json::Value)> = match opts.reporter {
        Some(_) => None,
        None => Some(&json_hook),
    };
    let blip2_dir = blip2_dir(preset, out);
    let done0 = blip2_dir.join("model.safetensors").is_file();
    if opts.stages.contains(&0) && preset.stage0_checkpoint.is_none() && !(opts.resume && done0) {
        let mut blip2 = preset.blip2.clone();
        blip2.qformer_config.vocab_size = data.text.vocab_size();
        blip2.vision_config.image_size = preset.world.image_size as usize;
        let hooks = Hooks {
            validate: None,
            on_step,
            reporter: opts.reporter,
        };
        pretrain(preset, &data, &blip2, &out.join("stage0"), &blip2_dir, &hooks)?;
        lap("stage0", &mut seconds);
    } else if opts.stages.contains(&0) {
        log(&format!("stage 0: reusing {}", blip2_dir.display()));
    }
    let dl_stages: Vec<Stage> = opts.stages.iter().filter_map(|&n| stage_of(n)).collect();
    if dl_stages.is_empty() {
        return Ok((
            None,
            ToyReport {
                test: vec![],
                seconds,
            },
        ));
    }
    if !blip2_dir.join("config.json").is_file() {
        return Err(DetailFusionError::Variant(format!(
            "{} has no stage-0 BLIP-2: run --stage 0 (or all) first",
            blip2_dir.display()
        )));
    }
    let blip2 = Blip2Config::from_file(blip2_dir.join("config.json"))?;
    let mut cfg = preset
        .model
        .clone()
        .unwrap_or_else(|| DetailFusionConfig::from_blip2(blip2.clone()));
    cfg.blip2 = blip2.clone();
    cfg.compositor.hidden_size = blip2.image_text_hidden_size;
    cfg.image_processor = ImageProcessor::new(blip2.vision_config.image_size);
    let base = DetailFusion::from_blip2(&blip2_dir.to_string_lossy(), Some(cfg), &dev)?;
    // The frozen ViT runs once per scene; a rerun with the same backbone reads the cache.
    let pixels = |rows: &[usize]| -> Result<Tensor> { data.pixels(rows) };
    let cache = blip2_dir.join("vit_cache.safetensors");
    let feats = crate::vit_cache::cached_vit_features(&base, &data.keys(), &cache, &pixels)?;
    lap("vit_features", &mut seconds);
    let mut test = vec![];
    if opts.stages.contains(&1) && !opts.resume {
        let m = evaluate(&base, &data, &feats, CirrSplit::Test1)?;
        log(&format!("zero-shot test: {}", m.avg));
        test.push(("blip2".to_string(), m));
    }

    let (edits, queries) = data.items();
    let mut current: Option<DetailFusion> = None;
    let mut base = Some(base);
    // The first stage of this call may start from an earlier call's result on disk; later
    // ones continue in memory.
    let mut first = true;
    for stage in dl_stages {
        let name = stage_name(stage);
        let Some(tcfg) = stage_cfg(preset, stage) else {
            continue;
        };
        if opts.resume && stage_finished(out, stage) {
            log(&format!("{name}: finished earlier, skipped"));
            current = None;
            first = true;
            continue;
        }
        let resume = opts.resume && stage_dir(out, stage).join(df_train::trainer::LATEST).is_dir();
        let start = stage_start(out, stage, resume)?;
        let model = match (&start, current.take(), first) {
            (StageStart::Resume(d), _, _) => DetailFusion::load(d, &dev)?,
            (_, Some(m), _) => m,
            (StageStart::Previous(d), None, true) => DetailFusion::load(d, &dev)?,
            _ => base
                .take()
                .ok_or_else(|| DetailFusionError::Variant(format!("{name}: no model to start from")))?,
        };
        first = false;
        let items = if stage == Stage::Di {
            edits.clone()
        } else {
            queries.clone()
        };
        let needs = match stage {
            Stage::Di => model.di().is_some(),
            Stage::Compositor => model.compositor().is_some(),
            _ => true,
        };
        if !needs || items.is_empty() {
            current = Some(model);
            continue;
        }
        log(&format!("{name}: starting from {start:?}"));
        let td = TrainingData {
            items,
            image_feats: feats.clone(),
            text: data.text.clone(),
        };
        let trainer = StageTrainer::new(&model, &td, preset.losses.clone());
        // Stages 2 and 3 keep their best epoch on the val split (SPEC §4 criterion).
        let validate = |t: &StageTrainer| -> df_train::Result<f64> {
            evaluate(t.model(), &data, &feats, CirrSplit::Val)
                .map(|m| m.criterion)
                .map_err(|e| df_train::TrainError::Model(e.to_string()))
        };
        let validates = preset.validate && stage != Stage::Di;
        let hooks = Hooks {
            validate: validates.then_some(&validate as df_train::trainer::Validate<StageTrainer>),
            on_step,
            reporter: opts.reporter,
        };
        let resume_dir = match &start {
            StageStart::Resume(d) => Some(d.as_path()),
            _ => None,
        };
        let dir = stage_dir(out, stage);
        let summary = train(&trainer, stage, td.items.len(), tcfg, &dir, resume_dir, &hooks)?;
        drop(trainer);
        if summary.stopped_early {
            return Ok((Some(model), ToyReport { test, seconds }));
        }
        let best = dir.join(df_train::trainer::BEST);
        let model = if validates && best.is_dir() {
            DetailFusion::load(&best, &dev)?
        } else {
            model
        };
        let model_dir = dir.join(MODEL_DIR);
        model.save(&model_dir)?;
        write_tokenizer(&data, &model_dir)?;
        let m = evaluate(&model, &data, &feats, CirrSplit::Test1)?;
        log(&format!(
            "{name} test: R@1 {:.2} Rs@1 {:.2} avg {:.2}",
            m.recall_at1, m.recall_subset_at1, m.avg
        ));
        test.push((name.to_string(), m));
        lap(name, &mut seconds);
        current = Some(model);
    }
    let model = match current {
        Some(m) => m,
        None => match crate::training::stages::STAGES
            .iter()
            .rev()
            .find_map(|s| crate::training::stages::stage_result(out, *s))
        {
            Some(d) => DetailFusion::load(d, &dev)?,
            None => return Ok((None, ToyReport { test, seconds })),
        },
    };
    let model_dir = out.join(MODEL_DIR);
    model.save(&model_dir)?;
    write_tokenizer(&data, &model_dir)?;
    Ok((Some(model), ToyReport { test, seconds }))
}
