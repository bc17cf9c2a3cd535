//! The [`GalleryIndex`] trait that every backend implements, and backend selection by a
//! URI-like location string.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::error::{IndexError, Result};
use super::{
    build, kernel, FailedImage, FlatIndex, Hit, IndexInfo, IndexOptions, IndexProgress, IndexReport,
    SearchOptions,
};
use crate::{DetailFusion, GalleryFeatures, QueryFeatures};

/// The engine that holds a gallery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// [`FlatIndex`]: exact, one memory-mapped safetensors file.
    Flat,
    /// `UsearchIndex` (feature `usearch`): approximate (HNSW) on one machine.
    Usearch,
    /// `MilvusIndex` (feature `milvus`): a Milvus server or cluster.
    Milvus,
}

impl Backend {
    /// `"flat"`, `"usearch"` or `"milvus"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Flat => "flat",
            Backend::Usearch => "usearch",
            Backend::Milvus => "milvus",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gallery of images encoded by one model, searched by max-over-tokens scores.
///
/// Every backend stores, per image, its name and its `Q` token vectors of width `P`
/// (`[N, Q, P]` in all) and scores a query `q` (`[P]`) against image `z` as
/// `s(q, z) = max_k ⟨q, z_k⟩` ([`DetailFusion::score`]). The exact backend
/// ([`FlatIndex`]) computes every score; engines that index the token vectors one by one
/// over-fetch token hits and reduce them by image ([`super::max_reduce`]).
///
/// [`Hit::index`] is the image's position for the flat index and the backend's image id
/// otherwise; [`Hit::name`] is the same everywhere.
pub trait GalleryIndex: Send + Sync + std::fmt::Debug {
    /// The engine.
    fn backend(&self) -> Backend;

    /// Where the index lives, as [`open_index`] takes it (`None` for an unsaved flat index).
    fn location(&self) -> Option<String>;

    /// What the index is and which model built it.
    fn info(&self) -> &IndexInfo;

    /// Number of images.
    fn len(&self) -> usize;

    /// Whether the index holds no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image names (relative paths), in the backend's order.
    fn names(&self) -> Result<Vec<String>>;

    /// Refuses a model other than the one that built the index
    /// ([`IndexError::ModelMismatch`], comparing [`DetailFusion::fingerprint`]s).
    fn check_model(&self, model: &DetailFusion) -> Result<()> {
        check_fingerprint(self.info(), self.location(), &model.fingerprint())
    }

    /// Adds already encoded images (`features` as [`DetailFusion::encode_images`] gives them:
    /// `tokens [n, Q, P]`, plus `gm_tokens` for per-branch galleries). A name already in the
    /// index is an [`IndexError::Duplicate`] error. The caller vouches for the model.
    fn add_features(&mut self, names: Vec<String>, features: &GalleryFeatures) -> Result<()>;

    /// Encodes the images under `dir` that the index does not hold yet (by name, relative to
    /// `dir`) and adds them batch by batch; unreadable files are listed in the report.
    fn add_folder(&mut self, model: &DetailFusion, dir: &Path, opts: &IndexOptions) -> Result<IndexReport> {
        self.check_model(model)?;
        let known: HashSet<String> = self.names()?.into_iter().collect();
        encode_folder(model, dir, &known, opts, &mut |names, f| {
            self.add_features(names, f)
        })
    }

    /// Removes images by name. A name not in the index is an [`IndexError::UnknownImage`]
    /// error (nothing is removed).
    fn remove(&mut self, names: &[String]) -> Result<()>;

    /// The `k` best images for raw query features `[B, P]` (no model check).
    fn search_features(&self, queries: &Tensor, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>>;

    /// The `k` best images of a per-branch gallery for DI and GM query features `[B, P]` and
    /// fusion weights `[B, 2]` (no model check). Only the flat index offers it.
    fn search_per_branch(
        &self,
        _di: &Tensor,
        _gm: &Tensor,
        _weights: &Tensor,
        _opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        Err(IndexError::Unsupported {
            backend: self.backend().as_str(),
            message: "per-branch galleries are searched by the flat index only".into(),
        })
    }

    /// The `k` best images for composed queries, without a model check.
    fn search_queries(&self, queries: &QueryFeatures, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        match (self.info().per_branch, &queries.di, &queries.gm) {
            (true, Some(di), Some(gm)) => {
                self.search_per_branch(&di.global, &gm.global, &queries.weights, opts)
            }
            _ => self.search_features(&queries.feature, opts),
        }
    }

    /// The `k` best images for composed queries of `model` (checked first: computing a
    /// fingerprint reads the weights, so check once and use
    /// [`GalleryIndex::search_queries`] for repeated searches).
    fn search(
        &self,
        model: &DetailFusion,
        queries: &QueryFeatures,
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        self.check_model(model)?;
        self.search_queries(queries, opts)
    }

    /// Makes the current state durable where the index lives (flat and usearch: write the
    /// files; Milvus: flush). A flat index that was never saved has nowhere to go: an error.
    fn persist(&mut self) -> Result<()>;
}

pub(crate) fn check_fingerprint(info: &IndexInfo, location: Option<String>, fingerprint: &str) -> Result<()> {
    if fingerprint != info.fingerprint {
        return Err(IndexError::ModelMismatch {
            path: location.map(PathBuf::from),
            index_fingerprint: info.fingerprint.clone(),
            model_fingerprint: fingerprint.to_string(),
        });
    }
    Ok(())
}

/// Query values `[B, P]` as `f32` on the CPU, checking `P`.
#[cfg_attr(not(any(feature = "usearch", feature = "milvus")), allow(dead_code))]
pub(crate) fn query_rows(t: &Tensor, p: usize, name: &str) -> Result<(Vec<f32>, usize)> {
    let (b, w) = t
        .dims2()
        .map_err(|_| IndexError::input(name, format!("expected [B, P], got {:?}", t.dims())))?;
    if w != p {
        return Err(IndexError::input(
            name,
            format!("width {w}, the index holds P = {p}"),
        ));
    }
    Ok((super::store::to_cpu_f32(t)?, b))
}

/// Checks `features` against `info` for `n` images and returns the token values
/// (`n·Q·P`, image-major) on the CPU, refusing non-finite values (naming the image).
#[cfg_attr(not(any(feature = "usearch", feature = "milvus")), allow(dead_code))]
pub(crate) fn token_values(
    info: &IndexInfo,
    names: &[String],
    features: &GalleryFeatures,
) -> Result<Vec<f32>> {
    let want = [names.len(), info.q, info.p];
    if features.tokens.dims() != want {
        return Err(IndexError::input(
            "tokens",
            format!(
                "model gave {:?}, the index holds {want:?}",
                features.tokens.dims()
            ),
        ));
    }
    if features.gm_tokens.is_some() && !info.per_branch {
        return Err(IndexError::input("gm_tokens", "the index has no GM gallery"));
    }
    let v = super::store::to_cpu_f32(&features.tokens)?;
    for (name, x) in names.iter().zip(v.chunks(info.q * info.p)) {
        if x.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::input(
                "features",
                format!("image `{name}` has a feature value that is not finite"),
            ));
        }
    }
    Ok(v)
}

/// Checks a batch of new names: no duplicates among them nor with `known`.
#[cfg_attr(not(any(feature = "usearch", feature = "milvus")), allow(dead_code))]
pub(crate) fn check_new_names(names: &[String], known: impl Fn(&str) -> bool) -> Result<()> {
    let mut seen = HashSet::new();
    for n in names {
        if known(n) || !seen.insert(n.as_str()) {
            return Err(IndexError::Duplicate { name: n.clone() });
        }
    }
    Ok(())
}

/// Encodes the images under `dir` whose names are not in `known`, in batches, handing each
/// batch to `sink`.
pub(crate) fn encode_folder(
    model: &DetailFusion,
    dir: &Path,
    known: &HashSet<String>,
    opts: &IndexOptions,
    sink: &mut dyn FnMut(Vec<String>, &GalleryFeatures) -> Result<()>,
) -> Result<IndexReport> {
    let (todo, mut report) = build::pending_images(dir, |name| known.contains(name))?;
    let proc = &model.config().image_processor;
    let s = proc.image_size;
    let threads = kernel::thread_count(opts.threads);
    let total = todo.len();
    let mut processed = 0;
    for batch in todo.chunks(opts.batch_size.max(1)) {
        let paths: Vec<PathBuf> = batch.iter().map(|(p, _)| p.clone()).collect();
        let (mut pixels, mut names) = (Vec::new(), Vec::new());
        for ((path, name), r) in batch.iter().zip(build::decode_images(proc, &paths, threads)) {
            match r {
                Ok(v) => {
                    pixels.extend_from_slice(&v);
                    names.push(name.clone());
                }
                Err(message) => report.failed.push(FailedImage {
                    path: path.clone(),
                    message,
                }),
            }
        }
        if !names.is_empty() {
            let x = Tensor::from_vec(pixels, (names.len(), 3, s, s), model.device())?;
            let f = model.encode_images(&x)?;
            sink(names.clone(), &f)?;
            report.indexed.extend(names);
        }
        processed += batch.len();
        if opts.progress {
            let p = IndexProgress {
                processed,
                total,
                indexed: report.indexed.len(),
                failed: report.failed.len(),
            };
            eprintln!("indexed {}/{} images ({} failed)", p.processed, p.total, p.failed);
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Locations.

/// Where an index lives, parsed from a URI-like string:
///
/// - `path/to/index.safetensors` (or any path without a scheme): a [`FlatIndex`] file;
/// - `flat:path`: the same, explicitly;
/// - `usearch:path/to/gallery.usearch`: a usearch index (feature `usearch`), with its names and
///   model identity beside it in `gallery.usearch.json`;
/// - `milvus://host:port/collection` (or `milvus://host:port/database/collection`; `milvus+tls://`
///   for TLS): a collection on a Milvus server (feature `milvus`). The token comes from
///   [`BackendOptions`] or the `MILVUS_TOKEN` environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexUri {
    /// A flat index file.
    Flat(PathBuf),
    /// A usearch index file.
    Usearch(PathBuf),
    /// A Milvus collection.
    Milvus {
        /// `http://host:port` or `https://host:port`.
        endpoint: String,
        /// Database (`None`: the server's default).
        database: Option<String>,
        /// Collection.
        collection: String,
    },
}

impl IndexUri {
    /// Parses a location (see the type's docs).
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |m: &str| IndexError::Uri {
            uri: uri.to_string(),
            message: m.to_string(),
        };
        if uri.trim().is_empty() {
            return Err(bad("empty"));
        }
        let milvus = [("milvus://", "http://"), ("milvus+tls://", "https://")];
        for (scheme, http) in milvus {
            if let Some(rest) = uri.strip_prefix(scheme) {
                let (host, path) = rest
                    .split_once('/')
                    .ok_or_else(|| bad("expected milvus://host:port/collection"))?;
                if host.is_empty() {
                    return Err(bad("no host"));
                }
                let host = if host.contains(':') {
                    host.to_string()
                } else {
                    format!("{host}:19530")
                };
                let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
                let (database, collection) = match parts.as_slice() {
                    [c] => (None, c.to_string()),
                    [d, c] => (Some(d.to_string()), c.to_string()),
                    _ => return Err(bad("expected milvus://host:port/[database/]collection")),
                };
                let valid = |s: &str| {
                    s.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                if !valid(&collection) || database.as_deref().is_some_and(|d| !valid(d)) {
                    return Err(bad(
                        "collection and database names are letters, digits and `_`, not starting with a digit",
                    ));
                }
                return Ok(IndexUri::Milvus {
                    endpoint: format!("{http}{host}"),
                    database,
                    collection,
                });
            }
        }
        if let Some(path) = uri.strip_prefix("usearch:") {
            if path.is_empty() {
                return Err(bad("expected usearch:<path>"));
            }
            return Ok(IndexUri::Usearch(PathBuf::from(path)));
        }
        if let Some(path) = uri.strip_prefix("flat:") {
            return Ok(IndexUri::Flat(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(bad(&format!(
                "unknown scheme `{scheme}://` (a path, usearch:<path> or milvus://host:port/collection)"
            )));
        }
        Ok(IndexUri::Flat(PathBuf::from(uri)))
    }

    /// The backend of this location.
    pub fn backend(&self) -> Backend {
        match self {
            IndexUri::Flat(_) => Backend::Flat,
            IndexUri::Usearch(_) => Backend::Usearch,
            IndexUri::Milvus { .. } => Backend::Milvus,
        }
    }
}

impl std::str::FromStr for IndexUri {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Settings of the backends that have some (used when creating or opening an index).
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// usearch settings.
    #[cfg(feature = "usearch")]
    pub usearch: super::UsearchOptions,
    /// Milvus settings.
    #[cfg(feature = "milvus")]
    pub milvus: super::MilvusOptions,
}

#[allow(unused_variables)]
fn not_built(uri: &str, feature: &str) -> IndexError {
    IndexError::Uri {
        uri: uri.to_string(),
        message: format!("this build has no `{feature}` backend: rebuild with `--features {feature}`"),
    }
}

/// Opens an existing index at `uri` (see [`IndexUri`]). Flat and usearch files are
/// memory-mapped.
#[allow(unused_variables)]
pub fn open_index(uri: &str, opts: &BackendOptions) -> Result<Box<dyn GalleryIndex>> {
    match IndexUri::parse(uri)? {
        IndexUri::Flat(path) => Ok(Box::new(FlatIndex::load(path)?)),
        #[cfg(feature = "usearch")]
        IndexUri::Usearch(path) => Ok(Box::new(super::UsearchIndex::open(path, &opts.usearch)?)),
        #[cfg(feature = "milvus")]
        IndexUri::Milvus { .. } => Ok(Box::new(super::MilvusIndex::open(uri, &opts.milvus)?)),
        #[allow(unreachable_patterns)]
        other => Err(not_built(uri, other.backend().as_str())),
    }
}

/// Creates an empty index at `uri` for the gallery encoder described by `info`
/// ([`IndexInfo::for_model`]). Refuses a location that already holds an index.
#[allow(unused_variables)]
pub fn create_index(uri: &str, info: IndexInfo, opts: &BackendOptions) -> Result<Box<dyn GalleryIndex>> {
    let exists = |path: &Path| -> Result<()> {
        if path.exists() {
            return Err(IndexError::Uri {
                uri: uri.to_string(),
                message: "already exists (open it, or remove it first)".into(),
            });
        }
        Ok(())
    };
    match IndexUri::parse(uri)? {
        IndexUri::Flat(path) => {
            exists(&path)?;
            Ok(Box::new(FlatIndex::empty_at(info, path)))
        }
        #[cfg(feature = "usearch")]
        IndexUri::Usearch(path) => {
            exists(&path)?;
            Ok(Box::new(super::UsearchIndex::create(path, info, &opts.usearch)?))
        }
        #[cfg(feature = "milvus")]
        IndexUri::Milvus { .. } => Ok(Box::new(super::MilvusIndex::create(uri, info, &opts.milvus)?)),
        #[allow(unreachable_patterns)]
        other => Err(not_built(uri, other.backend().as_str())),
    }
}

/// Opens the index at `uri` when there is one (checking that `info`'s model built it),
/// otherwise creates an empty one.
pub fn open_or_create_index(
    uri: &str,
    info: IndexInfo,
    opts: &BackendOptions,
) -> Result<Box<dyn GalleryIndex>> {
    let present = match IndexUri::parse(uri)? {
        IndexUri::Flat(p) | IndexUri::Usearch(p) => p.exists(),
        IndexUri::Milvus { .. } => milvus_exists(uri, opts)?,
    };
    if !present {
        return create_index(uri, info, opts);
    }
    let index = open_index(uri, opts)?;
    check_fingerprint(index.info(), index.location(), &info.fingerprint)?;
    Ok(index)
}

#[allow(unused_variables)]
fn milvus_exists(uri: &str, opts: &BackendOptions) -> Result<bool> {
    #[cfg(feature = "milvus")]
    return super::MilvusIndex::exists(uri, &opts.milvus);
    #[cfg(not(feature = "milvus"))]
    Err(not_built(uri, "milvus"))
}
