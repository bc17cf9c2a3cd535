//! The assembled DetailFusion model: BLIP-2 / SPRC initialisation, variants, save/load,
//! gradients reaching every trainable parameter.

mod common;

use common::{enc_fixtures, hf, max_diff, tmpdir};

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use detailfusion::compositor::FusionMode;
use detailfusion::train::losses::{contrastive_loss, Stage2Inputs};
use detailfusion::train::{LossConfig, Stage2Losses};
use detailfusion::{Blip2Model, DetailFusion, DetailFusionConfig, GalleryMode, LoadOptions, Variant};

fn inputs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(enc_fixtures().join("inputs.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn blip2_init_gives_sprc_features_in_both_branches() {
    let x = inputs();
    let dev = Device::Cpu;
    let model = DetailFusion::from_blip2(&hf(), None, &dev).unwrap();
    let (blip2, _) = Blip2Model::load(&hf(), &LoadOptions::default()).unwrap();
    let vision = model.vision_features(&x["pixel_values"]).unwrap();
    assert_eq!(
        max_diff(&vision, &blip2.vision_features(&x["pixel_values"]).unwrap()),
        0.0
    );
    let q = model
        .encode_query_embeds(&vision, &x["input_ids"], &x["attention_mask"])
        .unwrap();
    let want = blip2
        .encoder
        .composed_query(&vision, &x["input_ids"], &x["attention_mask"])
        .unwrap();
    assert!(max_diff(&q.di.as_ref().unwrap().global, &want.feature) < 1e-6);
    assert!(max_diff(&q.gm.as_ref().unwrap().global, &want.feature) < 1e-6);
    let g = model.encode_image_embeds(&vision).unwrap();
    assert!(max_diff(&g.tokens, &blip2.encoder.image_features(&vision).unwrap()) < 1e-6);
    let (b, p) = q.feature.dims2().unwrap();
    assert_eq!((b, p), (2, 16));
    // Convex weights per query.
    let sums: Vec<f32> = q.weights.sum(1).unwrap().to_vec1().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
    let scores = model.score(&q, &g).unwrap();
    assert_eq!(scores.dims(), &[2, 2]);
}

#[test]
fn sprc_checkpoint_loads_as_gm_branch() {
    let dev = Device::Cpu;
    let mut model = DetailFusion::from_blip2(&hf(), None, &dev).unwrap();
    let before = model.gm().unwrap().prompt_tokens().copy().unwrap();
    model
        .load_gm_from_sprc(&enc_fixtures().join("sprc.pt").to_string_lossy())
        .unwrap();
    let after = model.gm().unwrap().prompt_tokens();
    assert!(
        max_diff(&before, after) > 0.0,
        "prompt tokens must come from the SPRC file"
    );
    // LAVIS/SPRC names load the same numbers as HF ones for the shared weights.
    let x = inputs();
    let vision = model.vision_features(&x["pixel_values"]).unwrap();
    let q = model
        .encode_query_embeds(&vision, &x["input_ids"], &x["attention_mask"])
        .unwrap();
    assert!(max_diff(&q.di.unwrap().global, &q.gm.unwrap().global) < 1e-6);
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let x = inputs();
    let dev = Device::Cpu;
    let mut cfg = DetailFusionConfig::from_blip2(
        detailfusion::Blip2Config::from_file(enc_fixtures().join("hf/config.json")).unwrap(),
    );
    cfg.compositor.num_attention_heads = 4;
    cfg.compositor.intermediate_size = 24;
    cfg.compositor.layer_norm_eps = 1.234_567_890_123e-5;
    let model = DetailFusion::from_blip2(&hf(), Some(cfg.clone()), &dev).unwrap();
    let dir = tmpdir("roundtrip");
    model.save(&dir).unwrap();
    let loaded = DetailFusion::load(&dir, &dev).unwrap();
    assert_eq!(loaded.config(), &cfg);
    let a = model
        .encode_queries(&x["pixel_values"], &x["input_ids"], &x["attention_mask"])
        .unwrap();
    let b = loaded
        .encode_queries(&x["pixel_values"], &x["input_ids"], &x["attention_mask"])
        .unwrap();
    assert_eq!(max_diff(&a.feature, &b.feature), 0.0);
    assert_eq!(max_diff(&a.weights, &b.weights), 0.0);
    let ga = model.encode_images(&x["pixel_values"]).unwrap();
    let gb = loaded.encode_images(&x["pixel_values"]).unwrap();
    assert_eq!(max_diff(&ga.tokens, &gb.tokens), 0.0);
    // Saving again writes the same tensors.
    let t1 = model.named_tensors();
    let t2 = loaded.named_tensors();
    assert_eq!(t1.len(), t2.len());
    for (k, v) in &t1 {
        assert_eq!(max_diff(v, &t2[k]), 0.0, "{k}");
    }
}

#[test]
fn broken_model_dirs_name_file_and_tensor() {
    let dev = Device::Cpu;
    let model = DetailFusion::from_blip2(&hf(), None, &dev).unwrap();
    let dir = tmpdir("broken");
    model.save(&dir).unwrap();
    let mut t = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    t.remove("compositor.fusion.mlp.fc2.weight");
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let msg = DetailFusion::load(&dir, &dev).err().unwrap().to_string();
    assert!(
        msg.contains("compositor.fusion.mlp.fc2.weight") && msg.contains("model.safetensors"),
        "{msg}"
    );
    std::fs::write(dir.join("config.json"), "{\"compositor\": {}}").unwrap();
    let msg = DetailFusion::load(&dir, &dev).err().unwrap().to_string();
    assert!(msg.contains("blip2") && msg.contains("config.json"), "{msg}");
    let msg = DetailFusion::load(tmpdir("absent"), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn variants_are_compositions_of_the_same_parts() {
    let x = inputs();
    let dev = Device::Cpu;
    let base = detailfusion::Blip2Config::from_file(enc_fixtures().join("hf/config.json")).unwrap();
    let mk = |variant, gallery, fusion| {
        let mut c = DetailFusionConfig::from_blip2(base.clone());
        c.variant = variant;
        c.gallery = gallery;
        c.compositor.fusion = fusion;
        c.compositor.num_attention_heads = 4;
        DetailFusion::from_blip2(&hf(), Some(c), &dev).unwrap()
    };
    let cases = [
        (
            Variant::GmOnly,
            GalleryMode::SharedDi,
            FusionMode::Softmax,
            [0.0f32, 1.0],
        ),
        (
            Variant::DiOnly,
            GalleryMode::SharedDi,
            FusionMode::Softmax,
            [1.0, 0.0],
        ),
        (
            Variant::Full,
            GalleryMode::SharedDi,
            FusionMode::Fixed { di_weight: 0.5 },
            [0.5, 0.5],
        ),
    ];
    for (variant, gallery, fusion, w) in cases {
        let m = mk(variant, gallery, fusion);
        let q = m
            .encode_queries(&x["pixel_values"], &x["input_ids"], &x["attention_mask"])
            .unwrap();
        let got: Vec<f32> = q.weights.get(0).unwrap().to_vec1().unwrap();
        assert_eq!(got, w.to_vec(), "{variant:?}");
        let g = m.encode_images(&x["pixel_values"]).unwrap();
        assert_eq!(m.score(&q, &g).unwrap().dims(), &[2, 2]);
    }
    assert!(mk(Variant::GmOnly, GalleryMode::SharedDi, FusionMode::Softmax)
        .vars(&["di.", "compositor."])
        .is_empty());
    // Per-branch galleries and the gate.
    let m = mk(Variant::Full, GalleryMode::PerBranch, FusionMode::Gate);
    let q = m
        .encode_queries(&x["pixel_values"], &x["input_ids"], &x["attention_mask"])
        .unwrap();
    let g = m.encode_images(&x["pixel_values"]).unwrap();
    assert!(g.gm_tokens.is_some());
    let s = m.score(&q, &g).unwrap();
    assert_eq!(s.dims(), &[2, 2]);
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let x = inputs();
    let dev = Device::Cpu;
    let mut cfg = DetailFusionConfig::from_blip2(
        detailfusion::Blip2Config::from_file(enc_fixtures().join("hf/config.json")).unwrap(),
    );
    cfg.compositor.num_attention_heads = 4;
    let model = DetailFusion::from_blip2(&hf(), Some(cfg), &dev).unwrap();
    // Both branches start from the same BLIP-2 weights, so q_DI = q_GM and the fusion weights
    // could not matter; make the branches differ as they do after stage 2.
    for (_, var) in model.vars(&["gm.text_projection.weight"]) {
        var.set(&(var.as_tensor() * 1.5).unwrap()).unwrap();
    }
    let vision = model.vision_features(&x["pixel_values"]).unwrap();
    let (ids, mask) = (&x["input_ids"], &x["attention_mask"]);
    let q = model.encode_query_embeds(&vision, ids, mask).unwrap();
    let z = model.encode_image_embeds(&vision).unwrap().tokens;
    let gm = model.gm().unwrap();
    let di = model.di().unwrap();
    let text_only = gm.text_only_features(ids, mask).unwrap();
    let (qd, qg) = (q.di.as_ref().unwrap(), q.gm.as_ref().unwrap());
    let stage2 = Stage2Losses::compute(
        Stage2Inputs {
            q_gm: &qg.global,
            q_di: &qd.global,
            text_only: &text_only,
            gm_pass1: &qg.pass1_queries,
            prompt_tokens: gm.prompt_tokens(),
            targets: &z,
            targets_gm: &z,
            temp_gm: gm.temp(),
            temp_di: di.temp(),
        },
        &LossConfig::default(),
    )
    .unwrap();
    let stage3 = contrastive_loss(&q.feature, &z.detach(), model.temp()).unwrap();
    let grads = (stage2.total + stage3).unwrap().backward().unwrap();
    let mut missing = vec![];
    for (name, var) in model.vars(&[""]) {
        // The two text positions beyond the batch's length and most vocabulary rows get no
        // gradient by construction; check the rest.
        // GM's image mode is unused when DI encodes the gallery.
        // Key biases cannot matter (softmax ignores a constant per query) and the compositor
        // does not compute them.
        if name.contains("embeddings.")
            || name.starts_with("gm.vision_projection")
            || name.ends_with("k_proj.bias")
        {
            continue;
        }
        let g = grads.get(var.as_tensor());
        let nz = g.map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        if nz != Some(true) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

#[test]
#[allow(clippy::result_large_err)]
fn vit_cache_computes_each_image_once_per_model() {
    use std::cell::Cell;
    let x = inputs();
    let dev = Device::Cpu;
    let model = DetailFusion::from_blip2(&hf(), None, &dev).unwrap();
    let dir = common::test_dir("vitcache", true);
    let path = dir.join("cache.safetensors");
    let calls = Cell::new(0usize);
    let pixels = |rows: &[usize]| -> detailfusion::Result<Tensor> {
        calls.set(calls.get() + rows.len());
        let ids = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &dev).unwrap();
        Ok(x["pixel_values"].index_select(&ids, 0).unwrap())
    };
    let keys = vec!["a".to_string(), "b".to_string()];
    let first = detailfusion::vit_cache::cached_vit_features(&model, &keys, &path, &pixels).unwrap();
    assert_eq!(calls.get(), 2);
    let again = detailfusion::vit_cache::cached_vit_features(&model, &keys, &path, &pixels).unwrap();
    assert_eq!(calls.get(), 2, "cached features were recomputed");
    let want = model.vision_features(&x["pixel_values"]).unwrap();
    for i in 0..2 {
        assert_eq!(max_diff(&first[i], &want.get(i).unwrap()), 0.0);
        assert_eq!(max_diff(&again[i], &want.get(i).unwrap()), 0.0);
    }
    // Another model ignores the cache instead of mixing features in.
    let mut cfg = DetailFusionConfig::from_blip2(
        detailfusion::Blip2Config::from_file(enc_fixtures().join("hf/config.json")).unwrap(),
    );
    cfg.max_txt_len = 16;
    let other = DetailFusion::from_blip2(&hf(), Some(cfg), &dev).unwrap();
    detailfusion::vit_cache::cached_vit_features(&other, &keys, &path, &pixels).unwrap();
    assert_eq!(calls.get(), 4);
}
