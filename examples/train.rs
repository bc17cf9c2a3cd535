//! Trains DetailFusion: the toy world end to end, or stage by stage on CIRR / Fashion IQ.
//!
//! ```sh
//! # the toy world end to end: stage 0 (tiny BLIP-2), stages 1-3, test metrics
//! cargo run --release --example train -- --preset toy --out runs/toy
//! # one stage at a time (each reads the previous stage's result under --out), or resume
//! cargo run --release --example train -- --stage 0 --out runs/toy
//! cargo run --release --example train -- --stage 1 --out runs/toy
//! cargo run --release --example train -- --stage 2 --out runs/toy --resume
//! # a preset written to JSON, edited, and run again
//! cargo run --release --example train -- --preset toy --print-config > toy.json
//! cargo run --release --example train -- --config toy.json --out runs/toy2
//! # the real benchmarks (stage configs: configs/cirr, configs/fashioniq)
//! cargo run --release --example train -- --dataset cirr --data-root CIRR --ipr2pr-root IPR2PR \
//!     --blip2 Salesforce/blip2-itm-vit-g --config configs/cirr --stage all --out runs/cirr
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use detailfusion::toy::{ToyPreset, ToyReport};
use detailfusion::train::{Benchmark, Precision, ProgressReporter, Reporter, StageConfig};
use detailfusion::training::real::{train_benchmark_stage, BenchmarkRun};
use detailfusion::training::stages::{parse_stages, stage_of, stage_result, MODEL_DIR};
use detailfusion::training::toy_stages::{run_toy_stages, ToyRunOptions};

#[derive(Parser, Debug)]
#[command(about = "Train DetailFusion: the toy world (stages 0-3) or CIRR / Fashion IQ (stages 1-3)")]
struct Args {
    /// `toy`, `cirr` or `fashioniq`.
    #[arg(long, default_value = "toy")]
    dataset: String,
    /// A named toy preset: `toy`.
    #[arg(long, default_value = "toy")]
    preset: String,
    /// Toy: a JSON preset file (overrides --preset). Benchmarks: a stage config file (JSON or
    /// TOML, one stage) or a directory holding `stage{1,2,3}.{json,toml}`; default: SPRC's
    /// recipe (the same as configs/<dataset>/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which stages: `0` (toy only), `1`, `2`, `3` or `all`.
    #[arg(long, default_value = "all")]
    stage: String,
    /// Output directory (default runs/<dataset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue each selected stage from its checkpoint-latest under --out (finished stages
    /// are skipped).
    #[arg(long)]
    resume: bool,
    /// Print the preset / stage configs as JSON and exit.
    #[arg(long)]
    print_config: bool,
    /// Toy: override the world seed and every stage seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Benchmarks: the dataset root.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Benchmarks: the IPr2Pr root (folder layout) for stage 1.
    #[arg(long)]
    ipr2pr_root: Option<PathBuf>,
    /// Benchmarks: the BLIP-2 checkpoint to start from (HF dir or id in the hub cache, LAVIS .pth).
    #[arg(long)]
    blip2: Option<String>,
    /// Benchmarks: a DetailFusion `config.json` for a fresh start (variant, gallery mode,
    /// compositor); default: every choice at its default around the BLIP-2 config.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Benchmarks: tokenizer.json (default: beside the model or the BLIP-2 checkpoint).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Benchmarks: override every stage's `precision` (auto, f32, bf16, f16).
    #[arg(long)]
    precision: Option<String>,
    /// Override every stage's `max_steps` (a quick check; the toy preset's stages too).
    #[arg(long)]
    max_steps: Option<usize>,
    /// `cpu` or `cuda` (benchmarks; needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Plain log lines even on a terminal (no progress bar).
    #[arg(long)]
    no_bar: bool,
}

fn main() -> Result<()> {
    // Candle allocates per op; glibc would otherwise return and re-fault that memory each step.
    detailfusion::keep_freed_memory();
    let args = Args::parse();
    let started = std::time::Instant::now();
    let stamp = move |line: &str| eprintln!("[{:7.1}s] {line}", started.elapsed().as_secs_f64());
    let mut reporter = ProgressReporter::new().with_sink(stamp);
    if args.no_bar {
        reporter = reporter.with_bar(false);
    }
    match args.dataset.as_str() {
        "toy" => toy(&args, &reporter, &stamp),
        "cirr" => benchmark(&args, Benchmark::Cirr, &reporter, &stamp),
        "fashioniq" => benchmark(&args, Benchmark::FashionIq, &reporter, &stamp),
        other => bail!("--dataset {other}: use toy, cirr or fashioniq"),
    }
}

fn toy_preset(args: &Args) -> Result<ToyPreset> {
    let mut preset = match (&args.config, args.preset.as_str()) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            detailfusion::train::config::parse_config::<ToyPreset>(path, &text)?
        }
        (None, "toy") => ToyPreset::default(),
        (None, other) => bail!("unknown preset `{other}` (known: toy)"),
    };
    if let Some(seed) = args.seed {
        preset.world.seed = seed;
        for (i, s) in [&mut preset.stage0, &mut preset.stage2, &mut preset.stage3]
            .into_iter()
            .enumerate()
        {
            s.seed = seed.wrapping_mul(31).wrapping_add(i as u64);
        }
        if let Some(s) = preset.stage1.as_mut() {
            s.seed = seed.wrapping_mul(31).wrapping_add(7);
        }
    }
    if let Some(m) = args.max_steps {
        for s in [&mut preset.stage0, &mut preset.stage2, &mut preset.stage3]
            .into_iter()
            .chain(preset.stage1.as_mut())
        {
            s.max_steps = Some(m);
        }
    }
    Ok(preset)
}

fn toy(args: &Args, reporter: &ProgressReporter, log: &dyn Fn(&str)) -> Result<()> {
    let preset = toy_preset(args)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&preset)?);
        return Ok(());
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/toy"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let opts = ToyRunOptions {
        stages: parse_stages(&args.stage, true)?,
        resume: args.resume,
        reporter: Some(reporter as &dyn Reporter),
        log,
    };
    let (model, report) = run_toy_stages(&preset, &out, &opts)?;
    println!("\n{}", reporter.summary_table());
    print_toy_report(&report);
    let report_path = out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    let dir = out.join(MODEL_DIR);
    // A run stopped early (max_steps) saves no model: `--resume` continues it.
    if model.is_some() && dir.join("config.json").is_file() {
        let preset_path = dir.join("toy_preset.json");
        std::fs::write(&preset_path, serde_json::to_string_pretty(&preset)?)
            .with_context(|| format!("writing {}", preset_path.display()))?;
        if let Some((_, m)) = report.test.last() {
            let metrics_path = dir.join("metrics.json");
            std::fs::write(&metrics_path, serde_json::to_string_pretty(m)?)
                .with_context(|| format!("writing {}", metrics_path.display()))?;
        }
        println!("model: {}", dir.display());
    } else if model.is_some() {
        println!("stopped early (max_steps): no model saved; continue with --resume");
    }
    Ok(())
}

fn print_toy_report(report: &ToyReport) {
    if !report.test.is_empty() {
        println!(
            "{:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "test", "R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg"
        );
    }
    for (name, m) in &report.test {
        println!(
            "{name:<8} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2}",
            m.recall_at1,
            m.recall_at5,
            m.recall_at10,
            m.recall_at50,
            m.recall_subset_at1,
            m.recall_subset_at2,
            m.recall_subset_at3,
            m.avg
        );
    }
    for (name, s) in &report.seconds {
        println!("{name:<14} {s:8.1} s");
    }
}

/// The stage config of stage `n` from `--config` (a file or a directory), or SPRC's default.
fn stage_config(args: &Args, benchmark: Benchmark, n: usize, single: bool) -> Result<StageConfig> {
    let stage = stage_of(n).context("stage number")?;
    let mut cfg = match &args.config {
        None => StageConfig::sprc(benchmark, stage),
        Some(p) if p.is_dir() => {
            let file = ["json", "toml"]
                .iter()
                .map(|e| p.join(format!("stage{n}.{e}")))
                .find(|f| f.is_file())
                .with_context(|| format!("{} has no stage{n}.json or stage{n}.toml", p.display()))?;
            StageConfig::from_file(&file)?
        }
        Some(p) if single => StageConfig::from_file(p)?,
        Some(p) => bail!(
            "--config {}: one file configures one stage; give a directory with stage1..3 for --stage all",
            p.display()
        ),
    };
    if cfg.stage != stage {
        bail!("the config for stage {n} is of stage {:?}", cfg.stage);
    }
    if let Some(p) = &args.precision {
        cfg.precision = serde_json::from_value::<Precision>(serde_json::json!(p))
            .with_context(|| format!("--precision {p}: use auto, f32, bf16 or f16"))?;
    }
    if let Some(m) = args.max_steps {
        cfg.trainer.max_steps = Some(m);
    }
    Ok(cfg)
}

fn benchmark(
    args: &Args,
    benchmark: Benchmark,
    reporter: &ProgressReporter,
    log: &dyn Fn(&str),
) -> Result<()> {
    let stages = parse_stages(&args.stage, false)?;
    let single = stages.len() == 1;
    let configs = stages
        .iter()
        .map(|&n| stage_config(args, benchmark, n, single))
        .collect::<Result<Vec<_>>>()?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&configs)?);
        return Ok(());
    }
    let name = if benchmark == Benchmark::Cirr {
        "cirr"
    } else {
        "fashioniq"
    };
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).context("--device cuda (build with --features cuda)")?,
        d => bail!("--device {d}: use cpu or cuda"),
    };
    let run = BenchmarkRun {
        benchmark,
        data_root: args
            .data_root
            .clone()
            .context("--data-root is required for this dataset")?,
        ipr2pr_root: args.ipr2pr_root.clone(),
        blip2: args.blip2.clone().unwrap_or_default(),
        model: match &args.model_config {
            Some(p) => Some(
                serde_json::from_str(
                    &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
                )
                .with_context(|| format!("parsing {}", p.display()))?,
            ),
            None => None,
        },
        tokenizer: args.tokenizer.clone(),
        out: args.out.clone().unwrap_or_else(|| Path::new("runs").join(name)),
        device,
        reporter: Some(reporter as &dyn Reporter),
        log,
    };
    for cfg in &configs {
        let s = train_benchmark_stage(&run, cfg, args.resume)?;
        if s.stopped_early {
            log("stopped early (max_steps); continue with --resume");
            break;
        }
    }
    println!("\n{}", reporter.summary_table());
    let last = stages.last().and_then(|&n| stage_of(n));
    if let Some(dir) = last.and_then(|s| stage_result(&run.out, s)) {
        println!("model: {}", dir.display());
    }
    Ok(())
}
