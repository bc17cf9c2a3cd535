//! Gallery index: encode a folder of images once, store the per-token features in one
//! memory-mapped file, and answer composed queries by exact max-over-tokens search.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use detailfusion::index::{GalleryIndex, IndexOptions, SearchOptions};
//! # let model: detailfusion::DetailFusion = unimplemented!();
//! # let queries: detailfusion::QueryFeatures = unimplemented!();
//! let (index, report) = GalleryIndex::build(&model, "gallery/", &IndexOptions::default())?;
//! for f in &report.failed {
//!     eprintln!("skipped {}: {}", f.path.display(), f.message);
//! }
//! index.save("gallery.dfindex")?;
//! let index = GalleryIndex::load("gallery.dfindex")?; // memory-mapped
//! let hits = index.search(&model, &queries, &SearchOptions::top(10))?;
//! # Ok(()) }
//! ```
//!
//! **Scores.** `s(q, z) = max_k ⟨q, z_k⟩` over the `Q` token vectors of each image, exactly as
//! [`DetailFusion::score`]; for per-branch galleries ([`crate::GalleryMode::PerBranch`])
//! `s = α_DI·s(q_DI, z_DI) + α_GM·s(q_GM, z_GM)` with the query's fusion weights. Batches of
//! fewer than [`GEMM_MIN_BATCH`] queries stream the (mapped) rows once with a hand-vectorised
//! kernel on all cores (memory-bound); larger batches run candle's multithreaded GEMM over
//! blocks of a cached `f32` copy of the gallery (compute-bound). Top-k is a partial selection;
//! ties go to the lower gallery index.
//!
//! **File.** One safetensors file (readable by any safetensors reader):
//!
//! ```text
//! u64 LE n | n bytes of JSON header, space-padded to a multiple of 8 | data
//! "__metadata__": {"format": "detailfusion-index", "version": "1",
//!                  "fingerprint": <DetailFusion::fingerprint>, "config_hash": <FNV-1a 64 hex>,
//!                  "dtype": "f32"|"f16", "q": "32", "p": "256", "count": "N",
//!                  "per_branch": "true"|"false", "names_checksum", "features_checksum",
//!                  "config": <the model's config JSON>}
//! "tokens":       F32|F16 [N, Q, P]   (first, so 8-byte aligned in a mapping)
//! "gm_tokens":    F32|F16 [N, Q, P]   (per-branch galleries only)
//! "name_offsets": I64 [N + 1]         (image i is names[off[i]..off[i+1]])
//! "names":        U8 [bytes]          (UTF-8 relative paths, `/`-separated, concatenated)
//! ```
//!
//! Loading reads and checks the header and the names (checksum), then maps the file: searches
//! read the mapped features in place, without a copy (an `f16` index is widened one image at a
//! time). [`GalleryIndex::verify`] checks the feature bytes against their checksum. Editing a
//! mapped index copies its features into memory first; [`GalleryIndex::save`] writes a new
//! file and renames it into place.

mod build;
mod error;
mod format;
mod kernel;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use df_encoders::TextProcessor;

pub use build::IMAGE_EXTENSIONS;
pub use error::{IndexError, Result};
pub use format::{FORMAT_NAME, FORMAT_VERSION};
pub use kernel::{f16_to_f32, f32_to_f16, GEMM_MIN_BATCH};

use crate::config::{DetailFusionConfig, GalleryMode, Variant};
use crate::{DetailFusion, GalleryFeatures, QueryFeatures};
use format::{Checksum, DataOut, TensorOut};
use kernel::Rows;

/// Storage precision of the gallery features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FeatureDType {
    /// 32-bit floats (exact).
    #[default]
    F32,
    /// IEEE half precision: half the size, scores within about `1e-3` of `f32`'s.
    F16,
}

impl FeatureDType {
    /// `"f32"` or `"f16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureDType::F32 => "f32",
            FeatureDType::F16 => "f16",
        }
    }

    fn safetensors(self) -> &'static str {
        match self {
            FeatureDType::F32 => "F32",
            FeatureDType::F16 => "F16",
        }
    }
}

impl std::fmt::Display for FeatureDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FeatureDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(FeatureDType::F32),
            "f16" | "float16" | "half" => Ok(FeatureDType::F16),
            other => Err(format!("unknown feature dtype `{other}` (f32 or f16)")),
        }
    }
}

/// How to build or extend an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexOptions {
    /// Images per `encode_images` call (32).
    pub batch_size: usize,
    /// Storage precision of new indexes (`f32`).
    pub dtype: FeatureDType,
    /// Print `indexed 128/1000 images` lines to stderr after each batch (on). The
    /// `*_with_progress` methods call a callback instead.
    pub progress: bool,
    /// Threads for decoding images; `None`: all cores.
    pub threads: Option<usize>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            dtype: FeatureDType::F32,
            progress: true,
            threads: None,
        }
    }
}

/// Progress of an indexing run, reported after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexProgress {
    /// Image files handled so far (indexed or failed).
    pub processed: usize,
    /// Image files to handle in this run.
    pub total: usize,
    /// Images encoded so far.
    pub indexed: usize,
    /// Images that could not be read so far.
    pub failed: usize,
}

/// An image file that could not be indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedImage {
    /// The file.
    pub path: PathBuf,
    /// Why (names the file).
    pub message: String,
}

/// What an indexing run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Names (relative paths) of the images added, in index order.
    pub indexed: Vec<String>,
    /// Image files (by extension or content) that could not be read or decoded.
    pub failed: Vec<FailedImage>,
    /// Files that are not images (neither by extension nor by content).
    pub skipped: Vec<PathBuf>,
    /// Images found that the index already held (left as they were).
    pub already_indexed: usize,
}

/// What an index is and which model built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    /// [`DetailFusion::fingerprint`] of the model that built the index.
    pub fingerprint: String,
    /// FNV-1a 64 (hex) of that model's config JSON ([`config_hash`]).
    pub config_hash: String,
    /// Storage precision.
    pub dtype: FeatureDType,
    /// Token vectors per image.
    pub q: usize,
    /// Embedding width.
    pub p: usize,
    /// Whether GM's own gallery features are stored too (`gm_tokens`).
    pub per_branch: bool,
    /// The model's config JSON, when known.
    pub config: Option<String>,
}

impl IndexInfo {
    /// The description of the gallery encoder of `model` (fingerprint, config hash, `Q`, `P`,
    /// per-branch or not), with features stored as `dtype`.
    pub fn for_model(model: &DetailFusion, dtype: FeatureDType) -> Self {
        let cfg = model.config();
        Self {
            fingerprint: model.fingerprint(),
            config_hash: config_hash(cfg),
            dtype,
            q: cfg.blip2.num_query_tokens,
            p: cfg.blip2.image_text_hidden_size,
            per_branch: cfg.variant == Variant::Full && cfg.gallery == GalleryMode::PerBranch,
            config: serde_json::to_string(cfg).ok(),
        }
    }
}

/// FNV-1a 64 (16 hex digits) of a config's JSON.
pub fn config_hash(config: &DetailFusionConfig) -> String {
    format::fnv1a_hex(serde_json::to_string(config).unwrap_or_default().as_bytes())
}

/// How to search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchOptions {
    /// Results per query (10). Fewer come back when the gallery is smaller.
    pub k: usize,
    /// Per query, an image name to leave out of its results (the reference image under the
    /// CIRR protocol). Empty: none; otherwise one entry per query. Names not in the index
    /// exclude nothing.
    pub exclude: Vec<Option<String>>,
    /// Worker threads; `None`: all cores.
    pub threads: Option<usize>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self::top(10)
    }
}

impl SearchOptions {
    /// The `k` best per query, nothing excluded, all cores.
    pub fn top(k: usize) -> Self {
        Self {
            k,
            exclude: Vec::new(),
            threads: None,
        }
    }

    /// Leaves out, for query `i`, the image `exclude[i]` (CIRR: the reference image).
    pub fn excluding<S: Into<String>>(mut self, exclude: impl IntoIterator<Item = Option<S>>) -> Self {
        self.exclude = exclude.into_iter().map(|e| e.map(Into::into)).collect();
        self
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Position of the image in the index.
    pub index: usize,
    /// Its name (path relative to the gallery folder, `/`-separated).
    pub name: String,
    /// Its score.
    pub score: f32,
}

// ---------------------------------------------------------------------------------------------
// Feature storage.

/// `[N·Q, P]` features: owned, or a tensor of a mapped file.
enum StoreData {
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

struct Store {
    data: StoreData,
    /// `f32` tensor for the GEMM path of non-`F32` stores, made on first use.
    gemm: OnceLock<Tensor>,
}

/// Owned values of a store, for editing.
enum Raw {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

#[allow(unsafe_code)]
fn cast_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every 4-byte pattern is a valid `f32`; `align_to` only yields the middle part at
    // an address aligned for `f32`, and we use it only when nothing is left over on either side.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

#[allow(unsafe_code)]
fn cast_u16(bytes: &[u8]) -> Option<&[u16]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every 2-byte pattern is a valid `u16`; see `cast_f32` for the alignment.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

impl Store {
    fn new(data: StoreData) -> Self {
        Self {
            data,
            gemm: OnceLock::new(),
        }
    }

    fn from_raw(raw: Raw, p: usize) -> Result<Self> {
        Ok(Self::new(match raw {
            Raw::F32(v) => {
                let rows = v.len() / p.max(1);
                StoreData::F32(Tensor::from_vec(v, (rows, p), &Device::Cpu)?)
            }
            Raw::F16(v) => StoreData::F16(v),
        }))
    }

    fn dtype(&self) -> FeatureDType {
        match &self.data {
            StoreData::F32(_) => FeatureDType::F32,
            StoreData::F16(_) => FeatureDType::F16,
            StoreData::Mapped { dtype, .. } => *dtype,
        }
    }

    fn with_rows<R>(&self, f: impl FnOnce(Rows<'_>) -> R) -> Result<R> {
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

    fn raw(&self) -> Result<Raw> {
        self.with_rows(|r| match r {
            Rows::F32(s) => Raw::F32(s.to_vec()),
            Rows::F16(s) => Raw::F16(s.to_vec()),
        })
    }

    fn to_f32(&self) -> Result<Vec<f32>> {
        self.with_rows(|r| match r {
            Rows::F32(s) => s.to_vec(),
            Rows::F16(s) => s.iter().map(|&h| f16_to_f32(h)).collect(),
        })
    }

    fn gemm_tensor(&self, p: usize) -> Result<Tensor> {
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

    fn append(&mut self, values: &[f32], p: usize) -> Result<()> {
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

    fn retain(&mut self, keep: &[bool], per_image: usize, p: usize) -> Result<()> {
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

    fn checksum(&self, sum: &mut Checksum) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// The index.

/// A gallery of images encoded by one model: names plus `[N, Q, P]` features (and GM's own for
/// per-branch galleries), owned or memory-mapped from an index file.
pub struct GalleryIndex {
    info: IndexInfo,
    names: Vec<String>,
    positions: HashMap<String, usize>,
    tokens: Store,
    gm_tokens: Option<Store>,
    path: Option<PathBuf>,
    /// Checksum of the feature data read from the file, while unchanged since.
    features_checksum: Option<String>,
}

impl std::fmt::Debug for GalleryIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GalleryIndex")
            .field("info", &self.info)
            .field("len", &self.len())
            .field("path", &self.path)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

fn to_cpu_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

impl GalleryIndex {
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

    /// [`GalleryIndex::build`] reporting progress to `progress` after each batch.
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

    /// [`GalleryIndex::add_folder`] reporting progress to `progress`.
    pub fn add_folder_with_progress(
        &mut self,
        model: &DetailFusion,
        dir: impl AsRef<Path>,
        opts: &IndexOptions,
        progress: &mut dyn FnMut(&IndexProgress),
    ) -> Result<IndexReport> {
        let dir = dir.as_ref();
        self.check_model(model)?;
        let (images, skipped) = build::list_images(dir)?;
        let mut report = IndexReport {
            skipped,
            ..Default::default()
        };
        let mut todo = Vec::new();
        for path in images {
            match build::relative_name(dir, &path) {
                Ok(name) if self.positions.contains_key(&name) => report.already_indexed += 1,
                Ok(name) => todo.push((path, name)),
                Err(message) => report.failed.push(FailedImage { path, message }),
            }
        }
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
    /// The file must not be modified in place while it is mapped ([`GalleryIndex::save`]
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

    /// [`GalleryIndex::load`], then [`GalleryIndex::check_model`].
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

    // -----------------------------------------------------------------------------------------
    // Search.

    /// Checks `model` once ([`GalleryIndex::check_model`]) and returns a handle that searches
    /// with its queries without re-checking (computing a fingerprint reads weights; do it once
    /// per model, not per query batch).
    pub fn searcher(&self, model: &DetailFusion) -> Result<Searcher<'_>> {
        self.check_model(model)?;
        Ok(Searcher { index: self })
    }

    /// The `k` best images for each composed query, scored as [`DetailFusion::score`] does
    /// (per-branch galleries combine both branches with the query's fusion weights). Checks
    /// the model first; see [`GalleryIndex::searcher`] for repeated searches.
    pub fn search(
        &self,
        model: &DetailFusion,
        queries: &QueryFeatures,
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        self.searcher(model)?.search(queries, opts)
    }

    /// The `k` best images for raw query features `[B, P]` against `tokens` (no model check:
    /// the caller vouches that the queries come from the index's model).
    pub fn search_features(&self, queries: &Tensor, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        let (q, b) = self.query_values(queries, "queries")?;
        let scores = self.score_rows(&self.tokens, &q, b, opts.threads)?;
        self.top_hits(&scores, b, opts)
    }

    /// The `k` best images of a per-branch gallery for DI and GM query features `[B, P]` and
    /// fusion weights `[B, 2]` (`[α_DI, α_GM]`), without a model check.
    pub fn search_per_branch(
        &self,
        di: &Tensor,
        gm: &Tensor,
        weights: &Tensor,
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        let (scores, b) = self.per_branch_scores(di, gm, weights, opts.threads)?;
        self.top_hits(&scores, b, opts)
    }

    /// All scores `[B, N]` of raw query features `[B, P]` against `tokens` (CPU tensor).
    pub fn scores(&self, queries: &Tensor) -> Result<Tensor> {
        let (q, b) = self.query_values(queries, "queries")?;
        let s = self.score_rows(&self.tokens, &q, b, None)?;
        Ok(Tensor::from_vec(s, (b, self.len()), &Device::Cpu)?)
    }

    fn query_values(&self, t: &Tensor, name: &str) -> Result<(Vec<f32>, usize)> {
        let (b, p) = t
            .dims2()
            .map_err(|_| IndexError::input(name, format!("expected [B, P], got {:?}", t.dims())))?;
        if p != self.info.p {
            return Err(IndexError::input(
                name,
                format!("width {p}, the index holds P = {}", self.info.p),
            ));
        }
        Ok((to_cpu_f32(t)?, b))
    }

    fn score_rows(
        &self,
        store: &Store,
        queries: &[f32],
        b: usize,
        threads: Option<usize>,
    ) -> Result<Vec<f32>> {
        if self.is_empty() {
            return Err(IndexError::EmptyIndex);
        }
        if b == 0 {
            return Ok(Vec::new());
        }
        let (q, p) = (self.info.q, self.info.p);
        if b >= GEMM_MIN_BATCH {
            kernel::gemm_scores(&store.gemm_tensor(p)?, q, queries, b)
        } else {
            let threads = kernel::thread_count(threads);
            store.with_rows(|rows| kernel::scan_scores(rows, q, p, queries, b, threads))
        }
    }

    fn per_branch_scores(
        &self,
        di: &Tensor,
        gm: &Tensor,
        weights: &Tensor,
        threads: Option<usize>,
    ) -> Result<(Vec<f32>, usize)> {
        let Some(gm_store) = &self.gm_tokens else {
            return Err(IndexError::input(
                "gm",
                "the index has no GM gallery (not per-branch)",
            ));
        };
        let (qd, b) = self.query_values(di, "di")?;
        let (qg, bg) = self.query_values(gm, "gm")?;
        if weights.dims() != [b, 2] || bg != b {
            return Err(IndexError::input(
                "weights",
                format!("expected [{b}, 2] with {b} GM queries, got {:?}", weights.dims()),
            ));
        }
        let w = to_cpu_f32(weights)?;
        let n = self.len();
        let mut s = self.score_rows(&self.tokens, &qd, b, threads)?;
        let sg = self.score_rows(gm_store, &qg, b, threads)?;
        for j in 0..b {
            let (a_di, a_gm) = (w[2 * j], w[2 * j + 1]);
            for (x, y) in s[j * n..(j + 1) * n].iter_mut().zip(&sg[j * n..(j + 1) * n]) {
                *x = *x * a_di + *y * a_gm;
            }
        }
        Ok((s, b))
    }

    fn top_hits(&self, scores: &[f32], b: usize, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        if !opts.exclude.is_empty() && opts.exclude.len() != b {
            return Err(IndexError::input(
                "exclude",
                format!("{} entries for {b} queries", opts.exclude.len()),
            ));
        }
        let exclude: Vec<Option<usize>> = opts
            .exclude
            .iter()
            .map(|e| e.as_deref().and_then(|n| self.position(n)))
            .collect();
        let threads = kernel::thread_count(opts.threads);
        Ok(kernel::top_k_rows(scores, self.len(), opts.k, &exclude, threads)
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(index, score)| Hit {
                        index,
                        name: self.names[index].clone(),
                        score,
                    })
                    .collect()
            })
            .collect())
    }
}

/// Searches an index with the queries of a model checked once ([`GalleryIndex::searcher`]).
#[derive(Debug, Clone, Copy)]
pub struct Searcher<'a> {
    index: &'a GalleryIndex,
}

impl Searcher<'_> {
    /// See [`GalleryIndex::search`].
    pub fn search(&self, queries: &QueryFeatures, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        let index = self.index;
        match (&index.gm_tokens, &queries.di, &queries.gm) {
            (Some(_), Some(di), Some(gm)) => {
                index.search_per_branch(&di.global, &gm.global, &queries.weights, opts)
            }
            _ => index.search_features(&queries.feature, opts),
        }
    }

    /// All scores `[B, N]` (CPU), as [`DetailFusion::score`] computes them.
    pub fn scores(&self, queries: &QueryFeatures) -> Result<Tensor> {
        let index = self.index;
        match (&index.gm_tokens, &queries.di, &queries.gm) {
            (Some(_), Some(di), Some(gm)) => {
                let (s, b) = index.per_branch_scores(&di.global, &gm.global, &queries.weights, None)?;
                Ok(Tensor::from_vec(s, (b, index.len()), &Device::Cpu)?)
            }
            _ => index.scores(&queries.feature),
        }
    }

    /// The index searched.
    pub fn index(&self) -> &GalleryIndex {
        self.index
    }
}

fn stderr_progress(on: bool) -> impl FnMut(&IndexProgress) {
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

/// Loads and preprocesses query (reference) images for `model` into `[B, 3, S, S]` on its
/// device. The first file that cannot be read or decoded is an [`IndexError::Image`] error
/// naming it.
pub fn load_query_images<P: AsRef<Path>>(model: &DetailFusion, paths: &[P]) -> Result<Tensor> {
    if paths.is_empty() {
        return Err(IndexError::input("paths", "no query image"));
    }
    let proc = &model.config().image_processor;
    let s = proc.image_size;
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.as_ref().to_path_buf()).collect();
    let mut pixels = Vec::with_capacity(paths.len() * proc.values_per_image());
    for (path, r) in paths
        .iter()
        .zip(build::decode_images(proc, &paths, kernel::thread_count(None)))
    {
        match r {
            Ok(v) => pixels.extend_from_slice(&v),
            Err(message) => {
                return Err(IndexError::Image {
                    path: path.clone(),
                    message,
                })
            }
        }
    }
    Ok(Tensor::from_vec(pixels, (paths.len(), 3, s, s), model.device())?)
}

/// Encodes composed queries from reference image files and modification texts.
pub fn encode_query_files<P: AsRef<Path>>(
    model: &DetailFusion,
    text: &TextProcessor,
    images: &[P],
    texts: &[&str],
) -> Result<QueryFeatures> {
    if images.len() != texts.len() {
        return Err(IndexError::input(
            "texts",
            format!("{} texts for {} images", texts.len(), images.len()),
        ));
    }
    let pixels = load_query_images(model, images)?;
    let batch = text
        .encode_batch(texts, model.device())
        .map_err(crate::DetailFusionError::from)?;
    Ok(model.encode_queries(&pixels, &batch.input_ids, &batch.attention_mask)?)
}
