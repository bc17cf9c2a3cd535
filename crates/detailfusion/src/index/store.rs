//! Feature storage of the flat index: owned `f32`/`f16` values or a tensor of a mapped file.

use std::sync::{Arc, OnceLock};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::error::{IndexError, Result};
use super::format::Checksum;
use super::kernel::{self, f16_to_f32, f32_to_f16, Rows};
use super::FeatureDType;

/// `[B, …]` values of a tensor as a flat `f32` vector on the CPU.
pub(super) fn to_cpu_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// `[N·Q, P]` features: owned, or a tensor of a mapped file.
pub(super) enum StoreData {
    /// Owned `f32`, a contiguous CPU tensor (also what GEMM uses).
    F32(Tensor),
    /// Owned half precision bits.
    F16(Vec<u16>),
    /// Little-endian data inside a mapped index file.
    Mapped {
        file: Arc<MmapedSafetensors>,
        tensor: &'static str,
        dtype: FeatureDType,
    },
}

pub(super) struct Store {
    pub(super) data: StoreData,
    /// `f32` tensor for the GEMM path of non-`F32` stores, made on first use.
    gemm: OnceLock<Tensor>,
}

/// Owned values of a store, for editing.
pub(super) enum Raw {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

#[allow(unsafe_code)]
pub(super) fn cast_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every 4-byte pattern is a valid `f32`; `align_to` only yields the middle part at
    // an address aligned for `f32`, and we use it only when nothing is left over on either side.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

#[allow(unsafe_code)]
pub(super) fn cast_u16(bytes: &[u8]) -> Option<&[u16]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every 2-byte pattern is a valid `u16`; see `cast_f32` for the alignment.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

impl Store {
    pub(super) fn new(data: StoreData) -> Self {
        Self {
            data,
            gemm: OnceLock::new(),
        }
    }

    pub(super) fn from_raw(raw: Raw, p: usize) -> Result<Self> {
        Ok(Self::new(match raw {
            Raw::F32(v) => {
                let rows = v.len() / p.max(1);
                StoreData::F32(Tensor::from_vec(v, (rows, p), &Device::Cpu)?)
            }
            Raw::F16(v) => StoreData::F16(v),
        }))
    }

    pub(super) fn dtype(&self) -> FeatureDType {
        match &self.data {
            StoreData::F32(_) => FeatureDType::F32,
            StoreData::F16(_) => FeatureDType::F16,
            StoreData::Mapped { dtype, .. } => *dtype,
        }
    }

    pub(super) fn with_rows<R>(&self, f: impl FnOnce(Rows<'_>) -> R) -> Result<R> {
        match &self.data {
            StoreData::F32(t) => kernel::tensor_slice(t, |s| f(Rows::F32(s))),
            StoreData::F16(v) => Ok(f(Rows::F16(v))),
            StoreData::Mapped { file, tensor, dtype } => {
                let bytes = file.get(tensor)?.data();
                let bad = || IndexError::input(tensor, "mapped data is not aligned");
                Ok(match dtype {
                    FeatureDType::F32 => f(Rows::F32(cast_f32(bytes).ok_or_else(bad)?)),
                    FeatureDType::F16 => f(Rows::F16(cast_u16(bytes).ok_or_else(bad)?)),
                })
            }
        }
    }

    pub(super) fn raw(&self) -> Result<Raw> {
        self.with_rows(|r| match r {
            Rows::F32(s) => Raw::F32(s.to_vec()),
            Rows::F16(s) => Raw::F16(s.to_vec()),
        })
    }

    pub(super) fn to_f32(&self) -> Result<Vec<f32>> {
        self.with_rows(|r| match r {
            Rows::F32(s) => s.to_vec(),
            Rows::F16(s) => s.iter().map(|&h| f16_to_f32(h)).collect(),
        })
    }

    pub(super) fn gemm_tensor(&self, p: usize) -> Result<Tensor> {
        if let StoreData::F32(t) = &self.data {
            return Ok(t.clone());
        }
        if let Some(t) = self.gemm.get() {
            return Ok(t.clone());
        }
        let v = self.to_f32()?;
        let rows = v.len() / p;
        let t = Tensor::from_vec(v, (rows, p), &Device::Cpu)?;
        Ok(self.gemm.get_or_init(|| t).clone())
    }

    pub(super) fn append(&mut self, values: &[f32], p: usize) -> Result<()> {
        let raw = match self.raw()? {
            Raw::F32(mut v) => {
                v.extend_from_slice(values);
                Raw::F32(v)
            }
            Raw::F16(mut v) => {
                v.extend(values.iter().map(|&x| f32_to_f16(x)));
                Raw::F16(v)
            }
        };
        *self = Self::from_raw(raw, p)?;
        Ok(())
    }

    pub(super) fn retain(&mut self, keep: &[bool], per_image: usize, p: usize) -> Result<()> {
        fn filter<T: Copy>(v: &[T], keep: &[bool], per: usize) -> Vec<T> {
            v.chunks_exact(per)
                .zip(keep)
                .filter(|(_, k)| **k)
                .flat_map(|(c, _)| c.iter().copied())
                .collect()
        }
        let raw = self.with_rows(|r| match r {
            Rows::F32(s) => Raw::F32(filter(s, keep, per_image)),
            Rows::F16(s) => Raw::F16(filter(s, keep, per_image)),
        })?;
        *self = Self::from_raw(raw, p)?;
        Ok(())
    }

    pub(super) fn checksum(&self, sum: &mut Checksum) -> Result<()> {
        match &self.data {
            StoreData::Mapped { file, tensor, .. } => sum.update(file.get(tensor)?.data()),
            _ => self.with_rows(|r| {
                let mut buf = Vec::with_capacity(1 << 16);
                match r {
                    Rows::F32(s) => s.chunks(1 << 14).for_each(|c| {
                        buf.clear();
                        c.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                        sum.update(&buf);
                    }),
                    Rows::F16(s) => s.chunks(1 << 14).for_each(|c| {
                        buf.clear();
                        c.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                        sum.update(&buf);
                    }),
                }
            })?,
        }
        Ok(())
    }
}
