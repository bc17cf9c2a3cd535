//! An on-disk cache of frozen-ViT features per unique image, so that no image pays for the
//! ViT twice across runs (the ViT is frozen in every stage). Keyed by image and by the
//! model's fingerprint: a cache written by another model is ignored, never mixed in.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::{DetailFusion, DetailFusionError, Result};

const FEATURES: &str = "features";
const KEYS: &str = "keys";
const FINGERPRINT: &str = "fingerprint";

fn text(t: &Tensor) -> Option<String> {
    String::from_utf8(t.to_vec1::<u8>().ok()?).ok()
}

/// The cached features by key, or `None` when `path` is missing, unreadable or written for
/// another fingerprint.
pub(crate) fn read_cache(
    path: &Path,
    fingerprint: &str,
    device: &candle_core::Device,
) -> Option<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(path, device).ok()?;
    if text(tensors.get(FINGERPRINT)?)? != fingerprint {
        return None;
    }
    let keys = text(tensors.get(KEYS)?)?;
    let feats = tensors.get(FEATURES)?;
    let rows: Vec<&str> = if keys.is_empty() {
        vec![]
    } else {
        keys.split('\n').collect()
    };
    if feats.dim(0).ok()? != rows.len() {
        return None;
    }
    rows.iter()
        .enumerate()
        .map(|(i, k)| Some((k.to_string(), feats.get(i).ok()?)))
        .collect()
}

/// ViT features `[T, W]` for each key, read from `path` when it holds them for this model and
/// computed with `pixels(indices) -> [n, 3, S, S]` otherwise (in batches of 64); the file is
/// rewritten (atomically) when anything was computed.
pub fn cached_vit_features(
    model: &DetailFusion,
    keys: &[String],
    path: &Path,
    pixels: &dyn Fn(&[usize]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    if keys.iter().any(|k| k.contains('\n')) {
        return Err(DetailFusionError::Variant(
            "ViT cache keys cannot contain newlines".into(),
        ));
    }
    let fingerprint = model.fingerprint();
    let mut cache = read_cache(path, &fingerprint, model.device()).unwrap_or_default();
    let missing: Vec<usize> = (0..keys.len())
        .filter(|&i| !cache.contains_key(&keys[i]))
        .collect();
    for chunk in missing.chunks(64) {
        let f = model.vision_features(&pixels(chunk)?)?;
        for (j, &i) in chunk.iter().enumerate() {
            cache.insert(keys[i].clone(), f.get(j)?);
        }
    }
    if !missing.is_empty() {
        write_cache(path, &fingerprint, &cache)?;
    }
    Ok(keys.iter().map(|k| cache[k].clone()).collect())
}

/// Writes `known` (keys without newlines) with `fingerprint` to `path` atomically.
pub(crate) fn write_cache(path: &Path, fingerprint: &str, known: &HashMap<String, Tensor>) -> Result<()> {
    if known.keys().any(|k| k.contains('\n')) {
        return Err(DetailFusionError::Variant(
            "ViT cache keys cannot contain newlines".into(),
        ));
    }
    let mut names: Vec<&String> = known.keys().collect();
    names.sort();
    let cpu = candle_core::Device::Cpu;
    let feats = Tensor::stack(&names.iter().map(|k| &known[*k]).collect::<Vec<_>>(), 0)?.to_device(&cpu)?;
    let joined = names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n");
    let bytes = |s: &str| Tensor::new(s.as_bytes(), &cpu);
    let tensors = HashMap::from([
        (FEATURES.to_string(), feats),
        (KEYS.to_string(), bytes(&joined)?),
        (FINGERPRINT.to_string(), bytes(fingerprint)?),
    ]);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DetailFusionError::Io {
            path: dir.into(),
            source,
        })?;
    }
    crate::model::atomic_write(path, |tmp| candle_core::safetensors::save(&tensors, tmp))
}
