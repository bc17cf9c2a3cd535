//! The frozen-weight fast paths (stacked projections, fused epilogues and softmax, padding
//! trimmed and packed, last layer on the read rows only) give the outputs of the plain
//! differentiable composition that training uses, on padded batches of mixed lengths.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use df_encoders::{Blip2Config, Blip2Model};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders")
}

/// The fixture checkpoint twice: plain tensors (fast paths) and `Var`s (tracked: dense paths).
fn models() -> (Blip2Model, Blip2Model) {
    let dev = Device::Cpu;
    let cfg: Blip2Config =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("hf/config.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(fixtures().join("hf/model.safetensors"), &dev).unwrap();
    let vars: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap().as_tensor().clone()))
        .collect();
    let frozen = Blip2Model::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &dev)).unwrap();
    let tracked = Blip2Model::new(&cfg, VarBuilder::from_tensors(vars, DType::F32, &dev)).unwrap();
    (frozen, tracked)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    df_encoders::nn::max_abs_diff(a, b).unwrap()
}

/// `[B, L]` ids and masks with the given real lengths (ids from a fixed pattern).
fn text(lengths: &[usize], l: usize, vocab: usize) -> (Tensor, Tensor) {
    let mut ids = vec![0u32; lengths.len() * l];
    let mut mask = vec![0u32; lengths.len() * l];
    for (b, &n) in lengths.iter().enumerate() {
        for j in 0..n {
            ids[b * l + j] = ((7 * b + 13 * j + 1) % (vocab - 1) + 1) as u32;
            mask[b * l + j] = 1;
        }
    }
    let dev = Device::Cpu;
    (
        Tensor::from_vec(ids, (lengths.len(), l), &dev).unwrap(),
        Tensor::from_vec(mask, (lengths.len(), l), &dev).unwrap(),
    )
}

#[test]
fn fast_paths_match_the_differentiable_ones() {
    let (frozen, tracked) = models();
    let cfg = frozen.config().clone();
    let dev = Device::Cpu;
    let vision = &cfg.vision_config;
    let pixels = Tensor::randn(0f32, 1.0, (3, 3, vision.image_size, vision.image_size), &dev).unwrap();
    let prompt = Tensor::randn(0f32, 1.0, (3, 4, cfg.qformer_config.hidden_size), &dev).unwrap();
    let vocab = cfg.qformer_config.vocab_size;
    // Mixed lengths (packing), all-short (trimming), and full rows (no padding at all).
    for lengths in [[5usize, 12, 1], [3, 4, 2], [12, 12, 12]] {
        let (ids, mask) = text(&lengths, 12, vocab);
        let (fv, tv) = (
            frozen.vision_features(&pixels).unwrap(),
            tracked.vision_features(&pixels).unwrap(),
        );
        assert!(tv.track_op() && !fv.track_op());
        let pairs = [
            ("vision", fv.clone(), tv.clone()),
            (
                "image",
                frozen.encoder.image_features(&fv).unwrap(),
                tracked.encoder.image_features(&tv).unwrap(),
            ),
            (
                "text",
                frozen.text_features(&ids, &mask).unwrap(),
                tracked.text_features(&ids, &mask).unwrap(),
            ),
            (
                "composed",
                frozen.encoder.composed_query(&fv, &ids, &mask).unwrap().feature,
                tracked.encoder.composed_query(&tv, &ids, &mask).unwrap().feature,
            ),
            (
                "pass1",
                frozen
                    .encoder
                    .composed_query(&fv, &ids, &mask)
                    .unwrap()
                    .pass1_queries,
                tracked
                    .encoder
                    .composed_query(&tv, &ids, &mask)
                    .unwrap()
                    .pass1_queries,
            ),
            (
                "prompt",
                frozen.encoder.prompt_text_features(&prompt, &ids, &mask).unwrap(),
                tracked
                    .encoder
                    .prompt_text_features(&prompt, &ids, &mask)
                    .unwrap(),
            ),
        ];
        for (name, fast, dense) in pairs {
            let d = max_diff(&fast, &dense);
            assert!(d <= 2e-5, "{name} with lengths {lengths:?}: max |diff| = {d:e}");
        }
    }
}

#[test]
fn trimming_padding_changes_nothing() {
    let (_, tracked) = models();
    let cfg = tracked.config().clone();
    let dev = Device::Cpu;
    let size = cfg.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (4, 3, size, size), &dev).unwrap();
    let vision = tracked.vision_features(&pixels).unwrap();
    let vocab = cfg.qformer_config.vocab_size;
    // With a full-length fourth text nothing can be trimmed; without it, 8 columns go.
    let (ids, mask) = text(&[3, 4, 2, 12], 12, vocab);
    let full = tracked.encoder.composed_query(&vision, &ids, &mask).unwrap();
    let short = tracked
        .encoder
        .composed_query(
            &vision.narrow(0, 0, 3).unwrap(),
            &ids.narrow(0, 0, 3).unwrap(),
            &mask.narrow(0, 0, 3).unwrap(),
        )
        .unwrap();
    let d = max_diff(&full.feature.narrow(0, 0, 3).unwrap(), &short.feature);
    assert!(d <= 2e-5, "composed feature: max |diff| = {d:e}");
    let full = tracked.text_features(&ids, &mask).unwrap();
    let short = tracked
        .text_features(&ids.narrow(0, 0, 3).unwrap(), &mask.narrow(0, 0, 3).unwrap())
        .unwrap();
    let d = max_diff(&full.narrow(0, 0, 3).unwrap(), &short);
    assert!(d <= 2e-5, "text feature: max |diff| = {d:e}");
}

/// A freshly initialised tower (stage-0 pretraining starts from one) must be trainable end to
/// end: zero q/k weights would have zero gradient and freeze attention at uniform.
#[test]
fn fresh_vision_tower_attention_gets_gradients() {
    let dev = Device::Cpu;
    let cfg: Blip2Config =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("hf/config.json")).unwrap()).unwrap();
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let vision = df_encoders::VisionModel::new(&cfg.vision_config, vb.pp("vision_model")).unwrap();
    let s = cfg.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (2, 3, s, s), &dev).unwrap();
    let out = vision.forward(&pixels).unwrap();
    // A non-linear read-out, so that the gradient depends on how tokens mix.
    let loss = out.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let d = cfg.vision_config.hidden_size;
    let max_abs = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let qkv = &vars["vision_model.encoder.layers.0.self_attn.qkv.weight"];
    let g = grads.get(qkv).expect("qkv.weight has a gradient");
    for (part, i) in [("q", 0), ("k", 1)] {
        let w = qkv.as_tensor().narrow(0, i * d, d).unwrap();
        assert!(max_abs(&w) > 0.0, "{part} weights start at zero");
        assert!(
            max_abs(&g.narrow(0, i * d, d).unwrap()) > 0.0,
            "{part} gets no gradient"
        );
    }
    let pos = &vars["vision_model.embeddings.position_embedding"];
    assert!(max_abs(pos.as_tensor()) > 0.0, "positions start at zero");
}
