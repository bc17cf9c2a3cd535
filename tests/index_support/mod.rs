//! Synthetic galleries for the backend tests (no model: features are generated).
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use detailfusion::index::{FeatureDType, FlatIndex, Hit, IndexInfo};
use detailfusion::GalleryFeatures;

/// xorshift64* in `[-1, 1)`.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// What an index of `q` tokens of width `p` built by a (pretend) model `fingerprint` is.
pub fn info(fingerprint: &str, q: usize, p: usize) -> IndexInfo {
    IndexInfo {
        fingerprint: fingerprint.into(),
        config_hash: "synthetic".into(),
        dtype: FeatureDType::F32,
        q,
        p,
        per_branch: false,
        config: None,
    }
}

/// `n` images of `q` unit token vectors of width `p`, clustered like real features: images
/// scatter around a few cluster centres and their tokens around the image's centre.
pub fn clustered(n: usize, q: usize, p: usize, seed: u64) -> (Vec<String>, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    let clusters = (n / 8).max(1);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| {
            let mut c: Vec<f32> = (0..p).map(|_| rng.next()).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let mut values = Vec::with_capacity(n * q * p);
    for i in 0..n {
        let c = &centres[i % clusters];
        let mut img: Vec<f32> = c.iter().map(|x| x + 0.08 * rng.next()).collect();
        normalize(&mut img);
        for _ in 0..q {
            let mut t: Vec<f32> = img.iter().map(|x| x + 0.1 * rng.next()).collect();
            normalize(&mut t);
            values.extend(t);
        }
    }
    let names = (0..n).map(|i| format!("img{i:05}.png")).collect();
    (names, values)
}

/// `b` unit query vectors near random gallery tokens (so that results are not all ties).
pub fn queries(values: &[f32], q: usize, p: usize, b: usize, seed: u64) -> Tensor {
    let mut rng = Rng(seed | 1);
    let rows = values.len() / p;
    let mut out = Vec::with_capacity(b * p);
    for j in 0..b {
        let r = (j * 7919 + (seed as usize) * 31) % rows;
        let _ = q;
        let mut v: Vec<f32> = values[r * p..(r + 1) * p]
            .iter()
            .map(|x| x + 0.05 * rng.next())
            .collect();
        normalize(&mut v);
        out.extend(v);
    }
    Tensor::from_vec(out, (b, p), &Device::Cpu).unwrap()
}

/// `values` of `names.len()` images as gallery features `[n, q, p]`.
pub fn features(names: &[String], values: &[f32], q: usize, p: usize) -> GalleryFeatures {
    GalleryFeatures {
        tokens: Tensor::from_vec(values.to_vec(), (names.len(), q, p), &Device::Cpu).unwrap(),
        gm_tokens: None,
    }
}

/// The exact reference.
pub fn flat(info: &IndexInfo, names: &[String], values: &[f32]) -> FlatIndex {
    FlatIndex::from_raw(info.clone(), names.to_vec(), values.to_vec(), None).unwrap()
}

/// Asserts the same names rank by rank (up to near-ties) and scores within `tol`.
pub fn assert_same_hits(got: &[Vec<Hit>], want: &[Vec<Hit>], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "query {j}: {} hits, want {}", g.len(), w.len());
        for (r, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a.score - b.score).abs() <= tol,
                "query {j} rank {r}: score {} vs {}",
                a.score,
                b.score
            );
            // Near-ties may swap places; otherwise the names must agree.
            let tie = w
                .iter()
                .filter(|h| (h.score - b.score).abs() <= tol.max(1e-6))
                .count()
                > 1;
            assert!(
                tie || a.name == b.name,
                "query {j} rank {r}: {} vs {}",
                a.name,
                b.name
            );
        }
    }
}

/// Recall@k of `got` against `want` (fraction of the exact top-k names found).
pub fn recall(got: &[Vec<Hit>], want: &[Vec<Hit>]) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for (g, w) in got.iter().zip(want) {
        total += w.len();
        found += w.iter().filter(|h| g.iter().any(|x| x.name == h.name)).count();
    }
    found as f64 / total.max(1) as f64
}

#[path = "../common/mod.rs"]
mod common;
pub use common::TestDir;

/// A fresh, empty directory under the temp dir, removed when the guard drops.
pub fn tmpdir(name: &str) -> TestDir {
    common::test_dir(&format!("backend-{name}"), true)
}
