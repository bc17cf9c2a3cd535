//! The usearch backend (feature `usearch`) against the exact flat index.

mod index_support;

use detailfusion::index::{
    create_index, open_index, open_or_create_index, BackendOptions, GalleryIndex, Hit, IndexError,
    Quantization, SearchOptions, UsearchIndex, UsearchOptions,
};
use index_support::*;

const Q: usize = 8;
const P: usize = 32;

fn options(quantization: Quantization) -> UsearchOptions {
    UsearchOptions {
        quantization,
        expansion_search: 256,
        overfetch: 4.0,
        ..Default::default()
    }
}

// Other backends' settings exist when their features are on too.
#[allow(clippy::needless_update)]
fn backend(quantization: Quantization) -> BackendOptions {
    BackendOptions {
        usearch: options(quantization),
        ..Default::default()
    }
}

/// HNSW is approximate and its multithreaded build is not deterministic, so an f32 graph may
/// miss the odd hit: recall@10 against the flat index at least 0.95, and every hit it does find
/// scored exactly (candidates are re-scored over all their stored vectors).
fn near_exact(got: &[Vec<Hit>], want: &[Vec<Hit>]) {
    let r = recall(got, want);
    assert!(r >= 0.95, "recall@10 {r} against the flat index");
    for (g, w) in got.iter().zip(want) {
        for h in g {
            if let Some(x) = w.iter().find(|x| x.name == h.name) {
                assert!(
                    (h.score - x.score).abs() <= 1e-5,
                    "{}: score {} vs {}",
                    h.name,
                    h.score,
                    x.score
                );
            }
        }
    }
}

#[test]
fn f32_graph_finds_the_top_k_with_exact_scores() {
    let dir = tmpdir("usearch-exact");
    let uri = format!("usearch:{}", dir.join("g.usearch").display());
    let info = info("m", Q, P);
    let (names, values) = clustered(300, Q, P, 11);
    let reference = flat(&info, &names, &values);
    let queries = queries(&values, Q, P, 16, 5);
    let opts = SearchOptions::top(10).excluding((0..16).map(|i| (i % 3 == 0).then(|| names[i * 5].clone())));
    let want = reference.search_features(&queries, &opts).unwrap();

    let mut index = create_index(&uri, info.clone(), &backend(Quantization::F32)).unwrap();
    index
        .add_features(
            names[..100].to_vec(),
            &features(&names[..100], &values[..100 * Q * P], Q, P),
        )
        .unwrap();
    index
        .add_features(
            names[100..].to_vec(),
            &features(&names[100..], &values[100 * Q * P..], Q, P),
        )
        .unwrap();
    assert_eq!(index.len(), 300);
    let got = index.search_features(&queries, &opts).unwrap();
    near_exact(&got, &want);
    for (j, g) in got.iter().enumerate() {
        if j % 3 == 0 {
            assert!(
                g.iter().all(|h| h.name != names[j * 5]),
                "query {j}: the excluded image came back"
            );
        }
    }
    index.persist().unwrap();

    // Reopened: memory-mapped, same answers; edits load it into memory first.
    let mut index = UsearchIndex::open(dir.join("g.usearch"), &options(Quantization::F32)).unwrap();
    assert!(index.is_mapped());
    assert_eq!(index.quantization(), Quantization::F32);
    near_exact(&index.search_features(&queries, &opts).unwrap(), &want);
    let gone: Vec<String> = want[1].iter().take(3).map(|h| h.name.clone()).collect();
    index.remove(&gone).unwrap();
    assert!(!index.is_mapped());
    assert_eq!(index.len(), 297);
    let got = index.search_features(&queries, &SearchOptions::top(10)).unwrap();
    assert!(got[1].iter().all(|h| !gone.contains(&h.name)));
    let e = index.remove(&gone).unwrap_err();
    assert!(matches!(e, IndexError::UnknownImage { .. }), "{e}");
    let e = index
        .add_features(
            vec![names[200].clone()],
            &features(&names[200..201], &values[200 * Q * P..201 * Q * P], Q, P),
        )
        .unwrap_err();
    assert!(matches!(e, IndexError::Duplicate { .. }), "{e}");
    // Re-adding a removed image gives it a new id; the index round-trips through its files.
    index
        .add_features(gone[..1].to_vec(), &{
            let i = names.iter().position(|n| n == &gone[0]).unwrap();
            features(&names[i..i + 1], &values[i * Q * P..(i + 1) * Q * P], Q, P)
        })
        .unwrap();
    index.persist().unwrap();
    let reopened = open_index(&uri, &backend(Quantization::F32)).unwrap();
    assert_eq!(reopened.len(), 298);
    assert_eq!(reopened.location().as_deref(), Some(uri.as_str()));
    let mut a = reopened.names().unwrap();
    let mut b = index.names().unwrap();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let e =
        open_or_create_index(&uri, self::info("other-model", Q, P), &backend(Quantization::F32)).unwrap_err();
    assert!(matches!(e, IndexError::ModelMismatch { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quantised_graphs_keep_recall_and_close_scores() {
    let info = info("m", Q, P);
    let (names, values) = clustered(1500, Q, P, 21);
    let reference = flat(&info, &names, &values);
    let queries = queries(&values, Q, P, 40, 9);
    let opts = SearchOptions::top(10);
    let want = reference.search_features(&queries, &opts).unwrap();
    for (quant, tol) in [
        (Quantization::F16, 2e-3),
        (Quantization::BF16, 2e-2),
        (Quantization::I8, 5e-2),
    ] {
        let dir = tmpdir(&format!("usearch-{}", quant.as_str()));
        let mut index = UsearchIndex::create(dir.join("g.usearch"), info.clone(), &options(quant)).unwrap();
        index
            .add_features(names.clone(), &features(&names, &values, Q, P))
            .unwrap();
        let got = index.search_features(&queries, &opts).unwrap();
        let r = recall(&got, &want);
        assert!(r >= 0.9, "{quant:?}: recall@10 {r}");
        // Scores of the images both found agree within the quantisation error.
        for (g, w) in got.iter().zip(&want) {
            for h in g {
                if let Some(x) = w.iter().find(|x| x.name == h.name) {
                    assert!(
                        (x.score - h.score).abs() <= tol,
                        "{quant:?}: {} vs {}",
                        h.score,
                        x.score
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_files_and_settings_are_refused_with_named_errors() {
    let dir = tmpdir("usearch-bad");
    let path = dir.join("g.usearch");
    let side = dir.join("g.usearch.json");
    let info = info("m", Q, P);
    let (names, values) = clustered(20, Q, P, 3);
    let opts = options(Quantization::F16);

    // No files at all.
    let e = UsearchIndex::open(&path, &opts).unwrap_err();
    assert!(e.to_string().contains("g.usearch.json"), "{e}");

    let mut index = UsearchIndex::create(&path, info.clone(), &opts).unwrap();
    index
        .add_features(names.clone(), &features(&names, &values, Q, P))
        .unwrap();
    index.persist().unwrap();
    let good = std::fs::read_to_string(&side).unwrap();

    // A sidecar of another kind, version or content.
    std::fs::write(&side, "{not json").unwrap();
    let e = UsearchIndex::open(&path, &opts).unwrap_err();
    assert!(
        matches!(e, IndexError::Format { .. }) && e.to_string().contains("g.usearch.json"),
        "{e}"
    );
    std::fs::write(&side, good.replace("detailfusion-usearch", "something-else")).unwrap();
    assert!(matches!(
        UsearchIndex::open(&path, &opts).unwrap_err(),
        IndexError::Format { .. }
    ));
    std::fs::write(&side, good.replace("\"version\":1", "\"version\":7")).unwrap();
    let e = UsearchIndex::open(&path, &opts).unwrap_err();
    assert!(matches!(e, IndexError::Version { .. }), "{e}");
    let json: serde_json::Value = serde_json::from_str(&good).unwrap();
    let mut fewer = json.clone();
    fewer["images"].as_array_mut().unwrap().pop();
    std::fs::write(&side, fewer.to_string()).unwrap();
    let e = UsearchIndex::open(&path, &opts).unwrap_err();
    assert!(
        matches!(e, IndexError::Corrupt { .. }) && e.to_string().contains("g.usearch"),
        "{e}"
    );
    let mut dup = json.clone();
    dup["images"][1][1] = dup["images"][0][1].clone();
    std::fs::write(&side, dup.to_string()).unwrap();
    let e = UsearchIndex::open(&path, &opts).unwrap_err();
    assert!(e.to_string().contains("images"), "{e}");
    std::fs::write(&side, &good).unwrap();

    // A graph file that is not a usearch index, or was truncated.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"definitely not an index").unwrap();
    let e = UsearchIndex::open(&path, &opts).unwrap_err();
    assert!(e.to_string().contains("g.usearch"), "{e}");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = UsearchIndex::open(&path, &opts).unwrap_err();
    assert!(e.to_string().contains("g.usearch"), "{e}");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(UsearchIndex::open(&path, &opts).unwrap().len(), 20);

    // Per-branch galleries, wrong widths, empty indexes.
    let mut pb = info.clone();
    pb.per_branch = true;
    let e = UsearchIndex::create(dir.join("pb.usearch"), pb, &opts).unwrap_err();
    assert!(matches!(e, IndexError::Unsupported { .. }), "{e}");
    let index = UsearchIndex::open(&path, &opts).unwrap();
    let wrong =
        candle_core::Tensor::zeros((2, P + 1), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = index.search_features(&wrong, &SearchOptions::top(3)).unwrap_err();
    assert!(matches!(e, IndexError::Input { .. }), "{e}");
    let empty = UsearchIndex::create(dir.join("e.usearch"), info.clone(), &opts).unwrap();
    let e = empty
        .search_features(&queries(&values, Q, P, 1, 1), &SearchOptions::top(3))
        .unwrap_err();
    assert!(matches!(e, IndexError::EmptyIndex), "{e}");
    let mut nan = values[..Q * P].to_vec();
    nan[5] = f32::NAN;
    let mut index = UsearchIndex::create(dir.join("n.usearch"), info, &opts).unwrap();
    let e = index
        .add_features(
            vec!["x.png".into()],
            &features(&["x.png".to_string()], &nan, Q, P),
        )
        .unwrap_err();
    assert!(e.to_string().contains("x.png"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
