//! Bad checkpoints and configs give errors that name the file and the tensor or key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use df_encoders::{Blip2Config, Blip2Model, EncoderError, LoadOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders")
}

/// A fresh copy of the `hf/` fixture in a temporary directory.
fn hf_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("hf").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn load_err(spec: &Path) -> String {
    match Blip2Model::load(&spec.to_string_lossy(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded although it is broken", spec.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_names_tensor_and_file() {
    let tmp = hf_copy();
    let dir = tmp.path();
    let mut w = weights(dir);
    let name = "qformer.encoder.layer.1.output_query.dense.weight";
    assert!(w.remove(name).is_some());
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let msg = load_err(dir);
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn wrong_shape_names_tensor_and_file() {
    let tmp = hf_copy();
    let dir = tmp.path();
    let mut w = weights(dir);
    let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
    w.insert(
        name.into(),
        Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let msg = load_err(dir);
    assert!(msg.contains(name) && msg.contains("shape"), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn config_without_needed_key_names_key_and_file() {
    let tmp = hf_copy();
    let dir = tmp.path();
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_object_mut().unwrap().remove("qformer_config");
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let msg = load_err(dir);
    assert!(
        msg.contains("qformer_config") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn inconsistent_config_names_key() {
    let mut cfg = Blip2Config::default();
    cfg.qformer_config.num_attention_heads = 7;
    let err = cfg.validate().unwrap_err();
    assert!(
        matches!(err, EncoderError::InvalidConfig { ref key, .. } if key == "qformer_config.num_attention_heads")
    );
    let bad = r#"{"vision_config": {"hidden_size": "wide"}, "qformer_config": {}}"#;
    let msg = Blip2Config::from_json_str(bad).unwrap_err().to_string();
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn truncated_weights_name_the_file() {
    let tmp = hf_copy();
    let dir = tmp.path();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir);
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn missing_shard_names_the_shard() {
    let dir_guard = tempfile::tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(fixtures().join("hf-sharded").join(f), dir.join(f)).unwrap();
    }
    let msg = load_err(&dir);
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

#[test]
fn missing_path_and_empty_dir_are_named() {
    let msg = load_err(Path::new("/nonexistent/dir/blip2.pth"));
    assert!(msg.contains("/nonexistent/dir/blip2.pth"), "{msg}");
    let dir_guard = tempfile::tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    let msg = load_err(&dir);
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn pickle_without_state_dict_is_refused() {
    // A zip that is not a torch checkpoint at all.
    let dir_guard = tempfile::tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    let path = dir.join("garbage.pth");
    std::fs::write(&path, b"not a zip file").unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("garbage.pth"), "{msg}");
}

#[test]
fn hub_cache_layout_loads_and_absent_repo_is_named() {
    // One test, because the cache location is process-wide environment.
    // The hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}.
    let home_guard = tempfile::tempdir().unwrap();
    let home = home_guard.path().to_path_buf();
    let repo = home.join("hub/models--tiny--blip2");
    let snap = repo.join("snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("hf").join(f), snap.join(f)).unwrap();
    }
    std::env::set_var("HF_HOME", &home);
    let (_, ck) = Blip2Model::load("tiny/blip2", &LoadOptions::default()).unwrap();
    assert!(ck.tokenizer.is_some());
    assert_eq!(ck.location, PathBuf::from("hub:tiny/blip2"));

    let err = Blip2Model::load("Salesforce/blip2-itm-vit-g", &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Salesforce/blip2-itm-vit-g") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn half_precision_weights_load_and_agree() {
    let spec = fixtures().join("hf").to_string_lossy().into_owned();
    let inputs = candle_core::safetensors::load(fixtures().join("inputs.safetensors"), &Device::Cpu).unwrap();
    let (m32, _) = Blip2Model::load(&spec, &LoadOptions::default()).unwrap();
    let f32_feats = m32
        .text_features(&inputs["input_ids"], &inputs["attention_mask"])
        .unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let opts = LoadOptions {
            dtype,
            ..Default::default()
        };
        let (m, _) = Blip2Model::load(&spec, &opts).unwrap();
        let feats = m
            .text_features(&inputs["input_ids"], &inputs["attention_mask"])
            .unwrap();
        assert_eq!(feats.dtype(), dtype);
        let d = df_encoders::nn::max_abs_diff(&feats, &f32_feats).unwrap();
        assert!(d < 0.1, "{dtype:?}: max diff {d}");
    }
}
