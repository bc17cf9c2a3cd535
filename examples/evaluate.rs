//! Evaluates a DetailFusion model the way the benchmarks do (SPEC §6).
//!
//! ```sh
//! cargo run --release --example evaluate -- --dataset toy                       # shipped demo model
//! cargo run --release --example evaluate -- --dataset cirr --split val --data-root CIRR --model runs/cirr/model
//! cargo run --release --example evaluate -- --dataset cirr --split test1 --data-root CIRR --model M --submission-dir out/
//! cargo run --release --example evaluate -- --dataset fashioniq --data-root FIQ --model M
//! ```
//!
//! A model written by `train` is a directory with `config.json`, `model.safetensors` and
//! `tokenizer.json`: `runs/X/model`, `runs/X/stage<N>/model` or `runs/X/stage<N>/checkpoint-best`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use detailfusion::benchmarks::{cirr_submission, evaluate_cirr, evaluate_fashioniq};
use detailfusion::data::cirr::{CirrDataset, CirrSplit};
use detailfusion::data::fashioniq::{Category, FashionIqDataset, FiqSplit};
use detailfusion::data::LoadOptions;
use detailfusion::toy::{
    caption_scores, negative_wins_by_edit, query_scores, split_metrics, vit_features, EditWins, ToyData,
    ToyPreset,
};
use detailfusion::{DetailFusion, TextProcessor};

#[derive(Parser, Debug)]
#[command(about = "Evaluate DetailFusion on CIRR, Fashion IQ or the toy world")]
struct Args {
    /// `cirr`, `fashioniq` or `toy`.
    #[arg(long, default_value = "toy")]
    dataset: String,
    /// `val` or `test1` (CIRR), `val` (Fashion IQ), `val` or `test` (toy).
    #[arg(long, default_value = "val")]
    split: String,
    /// Dataset root (CIRR: `captions/`, `image_splits/` and the images; Fashion IQ: `captions/`,
    /// `image_splits/`, `images/`).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// A saved DetailFusion model directory (default: the shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// CIRR test1: where to write the two evaluation-server files.
    #[arg(long)]
    submission_dir: Option<PathBuf>,
    /// `cpu` or `cuda` (needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Name inside the submission file names.
    #[arg(long, default_value = "detailfusion")]
    submission_name: String,
    /// Toy: also show, per kind of edit, how often a hard negative outscores the target.
    #[arg(long)]
    by_edit: bool,
    /// Toy, with `--by-edit`: the same for a stage-0 BLIP-2 directory (e.g. `runs/toy/blip2`),
    /// scoring each target's full caption against the images.
    #[arg(long)]
    backbone: Option<PathBuf>,
}

fn main() -> Result<()> {
    // Candle allocates per op; glibc would otherwise return and re-fault that memory each step.
    detailfusion::keep_freed_memory();
    let args = Args::parse();
    let dev = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).context("--device cuda (build with --features cuda)")?,
        d => bail!("--device {d}: use cpu or cuda"),
    };
    let model_dir = args
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/demo"));
    let model = DetailFusion::load(&model_dir, &dev)?;
    let text = TextProcessor::from_file(model_dir.join("tokenizer.json"))?
        .with_max_txt_len(model.config().max_txt_len)?;
    let log = |m: &str| eprintln!("{m}");
    let root = || {
        args.data_root
            .clone()
            .context("--data-root is required for this dataset")
    };
    match args.dataset.as_str() {
        "toy" => {
            let path = model_dir.join("toy_preset.json");
            let preset: ToyPreset = serde_json::from_str(
                &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
            )?;
            let split = match args.split.as_str() {
                "val" => CirrSplit::Val,
                "test" | "test1" => CirrSplit::Test1,
                s => bail!("--split {s}: the toy world has val and test"),
            };
            let data = ToyData::generate_splits(&preset.world, &[split], false, &dev)?;
            let feats = vit_features(&model, &data)?;
            // One set of scores for the metrics and the per-edit breakdown.
            let scores = query_scores(&model, &data, &feats, split)?;
            print_cirr(&split_metrics(&data, split, &scores)?);
            if args.by_edit {
                println!("\ncomposed queries: hard negatives that score at least as high as the target");
                print_wins(&negative_wins_by_edit(&data, split, &scores)?);
                if let Some(dir) = &args.backbone {
                    let (blip2, _) = detailfusion::encoders::Blip2Model::load(
                        &dir.to_string_lossy(),
                        &detailfusion::encoders::LoadOptions::default(),
                    )?;
                    let scores = caption_scores(&blip2, &data, split)?;
                    println!("\n{} (target caption to image): the same", dir.display());
                    print_wins(&negative_wins_by_edit(&data, split, &scores)?);
                }
            }
        }
        "cirr" => {
            let split = match args.split.as_str() {
                "val" => CirrSplit::Val,
                "test1" | "test" => CirrSplit::Test1,
                s => bail!("--split {s}: CIRR evaluation uses val or test1"),
            };
            let data = CirrDataset::load(root()?, split, &LoadOptions::default())?;
            if split == CirrSplit::Test1 {
                let dir = args
                    .submission_dir
                    .clone()
                    .context("--submission-dir is required for test1")?;
                let files = cirr_submission(&model, &text, &data, &dir, &args.submission_name, &log)?;
                println!("wrote {files:?}");
            } else {
                print_cirr(&evaluate_cirr(&model, &text, &data, &log)?);
            }
        }
        "fashioniq" => {
            if args.split != "val" {
                bail!("--split {}: Fashion IQ is evaluated on val", args.split);
            }
            let root = root()?;
            let cats = Category::ALL
                .iter()
                .map(|&c| FashionIqDataset::load(&root, c, FiqSplit::Val, &LoadOptions::default()))
                .collect::<Result<Vec<_>, _>>()?;
            let m = evaluate_fashioniq(&model, &text, &cats, &log)?;
            for c in &m.categories {
                println!(
                    "{:<8} R@10 {:6.2}  R@50 {:6.2}",
                    c.category, c.recall_at10, c.recall_at50
                );
            }
            println!(
                "mean     R@10 {:6.2}  R@50 {:6.2}  Avg {:6.2}",
                m.mean_recall_at10, m.mean_recall_at50, m.avg
            );
        }
        other => bail!("--dataset {other}: use cirr, fashioniq or toy"),
    }
    Ok(())
}

fn print_wins(wins: &[EditWins]) {
    for w in wins.iter().filter(|w| w.negatives > 0) {
        let pct = 100.0 * w.wins as f64 / w.negatives as f64;
        println!(
            "  {:<10} {:>4} of {:>4}  {pct:5.1} %",
            w.kind, w.wins, w.negatives
        );
    }
}

fn print_cirr(m: &detailfusion::train::eval::CirrMetrics) {
    println!(
        "{:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg"
    );
    println!(
        "{:6.2} {:6.2} {:6.2} {:6.2} {:6.2} {:6.2} {:6.2} {:6.2}",
        m.recall_at1,
        m.recall_at5,
        m.recall_at10,
        m.recall_at50,
        m.recall_subset_at1,
        m.recall_subset_at2,
        m.recall_subset_at3,
        m.avg
    );
    println!("({} queries)", m.queries);
}
