//! Blocking calls to a Milvus server with bounded retries and errors that name the server.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use milvus::v2::prelude::*;
use tokio::runtime::Runtime;

use super::{MilvusOptions, MAX_TOPK};
use crate::index::error::{IndexError, Result};

/// A connection to one collection.
pub(super) struct Conn {
    rt: Runtime,
    client: ClientV2,
    /// The location as given (`milvus://host:port/collection`).
    pub uri: String,
    endpoint: String,
    collection: String,
    attempts: u32,
    backoff: Duration,
}

// gRPC status codes (`tonic::Code` as `i32`).
const UNAVAILABLE: i32 = 14;
const DEADLINE_EXCEEDED: i32 = 4;
const RESOURCE_EXHAUSTED: i32 = 8;

/// Whether an error may go away by itself (server restarting, network, timeouts).
fn transient(e: &Error) -> bool {
    match e {
        Error::Grpc(s) => matches!(
            i32::from(s.code()),
            UNAVAILABLE | DEADLINE_EXCEEDED | RESOURCE_EXHAUSTED
        ),
        Error::Timeout(_) | Error::RetryExhausted { .. } => true,
        _ => false,
    }
}

/// Whether a failed call surely did not change anything (the server was not reached).
fn not_applied(e: &Error) -> bool {
    matches!(e, Error::Grpc(s) if i32::from(s.code()) == UNAVAILABLE)
}

impl Conn {
    pub fn new(
        uri: &str,
        endpoint: String,
        database: Option<String>,
        collection: String,
        options: &MilvusOptions,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| IndexError::Backend {
                backend: "milvus",
                location: uri.to_string(),
                message: format!("cannot start the async runtime: {e}"),
            })?;
        let token = options
            .token
            .clone()
            .or_else(|| std::env::var("MILVUS_TOKEN").ok());
        let mut config = ConnectConfig::new()
            .uri(endpoint.clone())
            .connect_timeout(options.connect_timeout)
            .rpc_timeout(options.timeout)
            // Retries are ours (bounded, see `call`); the SDK's default is 75 attempts.
            .retry(RetryConfig::new().max_attempts(1))
            .telemetry(TelemetryConfig::new().enabled(false));
        if let Some(t) = token {
            config = config.token(t);
        }
        if let Some(db) = database {
            config = config.database(db);
        }
        let attempts = options.attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(options.backoff * 2u32.pow(attempt - 1));
            }
            match rt.block_on(ClientV2::new(&config)) {
                Ok(client) => {
                    return Ok(Self {
                        rt,
                        client,
                        uri: uri.to_string(),
                        endpoint,
                        collection,
                        attempts,
                        backoff: options.backoff,
                    })
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(IndexError::Unreachable {
            endpoint,
            attempts,
            during: "connect".into(),
            message: last,
        })
    }

    /// Runs `f` up to `attempts` times while it fails transiently (only while `retry_ok`
    /// says a failed attempt changed nothing).
    fn call<T, F, Fut>(&self, during: &str, retry_ok: fn(&Error) -> bool, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, Error>>,
    {
        let mut attempt = 0;
        loop {
            match self.rt.block_on(f()) {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) => {
                    attempt += 1;
                    if attempt >= self.attempts || !retry_ok(&e) {
                        return Err(IndexError::Unreachable {
                            endpoint: self.endpoint.clone(),
                            attempts: attempt,
                            during: format!("{during} on {}", self.collection),
                            message: e.to_string(),
                        });
                    }
                    std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                }
                Err(e) => {
                    return Err(IndexError::Backend {
                        backend: "milvus",
                        location: self.uri.clone(),
                        message: format!("{during}: {e}"),
                    })
                }
            }
        }
    }

    fn build<T>(&self, r: std::result::Result<T, Error>) -> Result<T> {
        r.map_err(|e| IndexError::Backend {
            backend: "milvus",
            location: self.uri.clone(),
            message: format!("bad request: {e}"),
        })
    }

    pub fn has_collection(&self) -> Result<bool> {
        let req = self.build(
            HasCollectionRequest::builder()
                .collection_name(&self.collection)
                .build(),
        )?;
        let r = self.call("has_collection", transient, || {
            self.client.has_collection(req.clone())
        })?;
        Ok(r.exists())
    }

    pub fn drop_collection(&self) -> Result<()> {
        let req = self.build(
            DropCollectionRequest::builder()
                .collection_name(&self.collection)
                .build(),
        )?;
        self.call("drop_collection", transient, || {
            self.client.drop_collection(req.clone())
        })
    }

    pub fn describe(&self) -> Result<CollectionDesc> {
        let req = self.build(
            DescribeCollectionRequest::builder()
                .collection_name(&self.collection)
                .build(),
        )?;
        let r = self.call("describe_collection", transient, || {
            self.client.describe_collection(req.clone())
        })?;
        Ok(r.description().clone())
    }

    pub fn create_collection(
        &self,
        schema: CollectionSchema,
        index: IndexParam,
        properties: HashMap<String, String>,
        shards: i32,
    ) -> Result<()> {
        let req = self.build(
            CreateCollectionRequest::builder()
                .collection_name(&self.collection)
                .schema(schema)
                .index_params(vec![index])
                .properties(properties)
                .num_shards(shards.max(1))
                .consistency_level(ConsistencyLevel::Strong)
                .build(),
        )?;
        // Not retried after a timeout: the collection may exist by then.
        self.call("create_collection", not_applied, || {
            self.client.create_collection(req.clone())
        })
    }

    pub fn load(&self) -> Result<()> {
        let req = self.build(
            LoadCollectionRequest::builder()
                .collection_name(&self.collection)
                .sync(true)
                .build(),
        )?;
        self.call("load_collection", transient, || {
            self.client.load_collection(req.clone())
        })
    }

    pub fn flush(&self) -> Result<()> {
        let req = self.build(
            FlushRequest::builder()
                .collection_names([self.collection.as_str()])
                .build(),
        )?;
        self.call("flush", transient, || async {
            self.client.flush(req.clone()).await.map(|_| ())
        })
    }

    /// Inserts `rows` rows; a short count is an error.
    pub fn insert(&self, columns: Vec<FieldData>, rows: usize) -> Result<()> {
        let req = self.build(
            InsertRequest::builder()
                .collection_name(&self.collection)
                .columns(columns)
                .build(),
        )?;
        // Retried only when the server was not reached: a timed-out insert may have landed.
        let r = self.call("insert", not_applied, || self.client.insert(req.clone()))?;
        let n = r.insert_count();
        if n != rows as i64 {
            return Err(IndexError::Backend {
                backend: "milvus",
                location: self.uri.clone(),
                message: format!("insert: {n} of {rows} rows were inserted"),
            });
        }
        Ok(())
    }

    pub fn delete(&self, filter: &str) -> Result<()> {
        let req = self.build(
            DeleteRequest::builder()
                .collection_name(&self.collection)
                .filter(filter)
                .build(),
        )?;
        self.call("delete", transient, || self.client.delete(req.clone()))?;
        Ok(())
    }

    pub fn count_rows(&self) -> Result<usize> {
        let req = self.build(
            QueryRequest::builder()
                .collection_name(&self.collection)
                .filter("")
                .output_fields(["count(*)"])
                .consistency_level(ConsistencyLevel::Strong)
                .build(),
        )?;
        let r = self.call("count", transient, || self.client.query(req.clone()))?;
        let rows = self.build(r.results().rows())?;
        match rows.into_iter().next() {
            Some(row) => Ok(self.build(row.get_i64("count(*)"))?.max(0) as usize),
            None => Ok(0),
        }
    }

    /// `(image_id, name)` of the rows matching `filter` (at most `limit`).
    pub fn query_names(&self, filter: &str, limit: usize) -> Result<Vec<(i64, String)>> {
        let req = self.build(
            QueryRequest::builder()
                .collection_name(&self.collection)
                .filter(filter)
                .output_fields(["image_id", "name"])
                .limit(limit.clamp(1, MAX_TOPK) as i64)
                .consistency_level(ConsistencyLevel::Strong)
                .build(),
        )?;
        let r = self.call("query", transient, || self.client.query(req.clone()))?;
        self.names_of(r.results())
    }

    fn names_of(&self, results: &QueryResults) -> Result<Vec<(i64, String)>> {
        let mut out = Vec::new();
        for row in self.build(results.rows())? {
            out.push((
                self.build(row.get_i64("image_id"))?,
                self.build(row.get_str("name"))?.to_string(),
            ));
        }
        Ok(out)
    }

    /// `(image_id, name)` of every image. Image ids are uniform hashes, so the id range is cut
    /// into pieces of about `MAX_TOPK / 2` images each, and a piece that comes back full is
    /// cut again (this works on every server, without query iterators).
    pub fn query_all_names(&self, count: usize) -> Result<Vec<(i64, String)>> {
        let pieces = count.div_ceil(MAX_TOPK / 2).max(1) as i128;
        let span = (i64::MAX as i128 + 1) / pieces;
        let mut todo: Vec<(i128, i128)> = (0..pieces)
            .map(|i| {
                (
                    i * span,
                    if i + 1 == pieces {
                        i64::MAX as i128 + 1
                    } else {
                        (i + 1) * span
                    },
                )
            })
            .collect();
        let mut out = Vec::with_capacity(count);
        while let Some((lo, hi)) = todo.pop() {
            // Inclusive bounds: `i64::MAX + 1` is not an Int64 literal.
            let filter = format!("token == 0 and image_id >= {lo} and image_id <= {}", hi - 1);
            let got = self.query_names(&filter, MAX_TOPK)?;
            if got.len() >= MAX_TOPK && hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                todo.push((lo, mid));
                todo.push((mid, hi));
            } else {
                out.extend(got);
            }
        }
        Ok(out)
    }

    /// Per query row: `(image_id, score, name)` of the `limit` best token hits.
    pub fn search(&self, queries: Vec<Vec<f32>>, limit: usize) -> Result<Vec<Vec<(i64, f32, String)>>> {
        let b = queries.len();
        let req = self.build(
            SearchRequest::builder()
                .collection_name(&self.collection)
                .vector_field("vector")
                .vectors(SearchVectors::Float(queries))
                .limit(limit as i64)
                .output_fields(["image_id", "name"])
                .metric_type(MetricType::Ip)
                .consistency_level(ConsistencyLevel::Strong)
                .build(),
        )?;
        let r = self.call("search", transient, || self.client.search(req.clone()))?;
        let mut out = Vec::with_capacity(b);
        for single in r.results() {
            let mut hits = Vec::new();
            for row in self.build(single.rows())? {
                hits.push((
                    self.build(row.get_i64("image_id"))?,
                    self.build(row.get_f32("score"))?,
                    self.build(row.get_str("name"))?.to_string(),
                ));
            }
            out.push(hits);
        }
        if out.len() != b {
            return Err(IndexError::Backend {
                backend: "milvus",
                location: self.uri.clone(),
                message: format!("search returned {} result lists for {b} queries", out.len()),
            });
        }
        Ok(out)
    }
}
