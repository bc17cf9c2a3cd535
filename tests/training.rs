//! The three stages on a tiny model: freezing is real and resuming is exact.

mod common;

use common::enc_fixtures;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use detailfusion::train::trainer::{read_state, LATEST};
use detailfusion::train::{train, Hooks, LossConfig, OptimizerConfig, Schedule, Stage, TrainerConfig};
use detailfusion::{
    Blip2Config, DetailFusion, DetailFusionConfig, StageTrainer, TextProcessor, TrainItem, TrainingData,
};

fn model() -> DetailFusion {
    let mut cfg = DetailFusionConfig::from_blip2(
        Blip2Config::from_file(enc_fixtures().join("hf/config.json")).unwrap(),
    );
    cfg.compositor.num_attention_heads = 4;
    cfg.compositor.intermediate_size = 32;
    DetailFusion::from_blip2(
        &enc_fixtures().join("hf").to_string_lossy(),
        Some(cfg),
        &Device::Cpu,
    )
    .unwrap()
}

fn data() -> TrainingData {
    let dev = Device::Cpu;
    let image_feats = (0..6)
        .map(|i| {
            let x = Tensor::arange(0f32, 17.0 * 32.0, &dev)
                .unwrap()
                .reshape((17, 32))
                .unwrap();
            ((x * (0.37 + i as f64 * 0.11)).unwrap().sin().unwrap() * 0.5).unwrap()
        })
        .collect();
    let texts = [
        "make the red circle blue",
        "remove the small square",
        "make the background green",
        "red",
    ];
    let items = (0..8)
        .map(|i| TrainItem {
            reference: i % 6,
            target: (i * 5 + 1) % 6,
            text: texts[i % 4].to_string(),
            // Two images that are neither the reference nor the target.
            negatives: (0..6)
                .filter(|&j| j != i % 6 && j != (i * 5 + 1) % 6)
                .skip(i % 3)
                .take(2)
                .collect(),
        })
        .collect();
    TrainingData {
        items,
        image_feats,
        text: TextProcessor::from_file(enc_fixtures().join("tokenizer.json"))
            .unwrap()
            .with_max_txt_len(12)
            .unwrap(),
    }
}

fn cfg(epochs: usize) -> TrainerConfig {
    TrainerConfig {
        epochs,
        batch_size: 2,
        drop_last: true,
        seed: 7,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            schedule: Schedule::CosineWarmup { warmup_steps: 2 },
            grad_clip: Some(1.0),
            ..Default::default()
        },
        checkpoint_every: Some(1),
        max_steps: None,
    }
}

fn tmp(name: &str) -> common::TestDir {
    common::tmpdir(&format!("train-{name}"))
}

fn snapshot(m: &DetailFusion) -> HashMap<String, Vec<f32>> {
    m.named_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn changed(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> Vec<String> {
    let mut v: Vec<String> = a.keys().filter(|k| a[*k] != b[*k]).cloned().collect();
    v.sort();
    v
}

#[test]
fn stages_train_only_their_parameters() {
    let data = data();
    let m = model();
    let before = snapshot(&m);
    let t = StageTrainer::new(&m, &data, Default::default());
    train(
        &t,
        Stage::Compositor,
        data.items.len(),
        &cfg(1),
        &tmp("s3"),
        None,
        &Hooks::default(),
    )
    .unwrap();
    let after3 = snapshot(&m);
    let moved = changed(&before, &after3);
    assert!(!moved.is_empty());
    assert!(
        moved.iter().all(|k| k.starts_with("compositor.") || k == "temp"),
        "stage 3 touched {moved:?}"
    );
    train(
        &t,
        Stage::Di,
        data.items.len(),
        &cfg(1),
        &tmp("s1"),
        None,
        &Hooks::default(),
    )
    .unwrap();
    let moved = changed(&after3, &snapshot(&m));
    assert!(moved.iter().any(|k| k.starts_with("di.qformer")));
    assert!(
        moved.iter().all(|k| k.starts_with("di.")),
        "stage 1 touched {moved:?}"
    );
    let after1 = snapshot(&m);
    train(
        &t,
        Stage::Joint,
        data.items.len(),
        &cfg(1),
        &tmp("s2"),
        None,
        &Hooks::default(),
    )
    .unwrap();
    let moved = changed(&after1, &snapshot(&m));
    assert!(moved.iter().any(|k| k.starts_with("gm.qformer")) && moved.iter().any(|k| k.starts_with("di.")));
    assert!(
        moved.iter().all(|k| k.starts_with("di.") || k.starts_with("gm.")),
        "stage 2 touched {moved:?}"
    );
    assert!(!moved.iter().any(|k| k.starts_with("vision_model")));
}

#[test]
fn resuming_mid_epoch_reproduces_the_uninterrupted_run() {
    let data = data();
    // Both runs start from the same saved weights (fresh ones are random).
    let init = tmp("init");
    model().save(&init).unwrap();
    let fresh = || DetailFusion::load(&init, &Device::Cpu).unwrap();
    // Uninterrupted: 2 epochs of 4 batches.
    let full = fresh();
    // With candidate-set negatives: their choice depends on the batch alone, so it resumes too.
    let losses = LossConfig {
        hard_negatives: 1,
        ..Default::default()
    };
    let t = StageTrainer::new(&full, &data, losses.clone());
    let out = tmp("full");
    let s = train(
        &t,
        Stage::Joint,
        data.items.len(),
        &cfg(2),
        &out,
        None,
        &Hooks::default(),
    )
    .unwrap();
    assert_eq!(s.state.global_step, 8);
    // Interrupted after 3 steps (mid-epoch 0), then resumed from the checkpoint on disk.
    let first = fresh();
    let t = StageTrainer::new(&first, &data, losses.clone());
    let out = tmp("cut");
    let mut c = cfg(2);
    c.max_steps = Some(3);
    let s = train(
        &t,
        Stage::Joint,
        data.items.len(),
        &c,
        &out,
        None,
        &Hooks::default(),
    )
    .unwrap();
    assert!(s.stopped_early);
    drop(t);
    drop(first);
    let ckpt = out.join(LATEST);
    let st = read_state(&ckpt).unwrap();
    assert_eq!((st.epoch, st.batch_in_epoch, st.global_step), (0, 3, 3));
    let resumed = DetailFusion::load(&ckpt, &Device::Cpu).unwrap();
    let t = StageTrainer::new(&resumed, &data, losses);
    let s = train(
        &t,
        Stage::Joint,
        data.items.len(),
        &cfg(2),
        &out,
        Some(&ckpt),
        &Hooks::default(),
    )
    .unwrap();
    assert_eq!(s.state.global_step, 8);
    let (a, b) = (snapshot(&full), snapshot(&resumed));
    assert!(changed(&a, &b).is_empty(), "differs: {:?}", changed(&a, &b));
    // The log has one line per step of both calls.
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"step\"")).count(), 8);
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    use detailfusion::train::trainer::epoch_order;
    let a = epoch_order(100, 3, 0);
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..100).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(100, 3, 0));
    assert_ne!(a, epoch_order(100, 3, 1));
    assert_ne!(a, epoch_order(100, 4, 0));
}

#[test]
fn bad_training_settings_are_refused() {
    let data = data();
    let m = model();
    let t = StageTrainer::new(&m, &data, Default::default());
    let mut c = cfg(1);
    c.batch_size = 100;
    let err = train(
        &t,
        Stage::Di,
        data.items.len(),
        &c,
        &tmp("bad"),
        None,
        &Hooks::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no batch"), "{err}");
    let err = train(
        &t,
        Stage::Di,
        data.items.len(),
        &cfg(1),
        &tmp("bad2"),
        Some(&tmp("nothing")),
        &Hooks::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("trainer.json"), "{err}");
}

/// A small toy world (`train` training queries, `ipr2pr` edit pairs) and its training rows.
fn small_toy(train: usize, ipr2pr: usize) -> (detailfusion::toy::ToyData, Vec<usize>) {
    let mut cfg = detailfusion::data::toy::ToyConfig::default().with_counts(train, 2, 2);
    cfg.ipr2pr = ipr2pr;
    let data = detailfusion::toy::ToyData::generate(&cfg, &Device::Cpu).unwrap();
    let rows = data.train_rows();
    (data, rows)
}

/// A fresh stage-0 pretrainer over `rows` of `data`.
fn pretrainer(data: &detailfusion::toy::ToyData, rows: &[usize]) -> detailfusion::ItcPretrainer {
    detailfusion::ItcPretrainer::new(
        detailfusion::toy::toy_blip2(64, 100),
        data.pixels(rows).unwrap(),
        rows.iter().map(|&r| data.captions[r].clone()).collect(),
        data.text.clone(),
        &Device::Cpu,
    )
    .unwrap()
}

/// Stage 0's hard negatives link each image with its near-duplicates, and they make the
/// contrastive batch larger: a batch of one has zero loss alone, not with its partner.
#[test]
fn stage0_hard_negatives_link_near_duplicates() {
    use detailfusion::train::StageModel;
    let (data, rows) = small_toy(12, 8);
    let partners = data.partners(&rows);
    let pos = |s| rows.iter().position(|&r| r == data.row(s)).unwrap();
    for p in &data.world.edit_pairs {
        let (a, b) = (pos(&p.original), pos(&p.edited));
        assert!(
            partners[a].contains(&b) && partners[b].contains(&a),
            "edit pair {}",
            p.folder
        );
    }
    for (i, ps) in partners.iter().enumerate() {
        assert!(!ps.contains(&i));
        assert!(ps
            .iter()
            .all(|&j| data.captions[rows[j]] != data.captions[rows[i]]));
    }
    let make = || pretrainer(&data, &rows);
    let linked = (0..rows.len()).find(|&i| !partners[i].is_empty()).unwrap();
    let alone = make()
        .loss(Stage::Itc, &[linked])
        .unwrap()
        .0
        .to_scalar::<f32>()
        .unwrap();
    let paired = make().with_hard_negatives(partners.clone()).unwrap();
    let with = paired
        .loss(Stage::Itc, &[linked])
        .unwrap()
        .0
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        alone.abs() < 1e-6 && with > 0.1,
        "alone {alone}, with its partner {with}"
    );
    let err = make()
        .with_hard_negatives(vec![vec![rows.len()]; rows.len()])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("hard negatives"), "{err}");
}

/// Stage 0's scene-parsing loss adds to the contrastive one, trains its own head (which the
/// saved BLIP-2 checkpoint leaves out) and refuses labels of the wrong shape.
#[test]
fn stage0_scene_parsing_adds_a_trained_head_left_out_of_the_checkpoint() {
    use detailfusion::train::StageModel;
    use detailfusion::SceneParsing;
    let dev = Device::Cpu;
    let (data, rows) = small_toy(6, 2);
    let labels = data.cell_labels(&rows).unwrap();
    assert_eq!(labels.dims(), &[rows.len(), 9, 3]);
    // Every scene has 1-4 objects: as many non-empty cells, with in-range classes.
    let l = labels.to_vec3::<u32>().unwrap();
    for cells in &l {
        let full = cells.iter().filter(|c| c[0] > 0).count();
        assert!((1..=4).contains(&full), "{cells:?}");
        assert!(cells
            .iter()
            .all(|c| (c[0] > 0) == (c[1] > 0) && c[0] <= 5 && c[1] <= 6 && c[2] <= 2));
    }
    let pre = pretrainer(&data, &rows);
    let batch = [0, 1, 2];
    let scene = SceneParsing {
        weight: 2.0,
        ..SceneParsing::default()
    };
    let before = pre.trainable(Stage::Itc).len();
    let err = pre
        .with_scene_parsing(labels.narrow(0, 1, rows.len() - 1).unwrap(), &scene)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("scene labels"), "{err}");
    let none = SceneParsing {
        vit: false,
        queries: false,
        text: false,
        ..scene.clone()
    };
    let err = pretrainer(&data, &rows)
        .with_scene_parsing(labels.clone(), &none)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no head enabled"), "{err}");
    let pre = pretrainer(&data, &rows);
    let plain = pre
        .loss(Stage::Itc, &batch)
        .unwrap()
        .0
        .to_scalar::<f32>()
        .unwrap();
    assert!(plain > 0.0);
    let pre = pre.with_scene_parsing(labels, &scene).unwrap();
    let (loss, parts) = pre.loss(Stage::Itc, &batch).unwrap();
    let part = |name: &str| parts.iter().find(|(n, _)| n == name).unwrap().1;
    assert!((part("itc") - plain).abs() < 1e-5, "{parts:?} vs {plain}");
    // At initialisation each cell label is near-uniform: about ln 6, ln 7, ln 3.
    assert!(part("scene") > 1.0, "{parts:?}");
    let total = loss.to_scalar::<f32>().unwrap();
    assert!(
        (total - plain - 2.0 * part("scene")).abs() < 1e-4,
        "{total} {parts:?}"
    );
    let vars = pre.trainable(Stage::Itc);
    // One head each on the ViT, the query tokens and the text feature.
    assert_eq!(vars.len(), before + 6);
    let grads = loss.backward().unwrap();
    for name in ["scene_vit.weight", "scene_queries.weight", "scene_text.weight"] {
        let head = vars.iter().find(|(n, _)| n == name).unwrap();
        let g = grads.get(head.1.as_tensor()).unwrap();
        assert!(
            g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0,
            "{name}"
        );
    }
    // The ViT's patch tokens get the scene gradient too: that is the point of the loss.
    let patch = vars
        .iter()
        .find(|(n, _)| n.contains("patch_embedding.weight"))
        .unwrap();
    assert!(grads.get(patch.1.as_tensor()).is_some());
    let dir = tmp("scene-head");
    pre.save_hf(&dir).unwrap();
    let saved = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    assert!(saved.keys().all(|k| !k.starts_with("scene_")));
    assert_eq!(saved.len(), before);
}

#[test]
fn candidate_negatives_join_the_stage2_and_stage3_galleries() {
    use detailfusion::train::StageModel;
    let data = data();
    let m = model();
    let batch = [0, 1, 2];
    let loss = |stage: Stage, k: usize| -> f32 {
        let losses = LossConfig {
            hard_negatives: k,
            ..Default::default()
        };
        let t = StageTrainer::new(&m, &data, losses);
        let (l, _) = t.loss(stage, &batch).unwrap();
        l.to_scalar::<f32>().unwrap()
    };
    // Extra gallery columns can only add to each softmax's denominator.
    for stage in [Stage::Joint, Stage::Compositor] {
        let (plain, hard) = (loss(stage, 0), loss(stage, 2));
        assert!(hard > plain + 1e-6, "{stage:?}: {hard} vs {plain}");
    }
    // Stage 1 keeps its own hard negative (the reference) only.
    assert_eq!(loss(Stage::Di, 0), loss(Stage::Di, 2));
}

#[test]
fn batch_negatives_are_distinct_non_targets_that_rotate() {
    use detailfusion::batch_negatives;
    let item = |target: usize, negatives: Vec<usize>| TrainItem {
        target,
        negatives,
        ..Default::default()
    };
    let a = item(1, vec![2, 3, 4, 5]);
    let b = item(2, vec![1, 3, 6]);
    let c = item(7, vec![]);
    assert!(batch_negatives(&[&a, &b], 0).is_empty());
    let picked = batch_negatives(&[&a, &b, &c], 2);
    // Targets 1 and 2 are columns already; a and b give at most 2 each, without repeats.
    assert!(!picked.contains(&1) && !picked.contains(&2), "{picked:?}");
    let mut d = picked.clone();
    d.sort();
    d.dedup();
    assert_eq!(d.len(), picked.len());
    assert!((2..=4).contains(&picked.len()), "{picked:?}");
    assert_eq!(picked, batch_negatives(&[&a, &b, &c], 2));
    // Over other batch compositions, a's single pick varies.
    let firsts: std::collections::HashSet<usize> = (10..30)
        .map(|t| batch_negatives(&[&a, &item(t, vec![])], 1)[0])
        .collect();
    assert!(firsts.len() > 1, "{firsts:?}");
}
