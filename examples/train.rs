//! Trains DetailFusion.
//!
//! ```sh
//! # the toy world end to end: stage 0 (tiny BLIP-2), stages 1-3, test metrics
//! cargo run --release --example train -- --preset toy --out runs/toy
//! # a preset written to JSON, edited, and run again
//! cargo run --release --example train -- --preset toy --print-config > toy.json
//! cargo run --release --example train -- --config toy.json --out runs/toy2
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use detailfusion::toy::{self, ToyPreset};

#[derive(Parser, Debug)]
#[command(about = "Train DetailFusion (stages 0-3) on the toy world")]
struct Args {
    /// A named preset: `toy`.
    #[arg(long, default_value = "toy")]
    preset: String,
    /// A JSON preset file (overrides --preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which stages: `all` (0-3).
    #[arg(long, default_value = "all")]
    stage: String,
    /// Output directory.
    #[arg(long, default_value = "runs/toy")]
    out: PathBuf,
    /// Print the preset as JSON and exit.
    #[arg(long)]
    print_config: bool,
    /// Override the world seed and every stage seed.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut preset = match (&args.config, args.preset.as_str()) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<ToyPreset>(&text).with_context(|| format!("parsing {}", path.display()))?
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
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&preset)?);
        return Ok(());
    }
    if args.stage != "all" {
        bail!(
            "--stage {}: the toy pipeline runs all stages in order; use `all`",
            args.stage
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let started = std::time::Instant::now();
    let log = |line: &str| eprintln!("[{:7.1}s] {line}", started.elapsed().as_secs_f64());
    let (_, report) = toy::run(&preset, &args.out, &log)?;
    println!(
        "\n{:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "after", "R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg"
    );
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
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("model: {}", args.out.join("model").display());
    Ok(())
}
