//! Progress reporting, JSONL metrics and stage config files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use df_train::progress::{format_duration, summary_table};
use df_train::{
    train, Benchmark, Hooks, Precision, ProgressReporter, Reporter, Stage, StageConfig, StageModel,
    TrainerConfig,
};

/// Least squares on a fixed design: `loss = mean((X w − y)²)` over the batch's rows.
struct Linear {
    w: Var,
    x: Tensor,
    y: Tensor,
}

impl Linear {
    fn new() -> Self {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .reshape((12, 2))
            .unwrap();
        let x = (x * 0.1).unwrap().sin().unwrap();
        let y = x
            .matmul(&Tensor::new(&[[1.5f32], [-0.5]], &dev).unwrap())
            .unwrap();
        Self {
            w: Var::zeros((2, 1), candle_core::DType::F32, &dev).unwrap(),
            x,
            y,
        }
    }
}

impl StageModel for Linear {
    fn trainable(&self, _stage: Stage) -> Vec<(String, Var)> {
        vec![("w".into(), self.w.clone())]
    }

    fn loss(&self, _stage: Stage, indices: &[usize]) -> df_train::Result<(Tensor, Vec<(String, f32)>)> {
        let ids = Tensor::new(
            indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        let x = self.x.index_select(&ids, 0)?;
        let y = self.y.index_select(&ids, 0)?;
        let loss = (x.matmul(self.w.as_tensor())? - y)?.sqr()?.mean_all()?;
        Ok((loss, vec![("part".into(), 0.5)]))
    }

    fn save(&self, dir: &Path) -> df_train::Result<()> {
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("w".to_string(), self.w.as_tensor().clone())]),
            dir.join("w.safetensors"),
        )?;
        Ok(())
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn cfg() -> TrainerConfig {
    let mut c = TrainerConfig {
        epochs: 3,
        batch_size: 4,
        ..Default::default()
    };
    c.optimizer.lr = 0.05;
    c.optimizer.schedule = df_train::Schedule::Constant;
    c
}

#[test]
fn plain_lines_jsonl_and_summary_table() {
    let m = Linear::new();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let rep = ProgressReporter::new()
        .with_bar(false)
        .with_interval(Duration::ZERO)
        .with_sink(move |l| sink.lock().unwrap().push(l.to_string()));
    let validate = |_: &Linear| Ok(1.0);
    let hooks = Hooks {
        validate: Some(&validate),
        reporter: Some(&rep as &dyn Reporter),
        ..Default::default()
    };
    let out_guard = tmp();
    let out = out_guard.path();
    let s = train(&m, Stage::Joint, 12, &cfg(), out, None, &hooks).unwrap();
    assert_eq!((s.state.global_step, s.epochs.len()), (9, 3));
    assert!(s.epochs[2].loss < s.epochs[0].loss);
    let lines = lines.lock().unwrap().clone();
    // A header, 9 step lines (interval 0), 3 epoch lines.
    assert!(
        lines[0].starts_with("stage2: 12 items, batch 4, 3 epochs x 3 steps"),
        "{lines:?}"
    );
    let steps: Vec<&String> = lines.iter().filter(|l| l.contains(" step ")).collect();
    assert_eq!(steps.len(), 9, "{lines:?}");
    assert!(steps[8].starts_with("stage2 step 9/9 ep 3/3 loss ") && steps[8].contains(" lr 5.00e-2 "));
    assert!(steps[0].contains("items/s ETA "), "{}", steps[0]);
    let epochs: Vec<&String> = lines.iter().filter(|l| l.contains(" epoch ")).collect();
    assert_eq!(epochs.len(), 3);
    assert!(
        epochs[0].contains("val 1.0000 (best 1.0000, saved)"),
        "{}",
        epochs[0]
    );
    assert!(!epochs[1].contains("saved"));

    // JSONL: one line per step and one per epoch, each with its kind.
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kind = |k: &str| rows.iter().filter(|r| r["kind"] == k).count();
    assert_eq!((kind("step"), kind("epoch"), rows.len()), (9, 3, 12));
    let step = rows.iter().find(|r| r["kind"] == "step").unwrap();
    for key in [
        "stage",
        "epoch",
        "step",
        "total_steps",
        "loss",
        "lr",
        "grad_norm",
        "items_per_s",
        "part",
    ] {
        assert!(step.get(key).is_some(), "step line lacks {key}: {step}");
    }
    let epoch = rows.iter().find(|r| r["kind"] == "epoch").unwrap();
    for key in [
        "epoch",
        "global_step",
        "loss",
        "val",
        "best",
        "is_best",
        "seconds",
        "items_per_s",
    ] {
        assert!(epoch.get(key).is_some(), "epoch line lacks {key}: {epoch}");
    }

    // The summary table has one row per finished run.
    let table = rep.summary_table();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("last loss") && rows[0].contains("items/s"));
    assert!(
        rows[1].starts_with("stage2") && rows[1].contains("1.0000"),
        "{table}"
    );
    assert_eq!(
        summary_table(&[("a", &s), ("b", &s)]).lines().count(),
        3,
        "one header and two rows"
    );
}

#[test]
fn plain_lines_are_rate_limited_and_bar_mode_prints_no_step_lines() {
    let m = Linear::new();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let rep = ProgressReporter::new()
        .with_bar(false)
        .with_interval(Duration::from_secs(3600))
        .with_sink(move |l| sink.lock().unwrap().push(l.to_string()));
    let hooks = Hooks {
        reporter: Some(&rep as &dyn Reporter),
        ..Default::default()
    };
    train(&m, Stage::Di, 12, &cfg(), tmp().path(), None, &hooks).unwrap();
    let lines = lines.lock().unwrap().clone();
    // The first and the last step only.
    assert_eq!(
        lines.iter().filter(|l| l.contains(" step ")).count(),
        2,
        "{lines:?}"
    );

    // With a bar (drawn to stderr, hidden when it is not a terminal) the sink only gets the
    // header; epoch lines go through the bar.
    let lines2 = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines2.clone();
    let rep = ProgressReporter::new()
        .with_bar(true)
        .with_sink(move |l| sink.lock().unwrap().push(l.to_string()));
    let hooks = Hooks {
        reporter: Some(&rep as &dyn Reporter),
        ..Default::default()
    };
    train(&Linear::new(), Stage::Di, 12, &cfg(), tmp().path(), None, &hooks).unwrap();
    assert_eq!(lines2.lock().unwrap().len(), 1);
    assert_eq!(rep.runs().len(), 1);
}

#[test]
fn durations_format() {
    assert_eq!(format_duration(5.2), "5s");
    assert_eq!(format_duration(185.0), "3m05s");
    assert_eq!(format_duration(3720.0), "1h02m");
    assert_eq!(format_duration(f64::NAN), "?");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err(path: &Path) -> String {
    StageConfig::from_file(path).unwrap_err().to_string()
}

#[test]
fn stage_configs_round_trip_in_json_and_toml() {
    let dir_guard = tmp();
    let dir = dir_guard.path();
    std::fs::create_dir_all(dir).unwrap();
    for b in [Benchmark::Cirr, Benchmark::FashionIq] {
        for s in [Stage::Di, Stage::Joint, Stage::Compositor] {
            let c = StageConfig::sprc(b, s);
            for ext in ["json", "toml"] {
                let p = dir.join(format!("{b:?}-{s:?}.{ext}"));
                c.to_file(&p).unwrap();
                assert_eq!(StageConfig::from_file(&p).unwrap(), c, "{}", p.display());
            }
        }
    }
    // Omitted fields take the defaults; only `stage` is required.
    let p = write(
        dir,
        "min.toml",
        "stage = \"compositor\"\n[trainer.optimizer]\nlr = 0.001\n",
    );
    let c = StageConfig::from_file(&p).unwrap();
    assert_eq!((c.trainer.optimizer.lr, c.trainer.optimizer.beta2), (1e-3, 0.98));
    assert_eq!((c.precision, c.validate), (Precision::Auto, true));
    assert_eq!(c.precision.frozen_dtype(&Device::Cpu), candle_core::DType::F32);
    assert_eq!(
        Precision::Bf16.frozen_dtype(&Device::Cpu),
        candle_core::DType::BF16
    );
}

#[test]
fn bad_stage_configs_name_the_file_and_the_field() {
    let dir_guard = tmp();
    let dir = dir_guard.path();
    let cases: [(&str, &str, &[&str]); 9] = [
        (
            "typo.json",
            r#"{"stage": "joint", "trainer": {"optimizer": {"lrr": 1}}}"#,
            &["typo.json", "trainer.optimizer", "unknown field `lrr`"],
        ),
        (
            "type.json",
            r#"{"stage": "joint", "trainer": {"batch_size": "big"}}"#,
            &["type.json", "trainer.batch_size", "invalid type"],
        ),
        (
            "stage.json",
            r#"{"stage": "four"}"#,
            &["stage.json", "`stage`", "unknown variant `four`"],
        ),
        (
            "missing.json",
            r#"{"trainer": {}}"#,
            &["missing.json", "missing field `stage`"],
        ),
        ("syntax.json", r#"{"stage": "joint",,}"#, &["syntax.json"]),
        (
            "lr.json",
            r#"{"stage": "joint", "trainer": {"optimizer": {"lr": -1}}}"#,
            &["lr.json", "`trainer.optimizer.lr`", "must be positive"],
        ),
        (
            "sched.json",
            r#"{"stage": "joint", "trainer": {"optimizer": {"schedule": {"kind": "one_cycle", "pct_start": 2, "div_factor": 1, "final_div_factor": 1}}}}"#,
            &["sched.json", "trainer.optimizer.schedule.pct_start", "in (0, 1]"],
        ),
        (
            "beta.toml",
            "stage = \"di\"\n[trainer.optimizer]\nbeta2 = 1.5\n",
            &["beta.toml", "trainer.optimizer.beta2"],
        ),
        (
            "ttype.toml",
            "stage = \"di\"\n[trainer]\nepochs = \"many\"\n",
            &["ttype.toml", "trainer.epochs", "invalid type"],
        ),
    ];
    for (name, text, wants) in cases {
        let e = err(&write(dir, name, text));
        for w in wants {
            assert!(e.contains(w), "{name}: `{e}` lacks `{w}`");
        }
    }
    let e = err(&dir.join("absent.json"));
    assert!(e.contains("absent.json"), "{e}");
}

#[test]
fn shipped_configs_are_sprc_defaults() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    for (dir, b) in [("cirr", Benchmark::Cirr), ("fashioniq", Benchmark::FashionIq)] {
        for (i, s) in [Stage::Di, Stage::Joint, Stage::Compositor]
            .into_iter()
            .enumerate()
        {
            let p = root.join(dir).join(format!("stage{}.json", i + 1));
            let c = StageConfig::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                c,
                StageConfig::sprc(b, s),
                "{} differs from StageConfig::sprc",
                p.display()
            );
        }
    }
}
