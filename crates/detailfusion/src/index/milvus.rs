//! Galleries in a Milvus server or cluster, through the official Rust SDK.
//!
//! **Collection.** One per gallery, one row per token vector:
//!
//! ```text
//! pk        Int64, primary key, auto id
//! image_id  Int64          63-bit FNV-1a hash of the name (the same on every client and shard)
//! token     Int32          0..Q
//! name      VarChar(1024)  the image's name (relative path)
//! vector    FloatVector(P) the token feature
//! properties: detailfusion.format = detailfusion-milvus, detailfusion.version = 1,
//!             detailfusion.fingerprint, detailfusion.config_hash, detailfusion.q, detailfusion.p
//! ```
//!
//! **Search.** Each query fetches `(k + e)·Q·overfetch` token hits (inner product) and
//! max-reduces them by `image_id` ([`super::max_reduce`]). With the exact `FLAT` index and
//! `overfetch = 1` this is the exact top `k` (see [`super::token_fetch_count`]).
//!
//! **Failures.** Connecting and every call are retried a bounded number of times on transient
//! errors (server unavailable, timeouts), then give [`IndexError::Unreachable`]. Inserts go in
//! batches of whole images; when a batch fails after earlier ones succeeded, the error is an
//! [`IndexError::PartialInsert`] that lists what is in the collection and what is not. A
//! collection without DetailFusion's properties or fields gives [`IndexError::Schema`].

mod calls;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use candle_core::Tensor;
use milvus::v2::prelude::*;

use super::backend::{check_new_names, encode_folder, query_rows, token_values, Backend, GalleryIndex};
use super::error::{IndexError, Result};
use super::reduce::{max_reduce, token_fetch_count};
use super::{build, FeatureDType, Hit, IndexInfo, IndexOptions, IndexReport, IndexUri, SearchOptions};
use crate::{DetailFusion, GalleryFeatures};
use calls::Conn;

const FORMAT: &str = "detailfusion-milvus";
const VERSION: &str = "1";
const MAX_NAME: u32 = 1024;
/// Milvus refuses more than this many hits per query (`topk`) or rows per query page.
const MAX_TOPK: usize = 16384;
/// Names per `in [...]` filter.
const FILTER_CHUNK: usize = 512;

/// The vector index Milvus builds over the token vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MilvusVectorIndex {
    /// Exact search (brute force): the same top `k` as the flat index.
    Flat,
    /// HNSW graph (approximate).
    Hnsw {
        /// Graph degree.
        m: usize,
        /// Candidate list size while building.
        ef_construction: usize,
    },
}

/// Connection and collection settings of a Milvus index.
#[derive(Debug, Clone)]
pub struct MilvusOptions {
    /// `user:password` or an API key; `None`: the `MILVUS_TOKEN` environment variable, else
    /// none.
    pub token: Option<String>,
    /// Vector index of new collections (`Flat`).
    pub vector_index: MilvusVectorIndex,
    /// Shards of new collections (1); more spread a large gallery over query nodes.
    pub shards: i32,
    /// Token hits fetched per query, as a multiple of `(k + e)·Q` (1.0: exact with `Flat`).
    pub overfetch: f32,
    /// Images per insert request (64: 2 MiB of `f32` at `Q = 32`, `P = 256`).
    pub batch_images: usize,
    /// Time allowed to connect (5 s).
    pub connect_timeout: Duration,
    /// Time allowed per call (30 s).
    pub timeout: Duration,
    /// Attempts per call on transient errors (3), with doubling back-off from `backoff`.
    pub attempts: u32,
    /// First back-off (200 ms).
    pub backoff: Duration,
}

impl Default for MilvusOptions {
    fn default() -> Self {
        Self {
            token: None,
            vector_index: MilvusVectorIndex::Flat,
            shards: 1,
            overfetch: 1.0,
            batch_images: 64,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            attempts: 3,
            backoff: Duration::from_millis(200),
        }
    }
}

/// A gallery stored in a Milvus collection (see the module docs for its layout).
pub struct MilvusIndex {
    conn: Conn,
    info: IndexInfo,
    options: MilvusOptions,
    /// Images in the collection, as counted when opened and kept up to date by this handle.
    count: usize,
}

impl std::fmt::Debug for MilvusIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusIndex")
            .field("location", &self.conn.uri)
            .field("len", &self.count)
            .finish()
    }
}

/// The image id of a name: FNV-1a 64 with the top bit cleared (a non-negative `Int64`).
pub fn image_id(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

fn prop(key: &str) -> String {
    format!("detailfusion.{key}")
}

impl MilvusIndex {
    fn connect(uri: &str, options: &MilvusOptions) -> Result<Conn> {
        let IndexUri::Milvus {
            endpoint,
            database,
            collection,
        } = IndexUri::parse(uri)?
        else {
            return Err(IndexError::Uri {
                uri: uri.to_string(),
                message: "not a milvus:// location".into(),
            });
        };
        Conn::new(uri, endpoint, database, collection, options)
    }

    /// Whether the collection of `uri` exists.
    pub fn exists(uri: &str, options: &MilvusOptions) -> Result<bool> {
        Self::connect(uri, options)?.has_collection()
    }

    /// Drops the collection of `uri` (and all its images). `Ok` when there was none.
    pub fn drop_collection(uri: &str, options: &MilvusOptions) -> Result<()> {
        let conn = Self::connect(uri, options)?;
        if conn.has_collection()? {
            conn.drop_collection()?;
        }
        Ok(())
    }

    /// Creates the collection of `uri` for the model described by `info`, with its vector
    /// index, and loads it. Refuses an existing collection and per-branch galleries.
    pub fn create(uri: &str, info: IndexInfo, options: &MilvusOptions) -> Result<Self> {
        if info.per_branch {
            return Err(IndexError::Unsupported {
                backend: "milvus",
                message: "per-branch galleries (GM's own gallery features) need the flat index".into(),
            });
        }
        let conn = Self::connect(uri, options)?;
        if conn.has_collection()? {
            return Err(IndexError::Uri {
                uri: uri.to_string(),
                message: "the collection already exists (open it, or drop it first)".into(),
            });
        }
        let schema = CollectionSchema::new()
            .add_field(
                FieldSchema::new()
                    .name("pk")
                    .data_type(DataType::Int64)
                    .primary_key(true)
                    .auto_id(true),
            )
            .add_field(FieldSchema::new().name("image_id").data_type(DataType::Int64))
            .add_field(FieldSchema::new().name("token").data_type(DataType::Int32))
            .add_field(
                FieldSchema::new()
                    .name("name")
                    .data_type(DataType::VarChar)
                    .max_length(MAX_NAME),
            )
            .add_field(
                FieldSchema::new()
                    .name("vector")
                    .data_type(DataType::FloatVector)
                    .dimension(info.p as u32),
            );
        let index = match options.vector_index {
            MilvusVectorIndex::Flat => IndexParam::new().index_type(IndexType::Flat),
            MilvusVectorIndex::Hnsw { m, ef_construction } => IndexParam::new()
                .index_type(IndexType::Hnsw)
                .extra_params(HashMap::from([
                    ("M".to_string(), m.to_string()),
                    ("efConstruction".to_string(), ef_construction.to_string()),
                ])),
        }
        .field_name("vector")
        .metric_type(MetricType::Ip);
        let properties = HashMap::from([
            (prop("format"), FORMAT.to_string()),
            (prop("version"), VERSION.to_string()),
            (prop("fingerprint"), info.fingerprint.clone()),
            (prop("config_hash"), info.config_hash.clone()),
            (prop("q"), info.q.to_string()),
            (prop("p"), info.p.to_string()),
        ]);
        conn.create_collection(schema, index, properties, options.shards)?;
        conn.load()?;
        Ok(Self {
            conn,
            info,
            options: options.clone(),
            count: 0,
        })
    }

    /// Opens the collection of `uri`: checks that it is a DetailFusion gallery (properties and
    /// fields, [`IndexError::Schema`] otherwise), loads it and counts its images.
    pub fn open(uri: &str, options: &MilvusOptions) -> Result<Self> {
        let conn = Self::connect(uri, options)?;
        if !conn.has_collection()? {
            return Err(IndexError::Uri {
                uri: uri.to_string(),
                message: "no such collection".into(),
            });
        }
        let desc = conn.describe()?;
        let schema_err = |m: String| IndexError::Schema {
            collection: conn.uri.clone(),
            message: m,
        };
        let props = desc.get_properties();
        let get = |k: &str| {
            props.get(&prop(k)).cloned().ok_or_else(|| {
                schema_err(format!(
                    "property `{}` missing: not a DetailFusion gallery (found properties {:?})",
                    prop(k),
                    props.keys().collect::<Vec<_>>()
                ))
            })
        };
        if get("format")? != FORMAT {
            return Err(schema_err(format!(
                "property `{}` is not `{FORMAT}`",
                prop("format")
            )));
        }
        let version = get("version")?;
        if version != VERSION {
            return Err(schema_err(format!(
                "gallery version {version}, this build reads version {VERSION}"
            )));
        }
        let number = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| schema_err(format!("property `{}` is not a number", prop(k))))
        };
        let info = IndexInfo {
            fingerprint: get("fingerprint")?,
            config_hash: get("config_hash")?,
            dtype: FeatureDType::F32,
            q: number("q")?,
            p: number("p")?,
            per_branch: false,
            config: None,
        };
        let fields = desc.get_schema().get_fields();
        let want = [
            ("image_id", DataType::Int64),
            ("token", DataType::Int32),
            ("name", DataType::VarChar),
            ("vector", DataType::FloatVector),
        ];
        for (name, dtype) in want {
            let f = fields
                .iter()
                .find(|f| f.get_name() == name)
                .ok_or_else(|| schema_err(format!("field `{name}` missing")))?;
            if f.get_data_type() != dtype {
                return Err(schema_err(format!(
                    "field `{name}` is {:?}, expected {dtype:?}",
                    f.get_data_type()
                )));
            }
            if name == "vector" && f.get_dimension() as usize != info.p {
                return Err(schema_err(format!(
                    "field `vector` has dimension {}, the gallery's P is {}",
                    f.get_dimension(),
                    info.p
                )));
            }
        }
        conn.load()?;
        let rows = conn.count_rows()?;
        Ok(Self {
            conn,
            count: rows / info.q.max(1),
            info,
            options: options.clone(),
        })
    }

    /// Of `names`, those in the collection, by image id; an id held by another name is a
    /// hash collision (an error naming both).
    fn present(&self, names: &[String]) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in names.chunks(FILTER_CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|n| image_id(n).to_string()).collect();
            let filter = format!("token == 0 and image_id in [{}]", ids.join(","));
            for (id, name) in self.conn.query_names(&filter, chunk.len())? {
                let asked = chunk.iter().find(|n| image_id(n) == id);
                match asked {
                    Some(n) if *n == name => {
                        found.insert(name);
                    }
                    Some(n) => {
                        return Err(IndexError::Input {
                            name: "names".into(),
                            message: format!("`{n}` and `{name}` have the same image id {id}: rename one"),
                        })
                    }
                    None => {}
                }
            }
        }
        Ok(found)
    }

    fn insert_batches(&mut self, names: &[String], values: &[f32]) -> Result<()> {
        let (q, p) = (self.info.q, self.info.p);
        let per = q * p;
        let mut inserted: Vec<String> = Vec::new();
        for (batch, vals) in names
            .chunks(self.options.batch_images.max(1))
            .zip(values.chunks(self.options.batch_images.max(1) * per))
        {
            let rows = batch.len() * q;
            let columns = vec![
                FieldData::int64(
                    "image_id",
                    batch
                        .iter()
                        .flat_map(|n| std::iter::repeat_n(image_id(n), q))
                        .collect(),
                ),
                FieldData::Int32 {
                    name: "token".into(),
                    values: (0..rows).map(|r| (r % q) as i32).collect(),
                },
                FieldData::varchar(
                    "name",
                    batch
                        .iter()
                        .flat_map(|n| std::iter::repeat_n(n.clone(), q))
                        .collect(),
                ),
                FieldData::float_vector("vector", vals.chunks_exact(p).map(<[f32]>::to_vec).collect()),
            ];
            match self.conn.insert(columns, rows) {
                Ok(()) => {
                    inserted.extend(batch.iter().cloned());
                    self.count += batch.len();
                }
                Err(e) if inserted.is_empty() => return Err(e),
                Err(e) => {
                    return Err(IndexError::PartialInsert {
                        location: self.conn.uri.clone(),
                        failed: names[inserted.len()..].to_vec(),
                        inserted,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

impl GalleryIndex for MilvusIndex {
    fn backend(&self) -> Backend {
        Backend::Milvus
    }

    fn location(&self) -> Option<String> {
        Some(self.conn.uri.clone())
    }

    fn info(&self) -> &IndexInfo {
        &self.info
    }

    fn len(&self) -> usize {
        self.count
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .conn
            .query_all_names(self.count)?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        names.sort();
        Ok(names)
    }

    fn add_features(&mut self, names: Vec<String>, features: &GalleryFeatures) -> Result<()> {
        check_new_names(&names, |_| false)?;
        if let Some(n) = names.iter().find(|n| n.len() > MAX_NAME as usize) {
            return Err(IndexError::input(
                "names",
                format!("`{n}` is longer than {MAX_NAME} bytes"),
            ));
        }
        let values = token_values(&self.info, &names, features)?;
        if let Some(n) = self.present(&names)?.into_iter().next() {
            return Err(IndexError::Duplicate { name: n });
        }
        self.insert_batches(&names, &values)
    }

    fn add_folder(&mut self, model: &DetailFusion, dir: &Path, opts: &IndexOptions) -> Result<IndexReport> {
        self.check_model(model)?;
        // Ask the server which of the folder's images it holds, instead of listing them all.
        let (images, _) = build::list_images(dir)?;
        let candidates: Vec<String> = images
            .iter()
            .filter_map(|p| build::relative_name(dir, p).ok())
            .collect();
        let known = self.present(&candidates)?;
        encode_folder(model, dir, &known, opts, &mut |names, f| {
            self.add_features(names, f)
        })
    }

    fn remove(&mut self, names: &[String]) -> Result<()> {
        let present = self.present(names)?;
        if let Some(n) = names.iter().find(|n| !present.contains(*n)) {
            return Err(IndexError::UnknownImage { name: n.clone() });
        }
        for chunk in names.chunks(FILTER_CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|n| image_id(n).to_string()).collect();
            self.conn.delete(&format!("image_id in [{}]", ids.join(",")))?;
            self.count = self.count.saturating_sub(chunk.len());
        }
        Ok(())
    }

    fn search_features(&self, queries: &Tensor, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        let (values, b) = query_rows(queries, self.info.p, "queries")?;
        if self.count == 0 {
            return Err(IndexError::EmptyIndex);
        }
        if !opts.exclude.is_empty() && opts.exclude.len() != b {
            return Err(IndexError::input(
                "exclude",
                format!("{} entries for {b} queries", opts.exclude.len()),
            ));
        }
        let excluding = opts.exclude.iter().any(Option::is_some);
        let limit = token_fetch_count(opts.k, self.info.q, excluding, self.options.overfetch);
        if limit > MAX_TOPK {
            return Err(IndexError::input(
                "k",
                format!(
                    "k = {} needs {limit} token hits per query, Milvus returns at most {MAX_TOPK}",
                    opts.k
                ),
            ));
        }
        if b == 0 || opts.k == 0 {
            return Ok(vec![Vec::new(); b]);
        }
        let rows: Vec<Vec<f32>> = values.chunks_exact(self.info.p).map(<[f32]>::to_vec).collect();
        let found = self.conn.search(rows, limit)?;
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(j, hits)| {
                let exclude = opts.exclude.get(j).and_then(|e| e.as_deref()).map(image_id);
                let names: HashMap<i64, String> = hits.iter().map(|(id, _, n)| (*id, n.clone())).collect();
                max_reduce(
                    hits.iter().map(|(id, s, _)| (*id as u64, *s)),
                    opts.k,
                    exclude.map(|e| e as u64),
                )
                .into_iter()
                .map(|(id, score)| Hit {
                    index: id as usize,
                    name: names[&(id as i64)].clone(),
                    score,
                })
                .collect()
            })
            .collect())
    }

    fn persist(&mut self) -> Result<()> {
        self.conn.flush()
    }
}
