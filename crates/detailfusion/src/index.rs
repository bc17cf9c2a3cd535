//! Gallery index: encode a folder of images once, store the per-token features in one
//! memory-mapped file, and answer composed queries by exact max-over-tokens search.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use detailfusion::index::{FlatIndex, IndexOptions, SearchOptions};
//! # let model: detailfusion::DetailFusion = unimplemented!();
//! # let queries: detailfusion::QueryFeatures = unimplemented!();
//! let (index, report) = FlatIndex::build(&model, "gallery/", &IndexOptions::default())?;
//! for f in &report.failed {
//!     eprintln!("skipped {}: {}", f.path.display(), f.message);
//! }
//! index.save("gallery.dfindex")?;
//! let index = FlatIndex::load("gallery.dfindex")?; // memory-mapped
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

mod backend;
mod build;
mod error;
mod flat;
mod format;
mod kernel;
#[cfg(feature = "milvus")]
mod milvus;
mod reduce;
mod store;
#[cfg(feature = "usearch")]
mod usearch;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use df_encoders::TextProcessor;

pub use backend::{
    create_index, open_index, open_or_create_index, Backend, BackendOptions, GalleryIndex, IndexUri,
};
pub use build::IMAGE_EXTENSIONS;
pub use error::{IndexError, Result};
pub use flat::{FlatIndex, Searcher};
pub use format::{FORMAT_NAME, FORMAT_VERSION};
pub use kernel::{f16_to_f32, f32_to_f16, GEMM_MIN_BATCH};
#[cfg(feature = "milvus")]
pub use milvus::{image_id as milvus_image_id, MilvusIndex, MilvusOptions, MilvusVectorIndex};
pub use reduce::{max_reduce, token_fetch_count};
#[cfg(feature = "usearch")]
pub use usearch::{Quantization, UsearchIndex, UsearchOptions};

use crate::config::{DetailFusionConfig, GalleryMode, Variant};
use crate::{DetailFusion, QueryFeatures};

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
