//! CIRR-val evaluation end to end on the real annotation files (a slice of them), with
//! deterministic pixels for the images they name.

mod common;

use common::enc_fixtures;

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::Device;
use detailfusion::benchmarks::evaluate_cirr;
use detailfusion::data::cirr::{CirrDataset, CirrSplit};
use detailfusion::data::LoadOptions;
use detailfusion::{Blip2Config, DetailFusion, DetailFusionConfig, TextProcessor};

#[test]
fn cirr_val_slice_evaluates_with_generated_images() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cirr");
    let root_guard = tempfile::tempdir().unwrap();
    let root = root_guard.path().to_path_buf();
    std::fs::create_dir_all(root.join("captions")).unwrap();
    std::fs::create_dir_all(root.join("image_splits")).unwrap();
    let caps: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(shared.join("captions/cap.rc2.val.json")).unwrap())
            .unwrap();
    let split: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(shared.join("image_splits/split.rc2.val.json")).unwrap(),
    )
    .unwrap();
    let caps: Vec<serde_json::Value> = caps.into_iter().take(12).collect();
    let mut names = BTreeSet::new();
    for c in &caps {
        names.insert(c["reference"].as_str().unwrap().to_string());
        for m in c["img_set"]["members"].as_array().unwrap() {
            names.insert(m.as_str().unwrap().to_string());
        }
    }
    let mut sub = serde_json::Map::new();
    for (i, n) in names.iter().enumerate() {
        let rel = split[n].as_str().unwrap();
        sub.insert(n.clone(), serde_json::json!(rel));
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6 + i as u32 * 17) as u8, (y * 8) as u8, (i * 40) as u8])
        });
        img.save(&path).unwrap();
    }
    std::fs::write(
        root.join("captions/cap.rc2.val.json"),
        serde_json::to_string(&caps).unwrap(),
    )
    .unwrap();
    std::fs::write(
        root.join("image_splits/split.rc2.val.json"),
        serde_json::to_string(&sub).unwrap(),
    )
    .unwrap();

    let data = CirrDataset::load(&root, CirrSplit::Val, &LoadOptions::default()).unwrap();
    assert_eq!(data.samples.len(), 12);
    let mut cfg = DetailFusionConfig::from_blip2(
        Blip2Config::from_file(enc_fixtures().join("hf/config.json")).unwrap(),
    );
    cfg.compositor.num_attention_heads = 4;
    let model = DetailFusion::from_blip2(
        &enc_fixtures().join("hf").to_string_lossy(),
        Some(cfg),
        &Device::Cpu,
    )
    .unwrap();
    let text = TextProcessor::from_file(enc_fixtures().join("tokenizer.json")).unwrap();
    let m = evaluate_cirr(&model, &text, &data, &|_| {}).unwrap();
    assert_eq!(m.queries, 12);
    // 12 queries: every recall is a multiple of 100/12, and recalls grow with K.
    assert!(m.recall_at1 <= m.recall_at5 && m.recall_at5 <= m.recall_at10 && m.recall_at50 == 100.0);
    assert!(m.recall_subset_at1 <= m.recall_subset_at2 && m.recall_subset_at3 <= 100.0);
    // A missing image is an error naming it.
    let first = root.join(sub.values().next().unwrap().as_str().unwrap());
    std::fs::remove_file(&first).unwrap();
    let err = evaluate_cirr(&model, &text, &data, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(first.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
}
