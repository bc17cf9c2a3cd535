//! Helpers shared by the facade's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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

/// A path under the temp dir that is removed (with everything in it) when dropped.
pub struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh path under the temp dir, unique per test process; `create` makes the directory,
/// otherwise nothing exists there yet.
pub fn test_dir(name: &str, create: bool) -> TestDir {
    let d = std::env::temp_dir().join(format!("df-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    if create {
        std::fs::create_dir_all(&d).unwrap();
    }
    TestDir(d)
}

/// A fresh, not yet existing path under the temp dir, removed when the guard drops.
pub fn tmpdir(name: &str) -> TestDir {
    test_dir(name, false)
}
