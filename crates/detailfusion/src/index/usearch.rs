//! Approximate search on one machine: an HNSW graph over the token vectors (usearch).
//!
//! Each image gets a sequential id; its `Q` token vectors go in under the keys `id·Q + t`.
//! A query fetches `(k + e)·Q·overfetch` token neighbours ([`super::token_fetch_count`]),
//! re-scores every image seen among them exactly over all of its `Q` stored vectors (they come
//! back from the index, dequantised), and keeps the best `k` ([`super::max_reduce`]). Scores are
//! therefore exact max-over-tokens scores of the stored vectors; what is approximate is which
//! images get looked at.
//!
//! Files: `gallery.usearch` (usearch's own format, memory-mapped when opened) and
//! `gallery.usearch.json` beside it (format, model identity, `Q`, `P`, names by id). Both are
//! written to temporary files and renamed into place, so an index viewing the old file stays
//! valid.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use usearch::{Index, MetricKind, ScalarKind};

use super::backend::{check_new_names, query_rows, token_values, Backend, GalleryIndex};
use super::error::{IndexError, Result};
use super::reduce::{max_dot, max_reduce, token_fetch_count};
use super::{kernel, FeatureDType, Hit, IndexInfo, SearchOptions};
use crate::GalleryFeatures;

/// Format name in the sidecar JSON.
const SIDECAR_FORMAT: &str = "detailfusion-usearch";
/// Sidecar version this build reads and writes.
const SIDECAR_VERSION: u64 = 1;

/// How the token vectors are stored in the graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// 32-bit floats: 1 KiB per token vector at `P = 256`.
    F32,
    /// IEEE half precision: half the memory, scores within about `1e-3`.
    #[default]
    F16,
    /// bfloat16: half the memory, coarser mantissa than `f16`.
    BF16,
    /// 8-bit integers (values scaled by 127, so features should lie in `[-1, 1]`, as unit
    /// vectors do): a quarter of the memory.
    I8,
}

impl Quantization {
    /// `"f32"`, `"f16"`, `"bf16"` or `"i8"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::F32 => "f32",
            Quantization::F16 => "f16",
            Quantization::BF16 => "bf16",
            Quantization::I8 => "i8",
        }
    }

    fn scalar(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::BF16 => ScalarKind::BF16,
            Quantization::I8 => ScalarKind::I8,
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Quantization::F32),
            "f16" => Ok(Quantization::F16),
            "bf16" => Ok(Quantization::BF16),
            "i8" => Ok(Quantization::I8),
            other => Err(format!("unknown quantization `{other}` (f32, f16, bf16 or i8)")),
        }
    }
}

/// Settings of a usearch index. `quantization` and `connectivity` are fixed when the index is
/// created (a file keeps its own); the others apply to each session.
#[derive(Debug, Clone, PartialEq)]
pub struct UsearchOptions {
    /// Storage of the token vectors (`f16`).
    pub quantization: Quantization,
    /// Graph degree `M` (16).
    pub connectivity: usize,
    /// Candidate list size while inserting, `ef_construction` (128).
    pub expansion_add: usize,
    /// Candidate list size while searching, `ef` (64; at least the number of token hits
    /// fetched is used anyway).
    pub expansion_search: usize,
    /// Token hits fetched per query, as a multiple of `(k + e)·Q` (2.0; see
    /// [`super::token_fetch_count`]).
    pub overfetch: f32,
    /// Memory-map the file when opening it (true); edits then load it into memory first.
    pub view: bool,
    /// Threads for inserting and for batched queries; `None`: all cores.
    pub threads: Option<usize>,
}

impl Default for UsearchOptions {
    fn default() -> Self {
        Self {
            quantization: Quantization::F16,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            overfetch: 2.0,
            view: true,
            threads: None,
        }
    }
}

/// An approximate max-over-tokens gallery index (HNSW over all token vectors), saved as a
/// usearch file plus a JSON sidecar and memory-mapped when opened.
pub struct UsearchIndex {
    index: Index,
    info: IndexInfo,
    options: UsearchOptions,
    quantization: Quantization,
    path: PathBuf,
    names: BTreeMap<u64, String>,
    ids: HashMap<String, u64>,
    next_id: u64,
    /// Whether `index` views (maps) `path` read-only.
    viewed: bool,
}

impl std::fmt::Debug for UsearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsearchIndex")
            .field("path", &self.path)
            .field("len", &self.names.len())
            .field("quantization", &self.quantization)
            .field("viewed", &self.viewed)
            .finish()
    }
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp{}", std::process::id()));
    PathBuf::from(s)
}

impl UsearchIndex {
    fn err(path: &Path, e: impl std::fmt::Display) -> IndexError {
        IndexError::Backend {
            backend: "usearch",
            location: path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn threads(&self) -> usize {
        kernel::thread_count(self.options.threads)
    }

    /// An empty index that [`GalleryIndex::persist`] writes to `path` (and `path.json`).
    /// Per-branch galleries are refused ([`IndexError::Unsupported`]).
    pub fn create(path: impl Into<PathBuf>, info: IndexInfo, options: &UsearchOptions) -> Result<Self> {
        let path = path.into();
        if info.per_branch {
            return Err(IndexError::Unsupported {
                backend: "usearch",
                message: "per-branch galleries (GM's own gallery features) need the flat index".into(),
            });
        }
        if info.q == 0 || info.p == 0 {
            return Err(IndexError::input("info", "Q and P must be positive"));
        }
        let opts = usearch::IndexOptions {
            dimensions: info.p,
            metric: MetricKind::IP,
            quantization: options.quantization.scalar(),
            connectivity: options.connectivity,
            expansion_add: options.expansion_add,
            expansion_search: options.expansion_search,
            multi: false,
        };
        let index = Index::new(&opts).map_err(|e| Self::err(&path, e))?;
        Ok(Self {
            index,
            info,
            options: options.clone(),
            quantization: options.quantization,
            path,
            names: BTreeMap::new(),
            ids: HashMap::new(),
            next_id: 0,
            viewed: false,
        })
    }

    /// Opens `path` (and its sidecar `path.json`), memory-mapping the graph when
    /// `options.view`. Errors name the file: a missing or foreign sidecar, a sidecar of another
    /// version, or a graph that does not match its sidecar.
    pub fn open(path: impl Into<PathBuf>, options: &UsearchOptions) -> Result<Self> {
        let path = path.into();
        let side = sidecar_path(&path);
        let text = std::fs::read_to_string(&side).map_err(|source| IndexError::Io {
            path: side.clone(),
            source,
        })?;
        let format = |m: &str| IndexError::Format {
            path: side.clone(),
            message: m.to_string(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format(&format!("not JSON: {e}")))?;
        if json["format"] != SIDECAR_FORMAT {
            return Err(format(&format!("`format` is not `{SIDECAR_FORMAT}`")));
        }
        let version = json["version"].as_u64().unwrap_or(0);
        if version != SIDECAR_VERSION {
            return Err(IndexError::Version {
                path: side,
                found: json["version"].to_string(),
                supported: SIDECAR_VERSION as u32,
            });
        }
        let corrupt = |entry: &str, m: &str| IndexError::corrupt(&side, entry, m);
        let string = |k: &str| -> Result<String> {
            json[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| corrupt(k, "missing or not a string"))
        };
        let number = |k: &str| -> Result<u64> {
            json[k]
                .as_u64()
                .ok_or_else(|| corrupt(k, "missing or not a number"))
        };
        let info = IndexInfo {
            fingerprint: string("fingerprint")?,
            config_hash: string("config_hash")?,
            dtype: FeatureDType::F32,
            q: number("q")? as usize,
            p: number("p")? as usize,
            per_branch: false,
            config: json["config"].as_str().map(str::to_string),
        };
        let quantization: Quantization = string("quantization")?
            .parse()
            .map_err(|e: String| corrupt("quantization", &e))?;
        let next_id = number("next_id")?;
        let mut names = BTreeMap::new();
        let mut ids = HashMap::new();
        for (i, entry) in json["images"]
            .as_array()
            .ok_or_else(|| corrupt("images", "missing or not a list"))?
            .iter()
            .enumerate()
        {
            let (Some(id), Some(name)) = (entry[0].as_u64(), entry[1].as_str()) else {
                return Err(corrupt("images", &format!("entry {i} is not [id, name]")));
            };
            if id >= next_id
                || names.insert(id, name.to_string()).is_some()
                || ids.insert(name.to_string(), id).is_some()
            {
                return Err(corrupt(
                    "images",
                    &format!("entry {i} (`{name}`) repeats or exceeds next_id"),
                ));
            }
        }
        if info.q == 0 || info.p == 0 {
            return Err(corrupt("q", "Q and P must be positive"));
        }
        let path_str = path.to_string_lossy().into_owned();
        if !path.is_file() {
            return Err(IndexError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "usearch file missing"),
            });
        }
        let meta = Index::metadata(&path_str).map_err(|e| IndexError::Format {
            path: path.clone(),
            message: format!("not a usearch index: {e}"),
        })?;
        let want = names.len() as u64 * info.q as u64;
        if meta.dimensions as usize != info.p || meta.count_present != want {
            return Err(IndexError::corrupt(
                &path,
                "graph",
                format!(
                    "holds {} vectors of width {}, the sidecar says {} images × Q {} of width {}",
                    meta.count_present,
                    meta.dimensions,
                    names.len(),
                    info.q,
                    info.p
                ),
            ));
        }
        let index = if options.view {
            Index::restore_view(&path_str)
        } else {
            Index::restore(&path_str)
        }
        .map_err(|e| IndexError::corrupt(&path, "graph", e))?;
        index.change_expansion_search(options.expansion_search);
        index.change_expansion_add(options.expansion_add);
        Ok(Self {
            index,
            info,
            options: options.clone(),
            quantization,
            path,
            names,
            ids,
            next_id,
            viewed: options.view,
        })
    }

    /// Storage of the token vectors.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// Whether the graph is memory-mapped from its file (false once edited).
    pub fn is_mapped(&self) -> bool {
        self.viewed
    }

    /// The usearch file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the candidate list size `ef` used by searches.
    pub fn set_expansion_search(&mut self, ef: usize) {
        self.options.expansion_search = ef;
        self.index.change_expansion_search(ef);
    }

    /// Sets the over-fetch factor of searches (see [`UsearchOptions::overfetch`]).
    pub fn set_overfetch(&mut self, overfetch: f32) {
        self.options.overfetch = overfetch;
    }

    /// Loads a mapped graph into memory so that it can be edited.
    fn make_writable(&mut self) -> Result<()> {
        if self.viewed {
            let path_str = self.path.to_string_lossy().into_owned();
            let index = Index::restore(&path_str).map_err(|e| Self::err(&self.path, e))?;
            index.change_expansion_search(self.options.expansion_search);
            index.change_expansion_add(self.options.expansion_add);
            self.index = index;
            self.viewed = false;
        }
        Ok(())
    }

    fn key(&self, id: u64, t: usize) -> u64 {
        id * self.info.q as u64 + t as u64
    }

    fn search_one(&self, query: &[f32], k: usize, exclude: Option<u64>) -> Result<Vec<Hit>> {
        let q = self.info.q;
        let count = token_fetch_count(k, q, exclude.is_some(), self.options.overfetch).min(self.index.size());
        if count == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let found = self
            .index
            .search(query, count)
            .map_err(|e| Self::err(&self.path, e))?;
        // Every image seen among the token hits, re-scored over all of its tokens.
        let mut seen: Vec<u64> = found.keys.iter().map(|key| key / q as u64).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut buf = vec![0f32; q * self.info.p];
        let mut scored = Vec::with_capacity(seen.len());
        for id in seen {
            if Some(id) == exclude || !self.names.contains_key(&id) {
                continue;
            }
            for (t, row) in buf.chunks_exact_mut(self.info.p).enumerate() {
                self.index
                    .get(self.key(id, t), row)
                    .map_err(|e| Self::err(&self.path, e))?;
            }
            scored.push((id, max_dot(query, &buf)));
        }
        Ok(max_reduce(scored, k, exclude)
            .into_iter()
            .map(|(id, score)| Hit {
                index: id as usize,
                name: self.names[&id].clone(),
                score,
            })
            .collect())
    }

    fn write_sidecar(&self, path: &Path) -> Result<()> {
        let images: Vec<serde_json::Value> = self
            .names
            .iter()
            .map(|(id, n)| serde_json::json!([id, n]))
            .collect();
        let json = serde_json::json!({
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "fingerprint": self.info.fingerprint,
            "config_hash": self.info.config_hash,
            "q": self.info.q,
            "p": self.info.p,
            "quantization": self.quantization.as_str(),
            "connectivity": self.index.connectivity(),
            "next_id": self.next_id,
            "config": self.info.config,
            "images": images,
        });
        std::fs::write(path, serde_json::to_vec(&json).unwrap_or_default()).map_err(|source| IndexError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl GalleryIndex for UsearchIndex {
    fn backend(&self) -> Backend {
        Backend::Usearch
    }

    fn location(&self) -> Option<String> {
        Some(format!("usearch:{}", self.path.display()))
    }

    fn info(&self) -> &IndexInfo {
        &self.info
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn names(&self) -> Result<Vec<String>> {
        Ok(self.names.values().cloned().collect())
    }

    fn add_features(&mut self, names: Vec<String>, features: &GalleryFeatures) -> Result<()> {
        check_new_names(&names, |n| self.ids.contains_key(n))?;
        let values = token_values(&self.info, &names, features)?;
        if names.is_empty() {
            return Ok(());
        }
        self.make_writable()?;
        let (q, p) = (self.info.q, self.info.p);
        let threads = self.threads();
        let first = self.next_id;
        self.index
            .reserve_capacity_and_threads(self.index.size() + names.len() * q, threads)
            .map_err(|e| Self::err(&self.path, e))?;
        // Token vectors are independent inserts: spread them over the threads.
        let per = q * p;
        let chunk = names.len().div_ceil(threads);
        let index = &self.index;
        let failed: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = values
                .chunks(chunk * per)
                .enumerate()
                .map(|(c, vals)| {
                    s.spawn(move || {
                        for (i, img) in vals.chunks_exact(per).enumerate() {
                            let id = first + (c * chunk + i) as u64;
                            for (t, v) in img.chunks_exact(p).enumerate() {
                                if let Err(e) = index.add(id * q as u64 + t as u64, v) {
                                    return Some(e.to_string());
                                }
                            }
                        }
                        None
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|_| Some("insert thread panicked".into())))
                .collect()
        });
        if let Some(message) = failed.into_iter().next() {
            return Err(Self::err(&self.path, format!("insert failed: {message}")));
        }
        self.next_id = first + names.len() as u64;
        for (i, n) in names.into_iter().enumerate() {
            let id = first + i as u64;
            self.ids.insert(n.clone(), id);
            self.names.insert(id, n);
        }
        Ok(())
    }

    fn remove(&mut self, names: &[String]) -> Result<()> {
        let mut ids = Vec::with_capacity(names.len());
        for n in names {
            ids.push(
                *self
                    .ids
                    .get(n)
                    .ok_or_else(|| IndexError::UnknownImage { name: n.clone() })?,
            );
        }
        self.make_writable()?;
        for id in ids {
            for t in 0..self.info.q {
                self.index
                    .remove(self.key(id, t))
                    .map_err(|e| Self::err(&self.path, e))?;
            }
            if let Some(n) = self.names.remove(&id) {
                self.ids.remove(&n);
            }
        }
        Ok(())
    }

    fn search_features(&self, queries: &Tensor, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        let (values, b) = query_rows(queries, self.info.p, "queries")?;
        if self.names.is_empty() {
            return Err(IndexError::EmptyIndex);
        }
        if !opts.exclude.is_empty() && opts.exclude.len() != b {
            return Err(IndexError::input(
                "exclude",
                format!("{} entries for {b} queries", opts.exclude.len()),
            ));
        }
        let exclude: Vec<Option<u64>> = (0..b)
            .map(|i| {
                opts.exclude
                    .get(i)
                    .and_then(|e| e.as_deref())
                    .and_then(|n| self.ids.get(n).copied())
            })
            .collect();
        let p = self.info.p;
        let threads = kernel::thread_count(opts.threads).min(b.max(1));
        let rows: Vec<usize> = (0..b).collect();
        let per = b.div_ceil(threads);
        let results: Vec<Result<Vec<Hit>>> = std::thread::scope(|s| {
            let handles: Vec<_> = rows
                .chunks(per.max(1))
                .map(|chunk| {
                    let (values, exclude) = (&values, &exclude);
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|&j| self.search_one(&values[j * p..(j + 1) * p], opts.k, exclude[j]))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec![Err(Self::err(&self.path, "search thread panicked"))])
                })
                .collect()
        });
        results.into_iter().collect()
    }

    fn persist(&mut self) -> Result<()> {
        if self.viewed {
            // Unchanged since it was opened: the files already hold it.
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let (tmp, side, side_tmp) = (
            tmp_path(&self.path),
            sidecar_path(&self.path),
            tmp_path(&sidecar_path(&self.path)),
        );
        self.index
            .save(&tmp.to_string_lossy())
            .map_err(|e| Self::err(&self.path, e))?;
        self.write_sidecar(&side_tmp)?;
        let rename = |a: &Path, b: &Path| {
            std::fs::rename(a, b).map_err(|source| IndexError::Io {
                path: b.to_path_buf(),
                source,
            })
        };
        rename(&tmp, &self.path)?;
        rename(&side_tmp, &side)
    }
}
