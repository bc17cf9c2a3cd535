//! The Milvus backend (feature `milvus`) against a real server.
//!
//! The server: `DF_MILVUS_URI` (e.g. `milvus://127.0.0.1:19530`), else 127.0.0.1:19530 when
//! something listens there; without either the server tests skip with a message. `.ci/run`
//! starts `milvus-lite server` and sets `DF_MILVUS_URI`, so in CI they always run.

mod index_support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use detailfusion::index::{
    create_index, open_index, open_or_create_index, BackendOptions, GalleryIndex, IndexError, MilvusIndex,
    MilvusOptions, MilvusVectorIndex, SearchOptions,
};
use index_support::*;

const Q: usize = 8;
const P: usize = 32;

/// `milvus://host:port` of the test server, or `None` (skip) when there is none.
fn server() -> Option<String> {
    if let Ok(uri) = std::env::var("DF_MILVUS_URI") {
        return Some(uri.trim_end_matches('/').to_string());
    }
    let addr: SocketAddr = "127.0.0.1:19530".parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
        return Some("milvus://127.0.0.1:19530".into());
    }
    eprintln!(
        "SKIPPED: no Milvus server (DF_MILVUS_URI unset, nothing on 127.0.0.1:19530); start one with \
         `milvus-lite server --data-dir DIR --host 127.0.0.1 --port 19530` (pip install milvus-lite)"
    );
    None
}

fn options() -> MilvusOptions {
    MilvusOptions {
        batch_images: 16,
        ..Default::default()
    }
}

// Other backends' settings exist when their features are on too.
#[allow(clippy::needless_update)]
fn backend() -> BackendOptions {
    BackendOptions {
        milvus: options(),
        ..Default::default()
    }
}

/// A collection name unique to this test and process, dropped first.
fn collection(server: &str, name: &str) -> String {
    let uri = format!("{server}/df_test_{}_{name}", std::process::id());
    MilvusIndex::drop_collection(&uri, &options()).unwrap();
    uri
}

#[test]
fn flat_collection_agrees_with_the_flat_index() {
    let Some(server) = server() else { return };
    let uri = collection(&server, "flat");
    let info = info("model-a", Q, P);
    let (names, values) = clustered(120, Q, P, 5);
    let queries = queries(&values, Q, P, 12, 7);
    let opts = SearchOptions::top(10).excluding((0..12).map(|i| (i % 2 == 0).then(|| names[i * 9].clone())));
    let reference = flat(&info, &names, &values);
    let want = reference.search_features(&queries, &opts).unwrap();

    let started = Instant::now();
    let mut index = create_index(&uri, info.clone(), &backend()).unwrap();
    index
        .add_features(
            names[..50].to_vec(),
            &features(&names[..50], &values[..50 * Q * P], Q, P),
        )
        .unwrap();
    index
        .add_features(
            names[50..].to_vec(),
            &features(&names[50..], &values[50 * Q * P..], Q, P),
        )
        .unwrap();
    index.persist().unwrap();
    let inserted = started.elapsed();
    assert_eq!(index.len(), 120);
    let started = Instant::now();
    let got = index.search_features(&queries, &opts).unwrap();
    eprintln!(
        "milvus round trip: insert 120 images ({} token rows) + flush {:.0} ms, search 12 queries top-10 {:.1} ms",
        120 * Q,
        inserted.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    // Exact FLAT index: the same images with the same scores (up to float summation order).
    assert_same_hits(&got, &want, 1e-5);

    // Reopened by location: the same gallery, model checked.
    let mut index = open_index(&uri, &backend()).unwrap();
    assert_eq!(index.len(), 120);
    let mut all = index.names().unwrap();
    all.sort();
    assert_eq!(all, names);
    assert_same_hits(&index.search_features(&queries, &opts).unwrap(), &want, 1e-5);
    let e = open_or_create_index(&uri, self::info("model-b", Q, P), &backend()).unwrap_err();
    assert!(matches!(e, IndexError::ModelMismatch { .. }), "{e}");
    let e = create_index(&uri, info.clone(), &backend()).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");

    // Duplicates and unknown names are refused; removal matches the flat index's.
    let e = index
        .add_features(
            vec![names[7].clone()],
            &features(&names[7..8], &values[7 * Q * P..8 * Q * P], Q, P),
        )
        .unwrap_err();
    assert!(matches!(e, IndexError::Duplicate { .. }), "{e}");
    let e = index.remove(&["missing.png".to_string()]).unwrap_err();
    assert!(matches!(e, IndexError::UnknownImage { .. }), "{e}");
    let gone: Vec<String> = want[1].iter().take(2).map(|h| h.name.clone()).collect();
    index.remove(&gone).unwrap();
    let mut reference = reference;
    reference.remove(&gone).unwrap();
    assert_eq!(index.len(), 118);
    let plain = SearchOptions::top(10);
    assert_same_hits(
        &index.search_features(&queries, &plain).unwrap(),
        &reference.search_features(&queries, &plain).unwrap(),
        1e-5,
    );
    MilvusIndex::drop_collection(&uri, &options()).unwrap();
}

/// An HNSW collection: created with its graph parameters, searched with over-fetch. Scores are
/// max-over-tokens of the tokens found, so never above the exact ones. (milvus-lite searches by
/// brute force whatever the index type, so there the top 10 is also exact.)
#[test]
fn hnsw_collection_finds_the_flat_top_k() {
    let Some(server) = server() else { return };
    let uri = collection(&server, "hnsw");
    let info = info("model-a", Q, P);
    let (names, values) = clustered(120, Q, P, 11);
    let queries = queries(&values, Q, P, 12, 13);
    let opts = SearchOptions::top(10);
    let reference = flat(&info, &names, &values);
    let want = reference.search_features(&queries, &opts).unwrap();
    let every = reference
        .search_features(&queries, &SearchOptions::top(names.len()))
        .unwrap();
    let milvus = MilvusOptions {
        vector_index: MilvusVectorIndex::Hnsw {
            m: 16,
            ef_construction: 64,
        },
        overfetch: 2.0,
        ..options()
    };
    let mut index = MilvusIndex::create(&uri, info, &milvus).unwrap();
    index
        .add_features(names.clone(), &features(&names, &values, Q, P))
        .unwrap();
    index.persist().unwrap();
    let got = index.search_features(&queries, &opts).unwrap();
    let r = recall(&got, &want);
    assert!(r >= 0.9, "recall@10 {r}");
    for (hits, all) in got.iter().zip(&every) {
        let exact: HashMap<&str, f32> = all.iter().map(|h| (h.name.as_str(), h.score)).collect();
        for h in hits {
            let e = exact[h.name.as_str()];
            assert!(h.score <= e + 1e-5, "{}: {} above the exact {e}", h.name, h.score);
        }
    }
    MilvusIndex::drop_collection(&uri, &milvus).unwrap();
}

#[test]
fn a_server_that_is_down_or_silent_gives_a_bounded_clear_error() {
    // Down: nothing listens on the port.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let opts = MilvusOptions {
        attempts: 2,
        connect_timeout: Duration::from_millis(500),
        backoff: Duration::from_millis(50),
        ..Default::default()
    };
    let started = Instant::now();
    let e = MilvusIndex::open(&format!("milvus://127.0.0.1:{port}/gallery"), &opts).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IndexError::Unreachable { attempts: 2, .. }), "{msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("connect"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Silent: accepts connections and never answers (a hung server): times out, bounded.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let started = Instant::now();
    let e = MilvusIndex::open(&format!("milvus://127.0.0.1:{port}/gallery"), &opts).unwrap_err();
    assert!(matches!(e, IndexError::Unreachable { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A collection made directly with the SDK (not by this library).
fn foreign_collection(
    server: &str,
    name: &str,
    properties: HashMap<String, String>,
    name_len: u32,
) -> String {
    use milvus::v2::prelude::*;
    let uri = collection(server, name);
    let (endpoint, coll) = uri.rsplit_once('/').unwrap();
    let endpoint = endpoint.replace("milvus://", "http://");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = ClientV2::new(&ConnectConfig::new().uri(endpoint)).await.unwrap();
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
                    .max_length(name_len),
            )
            .add_field(
                FieldSchema::new()
                    .name("vector")
                    .data_type(DataType::FloatVector)
                    .dimension(P as u32),
            );
        client
            .create_collection(
                CreateCollectionRequest::builder()
                    .collection_name(coll)
                    .schema(schema)
                    .index_params(vec![IndexParam::new()
                        .field_name("vector")
                        .index_type(IndexType::Flat)
                        .metric_type(MetricType::Ip)])
                    .properties(properties)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
    });
    uri
}

fn df_properties(version: &str) -> HashMap<String, String> {
    [
        ("format", "detailfusion-milvus"),
        ("version", version),
        ("fingerprint", "model-a"),
        ("config_hash", "synthetic"),
        ("q", "8"),
        ("p", "32"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("detailfusion.{k}"), v.to_string()))
    .collect()
}

#[test]
fn foreign_collections_and_partial_inserts_are_reported() {
    let Some(server) = server() else { return };
    // Not a DetailFusion gallery.
    let uri = foreign_collection(&server, "foreign", HashMap::new(), 64);
    let e = MilvusIndex::open(&uri, &options()).unwrap_err();
    assert!(
        matches!(e, IndexError::Schema { .. }) && e.to_string().contains("detailfusion.format"),
        "{e}"
    );
    MilvusIndex::drop_collection(&uri, &options()).unwrap();
    // A gallery of a later version.
    let uri = foreign_collection(&server, "version", df_properties("9"), 64);
    let e = MilvusIndex::open(&uri, &options()).unwrap_err();
    assert!(
        matches!(e, IndexError::Schema { .. }) && e.to_string().contains("version 9"),
        "{e}"
    );
    MilvusIndex::drop_collection(&uri, &options()).unwrap();
    // Missing collections.
    let e = MilvusIndex::open(&format!("{server}/df_no_such_collection"), &options()).unwrap_err();
    assert!(e.to_string().contains("no such collection"), "{e}");

    // A gallery whose names may be 12 bytes at most: the second batch (long names) fails
    // after the first went in, and the error says which images are in and which are not.
    let uri = foreign_collection(&server, "partial", df_properties("1"), 12);
    let mut index = MilvusIndex::open(&uri, &options()).unwrap();
    let (mut names, values) = clustered(24, Q, P, 9);
    for (i, n) in names.iter_mut().enumerate() {
        *n = if i < 16 {
            format!("s{i}.png")
        } else {
            format!("a-much-longer-name-{i}.png")
        };
    }
    let e = index
        .add_features(names.clone(), &features(&names, &values, Q, P))
        .unwrap_err();
    match &e {
        IndexError::PartialInsert { inserted, failed, .. } => {
            assert_eq!(inserted, &names[..16]);
            assert_eq!(failed, &names[16..]);
        }
        other => panic!("expected a partial insert, got {other}"),
    }
    assert!(
        e.to_string().contains("16 image(s) inserted, 8 not inserted"),
        "{e}"
    );
    assert_eq!(index.len(), 16);
    MilvusIndex::drop_collection(&uri, &options()).unwrap();
}
