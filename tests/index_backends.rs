//! The `GalleryIndex` trait on the flat index, and backend selection by location strings.

mod index_support;

use detailfusion::index::{
    create_index, open_index, open_or_create_index, Backend, BackendOptions, GalleryIndex, IndexError,
    IndexUri, SearchOptions,
};
use index_support::*;

const Q: usize = 4;
const P: usize = 16;

#[test]
fn locations_pick_the_backend() {
    use std::path::PathBuf;
    assert_eq!(
        IndexUri::parse("g.safetensors").unwrap(),
        IndexUri::Flat(PathBuf::from("g.safetensors"))
    );
    assert_eq!(
        IndexUri::parse("flat:dir/g").unwrap(),
        IndexUri::Flat(PathBuf::from("dir/g"))
    );
    assert_eq!(
        IndexUri::parse("usearch:/tmp/g.usearch").unwrap(),
        IndexUri::Usearch(PathBuf::from("/tmp/g.usearch"))
    );
    assert_eq!(
        IndexUri::parse("milvus://127.0.0.1:19530/photos").unwrap(),
        IndexUri::Milvus {
            endpoint: "http://127.0.0.1:19530".into(),
            database: None,
            collection: "photos".into()
        }
    );
    assert_eq!(
        IndexUri::parse("milvus+tls://milvus.example.com/prod/photos_2024").unwrap(),
        IndexUri::Milvus {
            endpoint: "https://milvus.example.com:19530".into(),
            database: Some("prod".into()),
            collection: "photos_2024".into()
        }
    );
    assert_eq!(
        IndexUri::parse("milvus://h:1/c").unwrap().backend(),
        Backend::Milvus
    );
    for bad in [
        "",
        "usearch:",
        "milvus://host:1",
        "milvus:///c",
        "milvus://h:1/a/b/c",
        "milvus://h:1/9bad",
        "s3://bucket/x",
    ] {
        let e = IndexUri::parse(bad).unwrap_err();
        assert!(matches!(e, IndexError::Uri { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
    }
}

#[test]
fn the_flat_index_through_the_trait() {
    let dir = tmpdir("flat-trait");
    let uri = dir.join("g.safetensors").to_string_lossy().into_owned();
    let info = info("model-a", Q, P);
    let (names, values) = clustered(40, Q, P, 7);
    let reference = flat(&info, &names, &values);
    let queries = queries(&values, Q, P, 6, 3);
    let opts = SearchOptions::top(5).excluding((0..6).map(|i| (i % 2 == 0).then(|| names[i * 3].clone())));
    let want = reference.search_features(&queries, &opts).unwrap();

    let backend = BackendOptions::default();
    let mut index = create_index(&uri, info.clone(), &backend).unwrap();
    assert_eq!(index.backend(), Backend::Flat);
    assert!(index.is_empty());
    index
        .add_features(
            names[..25].to_vec(),
            &features(&names[..25], &values[..25 * Q * P], Q, P),
        )
        .unwrap();
    index
        .add_features(
            names[25..].to_vec(),
            &features(&names[25..], &values[25 * Q * P..], Q, P),
        )
        .unwrap();
    assert_eq!(index.len(), 40);
    assert_same_hits(&index.search_features(&queries, &opts).unwrap(), &want, 1e-6);
    // Duplicates are refused, whole batch.
    let e = index.add_features(
        vec![names[3].clone()],
        &features(&names[3..4], &values[3 * Q * P..4 * Q * P], Q, P),
    );
    assert!(matches!(e, Err(IndexError::Duplicate { .. })), "{e:?}");
    index.persist().unwrap();

    // Reopened from its location: memory-mapped, same results.
    let reopened = open_index(&uri, &backend).unwrap();
    assert_eq!(reopened.location().as_deref(), Some(uri.as_str()));
    assert_eq!(reopened.names().unwrap(), names);
    assert_same_hits(&reopened.search_features(&queries, &opts).unwrap(), &want, 1e-6);

    // The same location cannot be created twice; opening checks the model.
    let e = create_index(&uri, info.clone(), &backend).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let e = open_or_create_index(&uri, self::info("model-b", Q, P), &backend).unwrap_err();
    assert!(matches!(e, IndexError::ModelMismatch { .. }), "{e}");
    let mut index = open_or_create_index(&uri, info.clone(), &backend).unwrap();
    index.remove(&[names[0].clone(), names[1].clone()]).unwrap();
    assert_eq!(index.len(), 38);
    let e = index.remove(&["nope.png".to_string()]).unwrap_err();
    assert!(matches!(e, IndexError::UnknownImage { .. }), "{e}");

    // An index that has never been saved has nowhere to persist to.
    let mut unsaved = flat(&info, &names, &values);
    let e = GalleryIndex::persist(&mut unsaved).unwrap_err();
    assert!(e.to_string().contains("no file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg(not(feature = "usearch"))]
fn backends_not_built_say_which_feature_to_enable() {
    let e = open_index("usearch:/tmp/x.usearch", &BackendOptions::default()).unwrap_err();
    assert!(e.to_string().contains("--features usearch"), "{e}");
}

#[test]
#[cfg(not(feature = "milvus"))]
fn milvus_not_built_says_which_feature_to_enable() {
    let e = open_index("milvus://127.0.0.1:19530/g", &BackendOptions::default()).unwrap_err();
    assert!(e.to_string().contains("--features milvus"), "{e}");
}
