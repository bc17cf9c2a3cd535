//! Numerical parity with Hugging Face `transformers` (PyTorch) on tiny random checkpoints made
//! by `tools/gen_encoder_fixtures.py`, in every checkpoint layout we load.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use df_encoders::{Blip2Model, CheckpointFormat, LoadOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders")
}

fn load(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(file), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    df_encoders::nn::max_abs_diff(a, b).unwrap()
}

fn check(spec: &str, format: CheckpointFormat, prefix: &str) {
    let inputs = load("inputs.safetensors");
    let expected = load("expected.safetensors");
    let (model, ck) = Blip2Model::load(spec, &LoadOptions::default()).unwrap();
    assert_eq!(ck.format, format);
    let pixels = &inputs["pixel_values"];
    let ids = &inputs["input_ids"];
    let mask = &inputs["attention_mask"];
    let vision = model.vision_features(pixels).unwrap();
    let image = model.encoder.image_features(&vision).unwrap();
    let text = model.text_features(ids, mask).unwrap();
    let query = model.encoder.composed_query(&vision, ids, mask).unwrap();
    let prompt = model
        .encoder
        .prompt_text_features(&inputs["prompt_tokens"], ids, mask)
        .unwrap();
    let outputs = [
        ("vision_hidden", &vision),
        ("image_feats", &image),
        ("text_feats", &text),
        ("query_feats", &query.feature),
        ("query_pass1", &query.pass1_queries),
        ("prompt_feats", &prompt),
    ];
    for (name, got) in outputs {
        let want = &expected[&format!("{prefix}{name}")];
        let d = max_diff(got, want);
        assert!(d <= 1e-5, "{spec}: {name} max |diff| = {d:e}");
    }
}

fn spec(sub: &str) -> String {
    fixtures().join(sub).to_string_lossy().into_owned()
}

#[test]
fn hf_safetensors_matches_reference() {
    check(&spec("hf"), CheckpointFormat::HuggingFace, "");
}

#[test]
fn hf_sharded_matches_reference() {
    check(&spec("hf-sharded"), CheckpointFormat::HuggingFace, "");
}

#[test]
fn hf_fused_qkv_bias_matches_reference() {
    check(&spec("hf-v5"), CheckpointFormat::HuggingFace, "");
}

#[test]
fn hf_single_file_matches_reference() {
    check(&spec("hf/model.safetensors"), CheckpointFormat::HuggingFace, "");
}

#[test]
fn lavis_pth_matches_reference() {
    check(&spec("lavis.pth"), CheckpointFormat::Lavis, "lavis_");
}

#[test]
fn sprc_pt_matches_reference() {
    check(&spec("sprc.pt"), CheckpointFormat::Lavis, "lavis_");
}
