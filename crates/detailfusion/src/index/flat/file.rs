//! Saving and loading the flat index file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;

use super::super::format::{self, Checksum, DataOut, TensorOut};
use super::super::kernel::Rows;
use super::super::store::{cast_f32, cast_u16, Raw, Store, StoreData};
use super::super::{FeatureDType, IndexError, IndexInfo, Result, FORMAT_NAME, FORMAT_VERSION};
use super::FlatIndex;
use crate::DetailFusion;

impl FlatIndex {
    // -----------------------------------------------------------------------------------------
    // Files.

    /// Writes the index to `path` (a temporary file renamed into place, so that a mapped
    /// index of the same path stays valid).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let info = &self.info;
        let n = self.len();
        let mut name_offsets = Vec::with_capacity(n + 1);
        let mut names = Vec::new();
        name_offsets.push(0i64);
        for name in &self.names {
            names.extend_from_slice(name.as_bytes());
            name_offsets.push(names.len() as i64);
        }
        let mut names_sum = Checksum::default();
        name_offsets
            .iter()
            .for_each(|o| names_sum.update(&o.to_le_bytes()));
        names_sum.update(&names);
        let mut features_sum = Checksum::default();
        self.tokens.checksum(&mut features_sum)?;
        if let Some(g) = &self.gm_tokens {
            g.checksum(&mut features_sum)?;
        }
        let mut meta = BTreeMap::new();
        let mut put = |k: &str, v: String| meta.insert(k.to_string(), v);
        put("format", FORMAT_NAME.into());
        put("version", FORMAT_VERSION.to_string());
        put("fingerprint", info.fingerprint.clone());
        put("config_hash", info.config_hash.clone());
        put("dtype", info.dtype.as_str().into());
        put("q", info.q.to_string());
        put("p", info.p.to_string());
        put("count", n.to_string());
        put("per_branch", info.per_branch.to_string());
        put("names_checksum", names_sum.hex());
        put("features_checksum", features_sum.hex());
        if let Some(c) = &info.config {
            put("config", c.clone());
        }
        let shape = vec![n, info.q, info.p];
        fn data(r: Rows<'_>) -> DataOut<'_> {
            match r {
                Rows::F32(s) => DataOut::F32(s),
                Rows::F16(s) => DataOut::F16(s),
            }
        }
        let write = |tok: Rows<'_>, gm: Option<Rows<'_>>| -> Result<()> {
            let mut tensors = vec![TensorOut {
                name: "tokens",
                shape: shape.clone(),
                data: data(tok),
            }];
            if let Some(g) = gm {
                tensors.push(TensorOut {
                    name: "gm_tokens",
                    shape: shape.clone(),
                    data: data(g),
                });
            }
            tensors.push(TensorOut {
                name: "name_offsets",
                shape: vec![n + 1],
                data: DataOut::I64(&name_offsets),
            });
            tensors.push(TensorOut {
                name: "names",
                shape: vec![names.len()],
                data: DataOut::U8(&names),
            });
            format::write_file(path, &meta, &tensors)
        };
        self.tokens.with_rows(|tok| match &self.gm_tokens {
            Some(g) => g.with_rows(|gm| write(tok, Some(gm)))?,
            None => write(tok, None),
        })?
    }

    /// Opens an index file, memory-mapping it: searches read the mapped features in place.
    /// Errors: [`IndexError::Format`] for another kind of file, [`IndexError::Version`],
    /// [`IndexError::Corrupt`] for a truncated or damaged one (naming the entry).
    ///
    /// The file must not be modified in place while it is mapped ([`FlatIndex::save`]
    /// replaces files by renaming, which is safe).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let header = format::read_header(path)?;
        let dtype: FeatureDType = header
            .meta(path, "dtype")?
            .parse()
            .map_err(|e| IndexError::corrupt(path, "dtype", e))?;
        let q = header.meta_usize(path, "q")?;
        let p = header.meta_usize(path, "p")?;
        let count = header.meta_usize(path, "count")?;
        let per_branch = match header.meta(path, "per_branch")? {
            "true" => true,
            "false" => false,
            other => return Err(IndexError::corrupt(path, "per_branch", format!("`{other}`"))),
        };
        if q == 0 || p == 0 {
            return Err(IndexError::corrupt(path, "q", "Q and P must be positive"));
        }
        let info = IndexInfo {
            fingerprint: header.meta(path, "fingerprint")?.to_string(),
            config_hash: header.meta(path, "config_hash")?.to_string(),
            dtype,
            q,
            p,
            per_branch,
            config: header.metadata.get("config").cloned(),
        };
        let expect = |name: &str, dtype: &str, shape: &[usize]| -> Result<()> {
            let t = header
                .tensors
                .get(name)
                .ok_or_else(|| IndexError::corrupt(path, name, "tensor missing"))?;
            if t.dtype != dtype || t.shape != shape {
                return Err(IndexError::corrupt(
                    path,
                    name,
                    format!(
                        "is {} {:?}, the metadata says {dtype} {shape:?}",
                        t.dtype, t.shape
                    ),
                ));
            }
            Ok(())
        };
        let fshape = [count, q, p];
        expect("tokens", dtype.safetensors(), &fshape)?;
        if per_branch {
            expect("gm_tokens", dtype.safetensors(), &fshape)?;
        } else if header.tensors.contains_key("gm_tokens") {
            return Err(IndexError::corrupt(
                path,
                "gm_tokens",
                "present but per_branch is false",
            ));
        }
        expect("name_offsets", "I64", &[count + 1])?;
        let names_len = header
            .tensors
            .get("names")
            .map(|t| t.end - t.begin)
            .unwrap_or_default();
        expect("names", "U8", &[names_len])?;

        // SAFETY: the mapping is only read. The file must not be modified in place while the
        // index lives; index files are replaced by rename (`save`), which leaves the mapped
        // inode intact.
        #[allow(unsafe_code)]
        let file =
            unsafe { MmapedSafetensors::new(path) }.map_err(|e| IndexError::corrupt(path, "file", e))?;
        let file = Arc::new(file);

        // Names.
        let view = |name: &str| file.get(name).map_err(|e| IndexError::corrupt(path, name, e));
        let offsets_bytes = view("name_offsets")?.data();
        let names_bytes = view("names")?.data();
        let mut sum = Checksum::default();
        sum.update(offsets_bytes);
        sum.update(names_bytes);
        if sum.hex() != header.meta(path, "names_checksum")? {
            return Err(IndexError::corrupt(path, "names", "checksum mismatch"));
        }
        let offsets: Vec<i64> = offsets_bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let mut names = Vec::with_capacity(count);
        for (i, w) in offsets.windows(2).enumerate() {
            let (a, b) = (w[0], w[1]);
            if a < 0 || b < a || b as usize > names_bytes.len() || (i == 0 && a != 0) {
                return Err(IndexError::corrupt(
                    path,
                    "name_offsets",
                    format!("bad offset for image {i}"),
                ));
            }
            let name = std::str::from_utf8(&names_bytes[a as usize..b as usize])
                .map_err(|_| IndexError::corrupt(path, "names", format!("name {i} is not UTF-8")))?;
            names.push(name.to_string());
        }
        if offsets.last().copied() != Some(names_bytes.len() as i64) {
            return Err(IndexError::corrupt(
                path,
                "name_offsets",
                "do not end at the end of `names`",
            ));
        }

        let mapped = |tensor: &'static str| -> Result<Store> {
            let v = view(tensor)?;
            if v.shape() != fshape {
                return Err(IndexError::corrupt(path, tensor, "shape changed while mapping"));
            }
            let bytes = v.data();
            let ok = match dtype {
                FeatureDType::F32 => cast_f32(bytes).is_some(),
                FeatureDType::F16 => cast_u16(bytes).is_some(),
            };
            if ok {
                return Ok(Store::new(StoreData::Mapped {
                    file: file.clone(),
                    tensor,
                    dtype,
                }));
            }
            // Unaligned or big-endian: decode into memory.
            let raw = match dtype {
                FeatureDType::F32 => Raw::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                ),
                FeatureDType::F16 => Raw::F16(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                ),
            };
            Store::from_raw(raw, p)
        };
        let mut index = Self::empty(info);
        index
            .set_names(names)
            .map_err(|e| IndexError::corrupt(path, "names", e))?;
        index.tokens = mapped("tokens")?;
        index.gm_tokens = per_branch.then(|| mapped("gm_tokens")).transpose()?;
        index.path = Some(path.to_path_buf());
        index.features_checksum = Some(header.meta(path, "features_checksum")?.to_string());
        Ok(index)
    }

    /// [`FlatIndex::load`], then [`FlatIndex::check_model`].
    pub fn load_for(path: impl AsRef<Path>, model: &DetailFusion) -> Result<Self> {
        let index = Self::load(path)?;
        index.check_model(model)?;
        Ok(index)
    }

    /// Reads all feature data once and checks it against the checksum stored in the file
    /// (loading only checks the header and the names). `Ok` for an index not read from a file
    /// or changed since.
    pub fn verify(&self) -> Result<()> {
        let Some(want) = &self.features_checksum else {
            return Ok(());
        };
        let mut sum = Checksum::default();
        self.tokens.checksum(&mut sum)?;
        if let Some(g) = &self.gm_tokens {
            g.checksum(&mut sum)?;
        }
        if &sum.hex() != want {
            let path = self.path.clone().unwrap_or_default();
            return Err(IndexError::corrupt(&path, "tokens", "feature checksum mismatch"));
        }
        Ok(())
    }
}
