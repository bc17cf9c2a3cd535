//! The exact flat index: `[N, Q, P]` features in one safetensors file, memory-mapped when
//! loaded, scanned (small batches) or multiplied (large batches) in full for every query.

mod file;
mod gallery;
mod search;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::build;
use super::error::{IndexError, Result};
use super::kernel::{self, f32_to_f16};
use super::store::{to_cpu_f32, Raw, Store, StoreData};
use super::{FailedImage, FeatureDType, IndexInfo, IndexOptions, IndexProgress, IndexReport};
use crate::{DetailFusion, GalleryFeatures};

pub use search::Searcher;

// ---------------------------------------------------------------------------------------------
// The index.

/// A gallery of images encoded by one model: names plus `[N, Q, P]` features (and GM's own for
/// per-branch galleries), owned or memory-mapped from an index file.
pub struct FlatIndex {
    info: IndexInfo,
    names: Vec<String>,
    positions: HashMap<String, usize>,
    tokens: Store,
    gm_tokens: Option<Store>,
    path: Option<PathBuf>,
    /// Checksum of the feature data read from the file, while unchanged since.
    features_checksum: Option<String>,
}

impl std::fmt::Debug for FlatIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatIndex")
            .field("info", &self.info)
            .field("len", &self.len())
            .field("path", &self.path)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl FlatIndex {
    /// An empty index for `model`'s gallery features stored as `dtype`.
    pub fn new(model: &DetailFusion, dtype: FeatureDType) -> Self {
        Self::empty(IndexInfo::for_model(model, dtype))
    }

    fn empty(info: IndexInfo) -> Self {
        let store = || {
            Store::new(match info.dtype {
                FeatureDType::F32 => StoreData::F32(
                    Tensor::zeros((0, info.p), DType::F32, &Device::Cpu).expect("empty tensor"),
                ),
                FeatureDType::F16 => StoreData::F16(Vec::new()),
            })
        };
        Self {
            tokens: store(),
            gm_tokens: info.per_branch.then(store),
            info,
            names: Vec::new(),
            positions: HashMap::new(),
            path: None,
            features_checksum: None,
        }
    }

    /// An index over features computed elsewhere: `tokens` (and `gm_tokens` when
    /// `info.per_branch`) hold `names.len() · Q · P` values, image-major. The `f32` values are
    /// kept without a copy (or converted for `f16`).
    pub fn from_raw(
        info: IndexInfo,
        names: Vec<String>,
        tokens: Vec<f32>,
        gm_tokens: Option<Vec<f32>>,
    ) -> Result<Self> {
        let want = names.len() * info.q * info.p;
        if info.q == 0 || info.p == 0 {
            return Err(IndexError::input("info", "Q and P must be positive"));
        }
        if tokens.len() != want || gm_tokens.as_ref().is_some_and(|g| g.len() != want) {
            return Err(IndexError::input(
                "tokens",
                format!("expected {want} values ({} images × Q × P)", names.len()),
            ));
        }
        if gm_tokens.is_some() != info.per_branch {
            return Err(IndexError::input("gm_tokens", "given iff info.per_branch"));
        }
        let dtype = info.dtype;
        let raw = |v: Vec<f32>| match dtype {
            FeatureDType::F32 => Raw::F32(v),
            FeatureDType::F16 => Raw::F16(v.iter().map(|&x| f32_to_f16(x)).collect()),
        };
        let mut index = Self::empty(info);
        index.check_values(&names, &tokens)?;
        if let Some(g) = &gm_tokens {
            index.check_values(&names, g)?;
        }
        index.set_names(names)?;
        index.tokens = Store::from_raw(raw(tokens), index.info.p)?;
        index.gm_tokens = gm_tokens
            .map(|g| Store::from_raw(raw(g), index.info.p))
            .transpose()?;
        Ok(index)
    }

    fn set_names(&mut self, names: Vec<String>) -> Result<()> {
        let mut positions = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if positions.insert(n.clone(), i).is_some() {
                return Err(IndexError::Duplicate { name: n.clone() });
            }
        }
        self.names = names;
        self.positions = positions;
        Ok(())
    }

    /// Encodes every image under `dir` (recursively; any format the `image` crate reads here,
    /// recognised by extension or content) with `model`. Images that cannot be read are left
    /// out and listed in the report; a folder without any readable image is an
    /// [`IndexError::EmptyGallery`] error.
    pub fn build(
        model: &DetailFusion,
        dir: impl AsRef<Path>,
        opts: &IndexOptions,
    ) -> Result<(Self, IndexReport)> {
        let mut print = stderr_progress(opts.progress);
        Self::build_with_progress(model, dir, opts, &mut print)
    }

    /// [`FlatIndex::build`] reporting progress to `progress` after each batch.
    pub fn build_with_progress(
        model: &DetailFusion,
        dir: impl AsRef<Path>,
        opts: &IndexOptions,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<(Self, IndexReport)> {
        let dir = dir.as_ref();
        let mut index = Self::new(model, opts.dtype);
        let report = index.add_folder_with_progress(model, dir, opts, progress)?;
        if index.is_empty() {
            return Err(IndexError::EmptyGallery {
                dir: dir.to_path_buf(),
                failed: report.failed.len(),
            });
        }
        Ok((index, report))
    }

    /// Adds the images under `dir` that the index does not hold yet (by name, relative to
    /// `dir`), leaving the others untouched.
    pub fn add_folder(
        &mut self,
        model: &DetailFusion,
        dir: impl AsRef<Path>,
        opts: &IndexOptions,
    ) -> Result<IndexReport> {
        let mut print = stderr_progress(opts.progress);
        self.add_folder_with_progress(model, dir, opts, &mut print)
    }

    /// [`FlatIndex::add_folder`] reporting progress to `progress`.
    pub fn add_folder_with_progress(
        &mut self,
        model: &DetailFusion,
        dir: impl AsRef<Path>,
        opts: &IndexOptions,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<IndexReport> {
        let dir = dir.as_ref();
        self.check_model(model)?;
        let (todo, mut report) = build::pending_images(dir, |name| self.positions.contains_key(name))?;
        self.encode_files(model, todo, opts, &mut report, progress)?;
        Ok(report)
    }

    /// Adds image files (names: their paths relative to `root`, `/`-separated). A name already
    /// in the index is an [`IndexError::Duplicate`] error (nothing is added); unreadable files
    /// are listed in the report.
    pub fn add_images<P: AsRef<Path>>(
        &mut self,
        model: &DetailFusion,
        root: impl AsRef<Path>,
        files: &[P],
        opts: &IndexOptions,
    ) -> Result<IndexReport> {
        let root = root.as_ref();
        self.check_model(model)?;
        let mut report = IndexReport::default();
        let mut todo = Vec::new();
        let mut fresh = std::collections::HashSet::new();
        for f in files {
            let path = root.join(f.as_ref());
            match build::relative_name(root, &path) {
                Ok(name) if self.positions.contains_key(&name) || !fresh.insert(name.clone()) => {
                    return Err(IndexError::Duplicate { name })
                }
                Ok(name) => todo.push((path, name)),
                Err(message) => report.failed.push(FailedImage { path, message }),
            }
        }
        let mut print = stderr_progress(opts.progress);
        self.encode_files(model, todo, opts, &mut report, &mut print)?;
        Ok(report)
    }

    fn encode_files(
        &mut self,
        model: &DetailFusion,
        todo: Vec<(PathBuf, String)>,
        opts: &IndexOptions,
        report: &mut IndexReport,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<()> {
        let proc = &model.config().image_processor;
        let s = proc.image_size;
        let threads = kernel::thread_count(opts.threads);
        let total = todo.len();
        let failed_before = report.failed.len();
        let mut names = Vec::new();
        let mut tokens = Vec::new();
        let mut gm_tokens = Vec::new();
        let mut processed = 0;
        for batch in todo.chunks(opts.batch_size.max(1)) {
            let paths: Vec<PathBuf> = batch.iter().map(|(p, _)| p.clone()).collect();
            let mut pixels = Vec::new();
            let mut ok = 0;
            for ((path, name), r) in batch.iter().zip(build::decode_images(proc, &paths, threads)) {
                match r {
                    Ok(v) => {
                        pixels.extend_from_slice(&v);
                        names.push(name.clone());
                        ok += 1;
                    }
                    Err(message) => report.failed.push(FailedImage {
                        path: path.clone(),
                        message,
                    }),
                }
            }
            if ok > 0 {
                let x = Tensor::from_vec(pixels, (ok, 3, s, s), model.device())?;
                let f = model.encode_images(&x)?;
                self.check_features(&f, ok)?;
                tokens.extend(to_cpu_f32(&f.tokens)?);
                if let Some(g) = &f.gm_tokens {
                    gm_tokens.extend(to_cpu_f32(g)?);
                }
            }
            processed += batch.len();
            progress(&IndexProgress {
                processed,
                total,
                indexed: names.len(),
                failed: report.failed.len() - failed_before,
            });
        }
        if !names.is_empty() {
            self.append(
                names.clone(),
                &tokens,
                self.info.per_branch.then_some(&gm_tokens[..]),
            )?;
        }
        report.indexed.extend(names);
        Ok(())
    }

    fn check_features(&self, f: &GalleryFeatures, n: usize) -> Result<()> {
        let want = [n, self.info.q, self.info.p];
        let bad = |what: &str, dims: &[usize]| {
            IndexError::input(what, format!("model gave {dims:?}, the index holds {want:?}"))
        };
        if f.tokens.dims() != want {
            return Err(bad("tokens", f.tokens.dims()));
        }
        match (&f.gm_tokens, self.info.per_branch) {
            (Some(g), true) if g.dims() != want => Err(bad("gm_tokens", g.dims())),
            (Some(_), true) | (None, false) => Ok(()),
            (Some(_), false) => Err(IndexError::input("gm_tokens", "the index has no GM gallery")),
            (None, true) => Err(IndexError::input(
                "gm_tokens",
                "the index needs GM gallery features",
            )),
        }
    }

    /// Refuses non-finite feature values (and, for `f16`, values beyond its range), naming
    /// the image.
    fn check_values(&self, names: &[String], values: &[f32]) -> Result<()> {
        let limit = match self.info.dtype {
            FeatureDType::F32 => f32::MAX,
            FeatureDType::F16 => 65504.0,
        };
        let per = self.info.q * self.info.p;
        for (name, v) in names.iter().zip(values.chunks(per.max(1))) {
            if v.iter().any(|x| x.is_nan() || x.abs() > limit) {
                return Err(IndexError::input(
                    "features",
                    format!(
                        "image `{name}` has a feature value that is not finite (or beyond {})",
                        self.info.dtype
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds already encoded images (`features` as [`DetailFusion::encode_images`] gives them).
    /// The caller vouches that they come from the index's model.
    pub fn add_features(&mut self, names: Vec<String>, features: &GalleryFeatures) -> Result<()> {
        self.check_features(features, names.len())?;
        let tokens = to_cpu_f32(&features.tokens)?;
        let gm = features.gm_tokens.as_ref().map(to_cpu_f32).transpose()?;
        self.append(names, &tokens, gm.as_deref())
    }

    fn append(&mut self, names: Vec<String>, tokens: &[f32], gm_tokens: Option<&[f32]>) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if self.positions.contains_key(n) || !seen.insert(n) {
                return Err(IndexError::Duplicate { name: n.clone() });
            }
        }
        self.check_values(&names, tokens)?;
        if let Some(g) = gm_tokens {
            self.check_values(&names, g)?;
        }
        let p = self.info.p;
        self.tokens.append(tokens, p)?;
        if let (Some(store), Some(g)) = (self.gm_tokens.as_mut(), gm_tokens) {
            store.append(g, p)?;
        }
        for n in names {
            self.positions.insert(n.clone(), self.names.len());
            self.names.push(n);
        }
        self.features_checksum = None;
        Ok(())
    }

    /// Removes images by name; the others keep their features bit for bit (and their order).
    /// A name not in the index is an [`IndexError::UnknownImage`] error (nothing is removed).
    pub fn remove<S: AsRef<str>>(&mut self, names: &[S]) -> Result<()> {
        let mut keep = vec![true; self.len()];
        for n in names {
            let n = n.as_ref();
            let i = *self
                .positions
                .get(n)
                .ok_or_else(|| IndexError::UnknownImage { name: n.to_string() })?;
            keep[i] = false;
        }
        let (q, p) = (self.info.q, self.info.p);
        self.tokens.retain(&keep, q * p, p)?;
        if let Some(g) = self.gm_tokens.as_mut() {
            g.retain(&keep, q * p, p)?;
        }
        let names: Vec<String> = std::mem::take(&mut self.names)
            .into_iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(n, _)| n)
            .collect();
        self.set_names(names)?;
        self.features_checksum = None;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Accessors.

    /// Number of images.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the index holds no image.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Image names (relative paths) in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Position of an image by name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.positions.get(name).copied()
    }

    /// What the index is and which model built it.
    pub fn info(&self) -> &IndexInfo {
        &self.info
    }

    /// The file the index was loaded from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether searches read a memory-mapped file (false once edited).
    pub fn is_mapped(&self) -> bool {
        matches!(self.tokens.data, StoreData::Mapped { .. })
    }

    /// Storage precision.
    pub fn dtype(&self) -> FeatureDType {
        self.tokens.dtype()
    }

    /// A copy of the features as `f32` CPU tensors `[N, Q, P]` (e.g. for
    /// [`DetailFusion::score`] or re-ranking).
    pub fn features(&self) -> Result<GalleryFeatures> {
        let shape = (self.len(), self.info.q, self.info.p);
        let t = |s: &Store| -> Result<Tensor> { Ok(Tensor::from_vec(s.to_f32()?, shape, &Device::Cpu)?) };
        Ok(GalleryFeatures {
            tokens: t(&self.tokens)?,
            gm_tokens: self.gm_tokens.as_ref().map(t).transpose()?,
        })
    }

    /// Refuses a model other than the one that built the index
    /// ([`IndexError::ModelMismatch`], comparing [`DetailFusion::fingerprint`]s).
    pub fn check_model(&self, model: &DetailFusion) -> Result<()> {
        self.check_fingerprint(&model.fingerprint())
    }

    fn check_fingerprint(&self, fingerprint: &str) -> Result<()> {
        if fingerprint != self.info.fingerprint {
            return Err(IndexError::ModelMismatch {
                path: self.path.clone(),
                index_fingerprint: self.info.fingerprint.clone(),
                model_fingerprint: fingerprint.to_string(),
            });
        }
        Ok(())
    }
}

pub(super) fn stderr_progress(on: bool) -> impl FnMut(&IndexProgress) {
    move |p: &IndexProgress| {
        if on {
            if p.failed > 0 {
                eprintln!(
                    "indexed {}/{} images ({} could not be read)",
                    p.processed, p.total, p.failed
                );
            } else {
                eprintln!("indexed {}/{} images", p.processed, p.total);
            }
        }
    }
}
