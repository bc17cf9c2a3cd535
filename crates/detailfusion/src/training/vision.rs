//! The frozen ViT of training, in its own dtype (mixed precision: the ViT runs in bf16/f16
//! while every trainable weight and the optimiser state stay f32), and an on-disk cache of
//! its outputs keyed by image and by the ViT alone, so that all three stages share it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use df_encoders::VisionModel;

use crate::{DetailFusion, Result};

/// A copy of a model's frozen ViT in `dtype`.
pub struct FrozenVision {
    vision: VisionModel,
    dtype: DType,
    fingerprint: String,
    device: candle_core::Device,
}

impl FrozenVision {
    /// Copies the `vision_model.*` weights of `model` into a tower running in `dtype`.
    pub fn new(model: &DetailFusion, dtype: DType) -> Result<Self> {
        let tensors: HashMap<String, Tensor> = model
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| n.starts_with("vision_model."))
            .collect();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        // FNV-1a over names, shapes, a sample of values, the dtype and the image size.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        feed(format!("{dtype:?}/{:?}", model.config().image_processor).as_bytes());
        for name in names {
            let t = &tensors[name];
            feed(name.as_bytes());
            feed(format!("{:?}", t.dims()).as_bytes());
            let flat = t.flatten_all()?.to_dtype(DType::F32)?;
            let n = flat.elem_count();
            let step = (n / 16).max(1);
            let v = flat.to_vec1::<f32>()?;
            for x in v.iter().step_by(step) {
                feed(&x.to_le_bytes());
            }
        }
        let fingerprint = format!("{h:016x}");
        let vb = VarBuilder::from_tensors(tensors, dtype, model.device());
        let vision = VisionModel::new(&model.config().blip2.vision_config, vb.pp("vision_model"))?;
        Ok(Self {
            vision,
            dtype,
            fingerprint,
            device: model.device().clone(),
        })
    }

    /// The dtype the tower runs in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Identity of the tower and its dtype (16 hex digits).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `[B, 3, S, S]` pixels → features `[B, T, W]` in the tower's dtype (no gradient).
    pub fn features(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision.forward(pixels)?.detach())
    }

    /// Features `[T, W]` (tower dtype) of every key, read from `cache` when it holds them for
    /// this tower and computed with `pixels(indices) -> [n, 3, S, S]` otherwise, in batches of
    /// `batch`; the cache is rewritten atomically when anything was computed.
    pub fn cached_features(
        &self,
        keys: &[String],
        cache: &Path,
        batch: usize,
        pixels: &dyn Fn(&[usize]) -> Result<Tensor>,
        log: &dyn Fn(&str),
    ) -> Result<Vec<Tensor>> {
        let mut known =
            crate::vit_cache::read_cache(cache, &self.fingerprint, &self.device).unwrap_or_default();
        let missing: Vec<usize> = (0..keys.len())
            .filter(|&i| !known.contains_key(&keys[i]))
            .collect();
        if !missing.is_empty() {
            log(&format!(
                "ViT ({:?}): {} of {} images to encode",
                self.dtype,
                missing.len(),
                keys.len()
            ));
        }
        for (n, chunk) in missing.chunks(batch.max(1)).enumerate() {
            let f = self.features(&pixels(chunk)?)?;
            for (j, &i) in chunk.iter().enumerate() {
                known.insert(keys[i].clone(), f.get(j)?);
            }
            if n % 50 == 49 {
                log(&format!("ViT: {}/{}", (n + 1) * batch, missing.len()));
            }
        }
        if !missing.is_empty() {
            crate::vit_cache::write_cache(cache, &self.fingerprint, &known)?;
        }
        Ok(keys.iter().map(|k| known[k].clone()).collect())
    }
}
