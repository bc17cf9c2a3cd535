//! Helpers shared by the facade's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;

/// The tiny BLIP-2 fixtures of `tools/gen_encoder_fixtures.py`.
pub fn enc_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/df-encoders/tests/fixtures/encoders")
}

/// The Hugging Face layout of the tiny checkpoint, as a `--model` spec.
pub fn hf() -> String {
    enc_fixtures().join("hf").to_string_lossy().into_owned()
}

/// max |a − b|.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    detailfusion::encoders::nn::max_abs_diff(a, b).unwrap()
}

/// A fresh, empty path under the temp dir, unique per test process.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("df-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
