//! Staged training end to end on tiny data: the benchmark path on a toy world written in the
//! CIRR and IPr2Pr layouts (stage by stage, validation, resume, bf16 frozen ViT, the test1
//! submission), and the toy pipeline stage by stage.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use common::{hf, tmpdir};
use detailfusion::benchmarks::cirr_submission;
use detailfusion::data::cirr::{CirrDataset, CirrSplit};
use detailfusion::data::toy::{ToyConfig, ToyWorld};
use detailfusion::data::LoadOptions;
use detailfusion::toy::ToyPreset;
use detailfusion::train::trainer::{read_state, BEST, LATEST};
use detailfusion::train::{Benchmark, Precision, ProgressReporter, Reporter, Schedule, Stage, StageConfig};
use detailfusion::training::real::{train_benchmark_stage, BenchmarkRun};
use detailfusion::training::stages::{parse_stages, stage_dir, stage_start, StageStart, MODEL_DIR};
use detailfusion::training::toy_stages::{run_toy_stages, ToyRunOptions};
use detailfusion::training::vision::FrozenVision;
use detailfusion::{Blip2Config, DetailFusion, DetailFusionConfig, TextProcessor};

fn tiny(stage: Stage, epochs: usize) -> StageConfig {
    let mut c = StageConfig::sprc(Benchmark::Cirr, stage);
    c.trainer.epochs = epochs;
    c.trainer.batch_size = 4;
    c.trainer.checkpoint_every = Some(2);
    c.trainer.optimizer.lr = 1e-3;
    c.trainer.optimizer.schedule = Schedule::CosineWarmup { warmup_steps: 2 };
    c.precision = Precision::F32;
    c
}

fn model_config() -> DetailFusionConfig {
    let mut cfg = DetailFusionConfig::from_blip2(
        Blip2Config::from_file(common::enc_fixtures().join("hf/config.json")).unwrap(),
    );
    cfg.compositor.num_attention_heads = 4;
    cfg
}

fn world(root: &Path) -> (PathBuf, PathBuf) {
    let w = ToyWorld::generate(&ToyConfig::default().with_counts(16, 6, 6).with_seed(5)).unwrap();
    let written = w.write(root.join("world")).unwrap();
    (written.cirr_root, written.ipr2pr_root)
}

fn run<'a>(cirr: &Path, ipr2pr: Option<&Path>, out: &Path, rep: &'a dyn Reporter) -> BenchmarkRun<'a> {
    BenchmarkRun {
        benchmark: Benchmark::Cirr,
        data_root: cirr.into(),
        ipr2pr_root: ipr2pr.map(Into::into),
        blip2: hf(),
        model: Some(model_config()),
        tokenizer: None,
        out: out.into(),
        device: Device::Cpu,
        reporter: Some(rep),
        log: &|_| {},
    }
}

#[test]
fn benchmark_stages_on_the_cirr_layout() {
    let root = tmpdir("train-cirr");
    let (cirr, ipr2pr) = world(&root);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let rep = ProgressReporter::new()
        .with_bar(false)
        .with_sink(move |l| sink.lock().unwrap().push(l.to_string()));
    let out = root.join("run");
    let r = run(&cirr, Some(&ipr2pr), &out, &rep);

    // Stage 1 on the IPr2Pr layout, frozen ViT in bf16 (trainable weights stay f32).
    let mut c1 = tiny(Stage::Di, 1);
    c1.precision = Precision::Bf16;
    let s1 = train_benchmark_stage(&r, &c1, false).unwrap();
    assert!(s1.state.global_step > 0 && s1.epochs[0].val.is_none());
    let m1 = stage_dir(&out, Stage::Di).join(MODEL_DIR);
    assert!(m1.join("model.safetensors").is_file() && m1.join("tokenizer.json").is_file());
    assert!(out.join("vit_cache.safetensors").is_file());
    let loaded = DetailFusion::load(&m1, &Device::Cpu).unwrap();
    assert!(loaded.named_tensors().values().all(|t| t.dtype() == DType::F32));

    // Stage 2 starts from stage 1's model and validates on CIRR val every epoch.
    assert_eq!(
        stage_start(&out, Stage::Joint, false).unwrap(),
        StageStart::Previous(m1)
    );
    let s2 = train_benchmark_stage(&r, &tiny(Stage::Joint, 2), false).unwrap();
    assert_eq!(s2.epochs.len(), 2);
    assert!(s2
        .epochs
        .iter()
        .all(|e| e.val.is_some_and(|v| (0.0..=100.0).contains(&v))));
    let best = stage_dir(&out, Stage::Joint).join(BEST);
    assert!(best.join("model.safetensors").is_file());
    // Stage 3 starts from stage 2's best checkpoint.
    assert_eq!(
        stage_start(&out, Stage::Compositor, false).unwrap(),
        StageStart::Previous(best)
    );
    train_benchmark_stage(&r, &tiny(Stage::Compositor, 1), false).unwrap();
    let table = rep.summary_table();
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("stage2 epoch 2 done")));

    // The result writes both CIRR test1 server files in one call.
    let model_dir = stage_dir(&out, Stage::Compositor).join(MODEL_DIR);
    let model = DetailFusion::load(&model_dir, &Device::Cpu).unwrap();
    let text = TextProcessor::from_file(model_dir.join("tokenizer.json")).unwrap();
    let test = CirrDataset::load(&cirr, CirrSplit::Test1, &LoadOptions::default()).unwrap();
    let files = cirr_submission(&model, &text, &test, &root.join("sub"), "t", &|_| {}).unwrap();
    let recall: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.recall).unwrap()).unwrap();
    assert_eq!(recall["metric"], "recall");
    assert!(files.recall_subset.is_file());

    // Interrupted and resumed: the same number of steps as one run.
    let out2 = root.join("resumed");
    let r2 = run(&cirr, Some(&ipr2pr), &out2, &rep);
    let mut cut = tiny(Stage::Joint, 2);
    cut.validate = false;
    cut.trainer.max_steps = Some(3);
    let s = train_benchmark_stage(&r2, &cut, false).unwrap();
    assert!(s.stopped_early);
    assert!(!stage_dir(&out2, Stage::Joint).join(MODEL_DIR).exists());
    let st = read_state(&stage_dir(&out2, Stage::Joint).join(LATEST)).unwrap();
    assert_eq!(st.global_step, 2, "checkpoint every 2 steps");
    cut.trainer.max_steps = None;
    let s = train_benchmark_stage(&r2, &cut, true).unwrap();
    assert_eq!(s.state.global_step, s2.state.global_step);
    assert!(stage_dir(&out2, Stage::Joint).join(MODEL_DIR).is_dir());
}

#[test]
fn benchmark_stage_errors_are_clear() {
    let root = tmpdir("train-cirr-err");
    let (cirr, _) = world(&root);
    let rep = ProgressReporter::new().with_bar(false).with_sink(|_| {});
    let r = run(&cirr, None, &root.join("run"), &rep);
    let e = train_benchmark_stage(&r, &tiny(Stage::Di, 1), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--ipr2pr-root"), "{e}");
    let e = train_benchmark_stage(&r, &tiny(Stage::Joint, 1), true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no checkpoint") && e.contains("checkpoint-latest"),
        "{e}"
    );
    let mut r = run(&cirr, None, &root.join("run2"), &rep);
    r.blip2 = String::new();
    let e = train_benchmark_stage(&r, &tiny(Stage::Joint, 1), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--blip2"), "{e}");
    let e = parse_stages("4", false).unwrap_err().to_string();
    assert!(e.contains("--stage 4") && e.contains("1, 2, 3"), "{e}");
    assert_eq!(parse_stages("all", true).unwrap(), vec![0, 1, 2, 3]);
}

#[test]
fn bf16_frozen_vit_matches_f32() {
    let model = DetailFusion::from_blip2(&hf(), Some(model_config()), &Device::Cpu).unwrap();
    let s = model.config().blip2.vision_config.image_size;
    let px = candle_core::Tensor::randn(0f32, 1.0, (2, 3, s, s), &Device::Cpu).unwrap();
    let f32_feats = FrozenVision::new(&model, DType::F32)
        .unwrap()
        .features(&px)
        .unwrap();
    let ref_feats = model.vision_features(&px).unwrap();
    assert_eq!(common::max_diff(&f32_feats, &ref_feats), 0.0);
    let v = FrozenVision::new(&model, DType::BF16).unwrap();
    let bf = v.features(&px).unwrap();
    assert_eq!(bf.dtype(), DType::BF16);
    let diff = common::max_diff(&bf.to_dtype(DType::F32).unwrap(), &ref_feats);
    assert!(diff < 0.1, "bf16 ViT differs by {diff}");
    assert_ne!(
        v.fingerprint(),
        FrozenVision::new(&model, DType::F32).unwrap().fingerprint()
    );
}

fn tiny_preset() -> ToyPreset {
    let mut p = ToyPreset::default();
    p.world = p.world.clone().with_counts(24, 6, 8);
    p.stage0_max_images = 64;
    for (s, batch) in [(&mut p.stage0, 16), (&mut p.stage2, 8), (&mut p.stage3, 8)] {
        s.epochs = 1;
        s.batch_size = batch;
        s.checkpoint_every = Some(1);
    }
    let s1 = p.stage1.as_mut().unwrap();
    s1.epochs = 1;
    s1.batch_size = 8;
    p
}

#[test]
fn toy_stages_one_at_a_time_and_resumed() {
    let out = tmpdir("train-toy");
    let preset = tiny_preset();
    let rep = ProgressReporter::new().with_bar(false).with_sink(|_| {});
    let opts = |stages: Vec<usize>, resume: bool| ToyRunOptions {
        stages,
        resume,
        reporter: Some(&rep as &dyn Reporter),
        log: &|_| {},
    };
    // Stage 1 before stage 0 is refused with a clear message.
    let e = run_toy_stages(&preset, &out, &opts(vec![1], false))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--stage 0"), "{e}");
    let (m, _) = run_toy_stages(&preset, &out, &opts(vec![0], false)).unwrap();
    assert!(m.is_none() && out.join("blip2/model.safetensors").is_file());
    let (m, report) = run_toy_stages(&preset, &out, &opts(vec![1], false)).unwrap();
    assert!(m.is_some() && report.test.iter().any(|(n, _)| n == "stage1"));
    assert!(stage_dir(&out, Stage::Di).join(MODEL_DIR).is_dir());
    // Stage 2 reads stage 1's result; then everything is finished and resume skips it all.
    let (_, report) = run_toy_stages(&preset, &out, &opts(vec![2, 3], false)).unwrap();
    assert_eq!(report.test.len(), 2);
    assert!(out.join(MODEL_DIR).join("model.safetensors").is_file());
    let (_, report) = run_toy_stages(&preset, &out, &opts(vec![0, 1, 2, 3], true)).unwrap();
    assert!(report.test.is_empty());
    assert_eq!(rep.runs().len(), 4);
}

#[test]
fn shipped_toy_preset_parses() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/toy/preset.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let preset: ToyPreset = detailfusion::train::config::parse_config(&p, &text).unwrap();
    // The file is `train --print-config`: the preset's defaults, every field written out.
    assert_eq!(preset, ToyPreset::default());
    // A typo is refused with the file and the field.
    let bad = text.replacen("\"batch_size\"", "\"batchsize\"", 1);
    let e = detailfusion::train::config::parse_config::<ToyPreset>(&p, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("preset.json") && e.contains("unknown field `batchsize`"),
        "{e}"
    );
}
