//! Writes a procedural toy CIR world to disk (CIRR layout, IPr2Pr layout, tokenizer.json).
//!
//! ```text
//! cargo run --release -p df-data --example make_toy_world -- \
//!     --out /tmp/toy --seed 0 --train 2000 --val 300 --test 300 --image-size 64 [--ipr2pr N]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use df_data::cirr::{CirrDataset, CirrSplit};
use df_data::toy::{ToyConfig, ToyWorld};
use df_data::LoadOptions;

const USAGE: &str = "usage: make_toy_world --out DIR [--seed N] [--train N] [--val N] [--test N] \
[--ipr2pr N] [--image-size PX] [--max-objects N] [--max-edits N] [--hide-test-targets]";

fn parse() -> Result<(PathBuf, ToyConfig), String> {
    let mut out = None;
    let mut cfg = ToyConfig::default();
    let mut ipr2pr = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        if flag == "--hide-test-targets" {
            cfg.hide_test_targets = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}\n{USAGE}"));
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value)),
            "--seed" => cfg.seed = num(&value)?,
            "--train" => cfg.train = num(&value)? as usize,
            "--val" => cfg.val = num(&value)? as usize,
            "--test" => cfg.test = num(&value)? as usize,
            "--ipr2pr" => ipr2pr = Some(num(&value)? as usize),
            "--image-size" => cfg.image_size = num(&value)? as u32,
            "--max-objects" => cfg.max_objects = num(&value)? as usize,
            "--max-edits" => cfg.max_edits = num(&value)? as usize,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    cfg.ipr2pr = ipr2pr.unwrap_or(cfg.train);
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    Ok((out, cfg))
}

fn main() -> anyhow::Result<()> {
    let (out, cfg) = match parse() {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    let world = ToyWorld::generate(&cfg)?;
    let t1 = Instant::now();
    let written = world.write(&out)?;
    let t2 = Instant::now();
    for split in CirrSplit::ALL {
        let ds = CirrDataset::load(&written.cirr_root, split, &LoadOptions::default())?;
        println!(
            "{split:>5}: {} queries over {} images",
            ds.samples.len(),
            ds.gallery.len()
        );
    }
    println!(
        "ipr2pr: {} pairs; tokenizer: {}",
        world.edit_pairs.len(),
        written.tokenizer.display()
    );
    if let Some(q) = world.splits.iter().find_map(|s| s.queries.first()) {
        println!("example query: {:?}", q.caption);
    }
    println!(
        "generated in {:.2}s, written ({} images) in {:.2}s to {}",
        (t1 - t0).as_secs_f64(),
        written.cirr_images.len() + written.ipr2pr_images,
        (t2 - t1).as_secs_f64(),
        out.display()
    );
    Ok(())
}
