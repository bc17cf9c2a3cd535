//! The gallery index: build from a folder, save, load (mapped), search, edit, and refuse bad
//! input, on a tiny BLIP-2 model.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use detailfusion::data::toy::{render, RenderOptions, Scene};
use detailfusion::data::Rng;
use detailfusion::index::{
    load_query_images, FeatureDType, FlatIndex, Hit, IndexError, IndexOptions, IndexProgress, SearchOptions,
};
use detailfusion::{Blip2Config, DetailFusion, DetailFusionConfig, GalleryMode, QueryFeatures, Variant};

fn enc_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/df-encoders/tests/fixtures/encoders")
}

fn hf() -> String {
    enc_fixtures().join("hf").to_string_lossy().into_owned()
}

fn config(variant: Variant, gallery: GalleryMode) -> DetailFusionConfig {
    let b2 = Blip2Config::from_file(enc_fixtures().join("hf/config.json")).unwrap();
    let mut c = DetailFusionConfig::from_blip2(b2);
    c.compositor.num_attention_heads = 4;
    c.variant = variant;
    c.gallery = gallery;
    c
}

fn model(gallery: GalleryMode) -> DetailFusion {
    DetailFusion::from_blip2(&hf(), Some(config(Variant::Full, gallery)), &Device::Cpu).unwrap()
}

fn tmpdir(name: &str) -> common::TestDir {
    common::test_dir(&format!("index-{name}"), true)
}

/// A deterministic picture (a toy scene) saved at `path`, format by extension.
fn write_image(path: &Path, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let scene = Scene::random(&mut Rng::new(seed), 1, 3);
    let opts = RenderOptions {
        size: 36 + (seed % 3) as u32 * 8,
        ..Default::default()
    };
    render(&scene, &opts).save(path).unwrap();
}

/// Gallery: six readable images (one nested two deep, a JPEG, a BMP, a PNG without an
/// extension), two broken PNGs and a text file.
fn gallery(name: &str) -> common::TestDir {
    let dir = tmpdir(name);
    write_image(&dir.join("a.png"), 1);
    write_image(&dir.join("b.png"), 2);
    write_image(&dir.join("sub/c.png"), 3);
    write_image(&dir.join("sub/deeper/d.jpg"), 4);
    write_image(&dir.join("e.bmp"), 5);
    write_image(&dir.join("tmp.png"), 6);
    std::fs::rename(dir.join("tmp.png"), dir.join("sub/noext")).unwrap();
    std::fs::write(dir.join("bad.png"), b"this is not a png").unwrap();
    let png = std::fs::read(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("sub/truncated.png"), &png[..png.len() / 3]).unwrap();
    std::fs::write(dir.join("README.txt"), b"gallery notes").unwrap();
    dir
}

const READABLE: [&str; 6] = [
    "a.png",
    "b.png",
    "e.bmp",
    "sub/c.png",
    "sub/deeper/d.jpg",
    "sub/noext",
];

fn quiet() -> IndexOptions {
    IndexOptions {
        batch_size: 4,
        progress: false,
        ..Default::default()
    }
}

/// `b` composed queries from the fixture inputs (repeated, with distinct reference images).
fn queries(model: &DetailFusion, b: usize) -> QueryFeatures {
    let x = candle_core::safetensors::load(enc_fixtures().join("inputs.safetensors"), &Device::Cpu).unwrap();
    let rep = |t: &Tensor| {
        let r = t.dim(0).unwrap();
        let idx: Vec<u32> = (0..b as u32).map(|i| i % r as u32).collect();
        t.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap()
    };
    let pixels = rep(&x["pixel_values"]);
    // Make every query distinct.
    let ramp = Tensor::arange(0f32, b as f32, &Device::Cpu)
        .unwrap()
        .reshape((b, 1, 1, 1))
        .unwrap()
        .affine(0.05, 0.0)
        .unwrap();
    let pixels = pixels.broadcast_add(&ramp).unwrap();
    model
        .encode_queries(&pixels, &rep(&x["input_ids"]), &rep(&x["attention_mask"]))
        .unwrap()
}

/// Checks hits against a brute-force score matrix: same scores rank by rank, and the same
/// images except where two scores are within float noise.
fn assert_matches_brute_force(hits: &[Vec<Hit>], scores: &Tensor, k: usize, exclude: &[Option<usize>]) {
    let s: Vec<Vec<f32>> = scores.to_vec2().unwrap();
    assert_eq!(hits.len(), s.len());
    for (j, (row, h)) in s.iter().zip(hits).enumerate() {
        let mut order: Vec<usize> = (0..row.len())
            .filter(|&i| Some(i) != exclude.get(j).copied().flatten())
            .collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
        order.truncate(k);
        assert_eq!(h.len(), order.len(), "query {j}");
        for (r, (hit, &want)) in h.iter().zip(&order).enumerate() {
            assert!(
                (hit.score - row[want]).abs() < 1e-5,
                "query {j} rank {r}: {} vs {}",
                hit.score,
                row[want]
            );
            assert!((hit.score - row[hit.index]).abs() < 1e-5);
            if hit.index != want {
                assert!((row[hit.index] - row[want]).abs() < 1e-5, "query {j} rank {r}");
            }
        }
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn build_save_load_and_search_match_brute_force() {
    let model = model(GalleryMode::SharedDi);
    let dir = gallery("build");
    let mut events: Vec<IndexProgress> = Vec::new();
    let (index, report) =
        FlatIndex::build_with_progress(&model, &dir, &quiet(), &mut |p| events.push(*p)).unwrap();

    // Report: readable images indexed (sorted, relative, `/`), broken ones named, text skipped.
    let mut indexed = report.indexed.clone();
    indexed.sort();
    assert_eq!(indexed, READABLE);
    assert_eq!(index.names(), report.indexed.as_slice());
    let failed: Vec<&Path> = report.failed.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(failed, [dir.join("bad.png"), dir.join("sub/truncated.png")]);
    for f in &report.failed {
        assert!(f.message.contains(&*f.path.to_string_lossy()), "{}", f.message);
    }
    assert_eq!(report.skipped, [dir.join("README.txt")]);
    assert_eq!(
        events.last().unwrap(),
        &IndexProgress {
            processed: 8,
            total: 8,
            indexed: 6,
            failed: 2
        }
    );
    assert_eq!(events.len(), 2); // batches of 4

    // Stored features are the model's.
    let paths: Vec<PathBuf> = index.names().iter().map(|n| dir.join(n)).collect();
    let pixels = model
        .config()
        .image_processor
        .preprocess_batch(&paths, &Device::Cpu)
        .unwrap();
    let direct = model.encode_images(&pixels).unwrap();
    let feats = index.features().unwrap();
    assert_eq!(feats.tokens.dims(), &[6, 4, 16]);
    assert!(max_abs_diff(&feats.tokens, &direct.tokens) < 1e-5);
    assert!(feats.gm_tokens.is_none());

    // Save, map, same content.
    let file = dir.join("gallery.dfindex");
    index.save(&file).unwrap();
    let loaded = FlatIndex::load_for(&file, &model).unwrap();
    assert!(loaded.is_mapped());
    assert_eq!(loaded.names(), index.names());
    assert_eq!(loaded.info(), index.info());
    assert_eq!(loaded.info().fingerprint, model.fingerprint());
    assert_eq!(bits(&loaded.features().unwrap().tokens), bits(&feats.tokens));
    loaded.verify().unwrap();

    // Search = brute-force `DetailFusion::score` ranking, for the scan (B < 8) and GEMM paths.
    for b in [1, 3, 10] {
        let q = queries(&model, b);
        let brute = model.score(&q, &loaded.features().unwrap()).unwrap();
        let searcher = loaded.searcher(&model).unwrap();
        assert!(max_abs_diff(&searcher.scores(&q).unwrap(), &brute) < 1e-5);
        for k in [1, 3, 6, 100] {
            let hits = loaded.search(&model, &q, &SearchOptions::top(k)).unwrap();
            assert_matches_brute_force(&hits, &brute, k, &[]);
            for (h, hit) in hits.iter().flatten().zip(0..) {
                assert_eq!(h.name, loaded.names()[h.index], "{hit}");
            }
            // Single-threaded gives the same.
            let one = SearchOptions {
                threads: Some(1),
                ..SearchOptions::top(k)
            };
            assert_eq!(loaded.search(&model, &q, &one).unwrap(), hits);
        }
        // CIRR protocol: leave each query's reference out (here: its best image, or none).
        let best = loaded.search(&model, &q, &SearchOptions::top(1)).unwrap();
        let exclude: Vec<Option<String>> = best
            .iter()
            .enumerate()
            .map(|(j, h)| (j % 3 != 2).then(|| h[0].name.clone()))
            .collect();
        let ex_idx: Vec<Option<usize>> = exclude
            .iter()
            .map(|e| e.as_deref().and_then(|n| loaded.position(n)))
            .collect();
        let opts = SearchOptions::top(6).excluding(exclude.clone());
        let hits = loaded.search(&model, &q, &opts).unwrap();
        assert_matches_brute_force(&hits, &brute, 6, &ex_idx);
        for (h, e) in hits.iter().zip(&exclude) {
            match e {
                Some(name) => {
                    assert_eq!(h.len(), 5);
                    assert!(h.iter().all(|x| &x.name != name));
                }
                None => assert_eq!(h.len(), 6),
            }
        }
    }
    // The in-memory index searches the same as the mapped one.
    let q = queries(&model, 2);
    assert_eq!(
        index.search(&model, &q, &SearchOptions::top(4)).unwrap(),
        loaded.search(&model, &q, &SearchOptions::top(4)).unwrap()
    );
    // Query shape errors are named.
    let bad = Tensor::zeros((2, 7), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        loaded.search_features(&bad, &SearchOptions::top(1)),
        Err(IndexError::Input { .. })
    ));
    let opts = SearchOptions::top(1).excluding([Some("a.png")]);
    assert!(
        matches!(loaded.search(&model, &q, &opts), Err(IndexError::Input { name, .. }) if name == "exclude")
    );
}

#[test]
fn indexes_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<FlatIndex>();
}

#[test]
fn per_branch_gallery_combines_both_branches_with_the_fusion_weights() {
    let model = model(GalleryMode::PerBranch);
    // Make GM's gallery encoder differ from DI's.
    for (name, var) in model.vars(&["gm_gallery.vision_projection"]) {
        let t = var.as_tensor();
        let noise = Tensor::randn(0f32, 0.5, t.dims(), &Device::Cpu).unwrap();
        var.set(&(t.affine(-1.0, 0.0).unwrap() + noise).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let dir = gallery("per-branch");
    let (index, _) = FlatIndex::build(&model, &dir, &quiet()).unwrap();
    assert!(index.info().per_branch);
    let file = dir.join("pb.dfindex");
    index.save(&file).unwrap();
    let loaded = FlatIndex::load(&file).unwrap();
    let feats = loaded.features().unwrap();
    let gm = feats.gm_tokens.as_ref().expect("gm_tokens stored");
    assert!(max_abs_diff(gm, &feats.tokens) > 1e-3);
    for b in [2, 9] {
        let q = queries(&model, b);
        let brute = model.score(&q, &feats).unwrap();
        let got = loaded.searcher(&model).unwrap().scores(&q).unwrap();
        assert!(max_abs_diff(&got, &brute) < 1e-5);
        let hits = loaded.search(&model, &q, &SearchOptions::top(4)).unwrap();
        assert_matches_brute_force(&hits, &brute, 4, &[]);
    }
}

#[test]
fn add_and_remove_keep_the_other_features_bit_identical() {
    let model = model(GalleryMode::SharedDi);
    let dir = gallery("edit");
    let opts = quiet();
    // Index three of the images first.
    let mut index = FlatIndex::new(&model, FeatureDType::F32);
    let report = index
        .add_images(&model, &dir, &["a.png", "sub/c.png", "e.bmp"], &opts)
        .unwrap();
    assert_eq!(report.indexed, ["a.png", "sub/c.png", "e.bmp"]);
    let file = dir.join("edit.dfindex");
    index.save(&file).unwrap();
    let mut mapped = FlatIndex::load_for(&file, &model).unwrap();
    let before = mapped.features().unwrap().tokens;
    let per_name = |idx: &FlatIndex, t: &Tensor| -> HashMap<String, Vec<u32>> {
        idx.names()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), bits(&t.get(i).unwrap())))
            .collect()
    };
    let old = per_name(&mapped, &before);

    // Add the rest of the folder: only new images are encoded.
    let report = mapped.add_folder(&model, &dir, &opts).unwrap();
    assert_eq!(report.already_indexed, 3);
    assert_eq!(report.indexed.len(), 3);
    assert_eq!(report.failed.len(), 2);
    assert!(!mapped.is_mapped());
    assert_eq!(mapped.len(), 6);
    let after = per_name(&mapped, &mapped.features().unwrap().tokens);
    for (n, b) in &old {
        assert_eq!(&after[n], b, "{n}");
    }
    // A fresh full build gives the same features for the added images.
    let (full, _) = FlatIndex::build(&model, &dir, &opts).unwrap();
    let fresh = per_name(&full, &full.features().unwrap().tokens);
    for n in &report.indexed {
        let a: Vec<f32> = after[n].iter().map(|b| f32::from_bits(*b)).collect();
        let f: Vec<f32> = fresh[n].iter().map(|b| f32::from_bits(*b)).collect();
        assert!(a.iter().zip(&f).all(|(x, y)| (x - y).abs() < 1e-5), "{n}");
    }

    // Remove two; the rest stay bit-identical, in order; through save/load too.
    mapped.remove(&["sub/c.png", "b.png"]).unwrap();
    assert_eq!(mapped.len(), 4);
    assert!(mapped.position("b.png").is_none());
    let kept = per_name(&mapped, &mapped.features().unwrap().tokens);
    for (n, b) in &kept {
        assert_eq!(&after[n], b, "{n}");
    }
    mapped.save(&file).unwrap();
    let reloaded = FlatIndex::load(&file).unwrap();
    assert_eq!(reloaded.names(), mapped.names());
    assert_eq!(per_name(&reloaded, &reloaded.features().unwrap().tokens), kept);
    let q = queries(&model, 2);
    let hits = reloaded.search(&model, &q, &SearchOptions::top(10)).unwrap();
    assert!(hits
        .iter()
        .all(|h| h.len() == 4 && h.iter().all(|x| x.name != "b.png")));

    // Errors name the entry; nothing changes.
    let mut edit = FlatIndex::load(&file).unwrap();
    assert!(
        matches!(edit.remove(&["a.png", "nope.png"]), Err(IndexError::UnknownImage { name }) if name == "nope.png")
    );
    assert_eq!(edit.len(), 4);
    assert!(matches!(
        edit.add_images(&model, &dir, &["a.png"], &opts),
        Err(IndexError::Duplicate { name }) if name == "a.png"
    ));
    // Non-finite features are refused, naming the image; nothing changes.
    let mut f = reloaded.features().unwrap();
    f.tokens = f.tokens.narrow(0, 0, 1).unwrap().affine(0.0, f64::NAN).unwrap();
    match edit.add_features(vec!["nan.png".into()], &f) {
        Err(e @ IndexError::Input { .. }) => assert!(e.to_string().contains("nan.png"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(edit.len(), 4);

    // Removing everything leaves an empty index that refuses to search.
    let all: Vec<String> = edit.names().to_vec();
    edit.remove(&all).unwrap();
    assert!(edit.is_empty());
    assert!(matches!(
        edit.search(&model, &q, &SearchOptions::top(3)),
        Err(IndexError::EmptyIndex)
    ));
    edit.save(dir.join("empty.dfindex")).unwrap();
    assert!(FlatIndex::load(dir.join("empty.dfindex")).unwrap().is_empty());
}

#[test]
fn f16_index_is_within_tolerance() {
    let model = model(GalleryMode::SharedDi);
    let dir = gallery("f16");
    let (f32_index, _) = FlatIndex::build(&model, &dir, &quiet()).unwrap();
    let opts = IndexOptions {
        dtype: FeatureDType::F16,
        ..quiet()
    };
    let (index, _) = FlatIndex::build(&model, &dir, &opts).unwrap();
    assert_eq!(index.dtype(), FeatureDType::F16);
    let file = dir.join("half.dfindex");
    index.save(&file).unwrap();
    f32_index.save(dir.join("full.dfindex")).unwrap();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as i64;
    let saved = size(&dir.join("full.dfindex")) - size(&file);
    assert!((saved - 6 * 4 * 16 * 2).abs() < 8, "{saved}"); // half the feature bytes
    let loaded = FlatIndex::load(&file).unwrap();
    assert!(loaded.is_mapped());
    assert_eq!(loaded.info().dtype, FeatureDType::F16);
    let exact = f32_index.features().unwrap().tokens;
    let half = loaded.features().unwrap().tokens;
    assert!(max_abs_diff(&exact, &half) < 1e-3);
    // Same rounding as candle's f16.
    let via_candle = exact
        .to_dtype(candle_core::DType::F16)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    assert_eq!(bits(&via_candle), bits(&half));
    for b in [1, 9] {
        let q = queries(&model, b);
        let s32 = f32_index.searcher(&model).unwrap().scores(&q).unwrap();
        let s16 = loaded.searcher(&model).unwrap().scores(&q).unwrap();
        assert!(max_abs_diff(&s32, &s16) < 2e-3);
        let brute = model.score(&q, &loaded.features().unwrap()).unwrap();
        let hits = loaded.search(&model, &q, &SearchOptions::top(5)).unwrap();
        assert_matches_brute_force(&hits, &brute, 5, &[]);
    }
    // Editing an f16 index keeps the others' half bits.
    let mut edit = FlatIndex::load(&file).unwrap();
    edit.remove(&["a.png"]).unwrap();
    assert_eq!(edit.dtype(), FeatureDType::F16);
    let i = loaded.position("b.png").unwrap();
    let j = edit.position("b.png").unwrap();
    assert_eq!(
        bits(&loaded.features().unwrap().tokens.get(i).unwrap()),
        bits(&edit.features().unwrap().tokens.get(j).unwrap())
    );
}

fn saved_index(name: &str) -> (DetailFusion, common::TestDir, PathBuf) {
    let model = model(GalleryMode::SharedDi);
    let dir = tmpdir(name);
    write_image(&dir.join("g/a.png"), 11);
    write_image(&dir.join("g/b.png"), 12);
    let (index, _) = FlatIndex::build(&model, dir.join("g"), &quiet()).unwrap();
    let file = dir.join("i.dfindex");
    index.save(&file).unwrap();
    (model, dir, file)
}

fn header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn damaged_and_foreign_files_are_refused_with_named_errors() {
    let (_model, dir, file) = saved_index("bad-files");
    let bytes = std::fs::read(&file).unwrap();
    let h = header_len(&bytes);
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };

    // Truncated: in the data, in the header, below the length prefix.
    for (name, cut) in [("t1", bytes.len() - 10), ("t2", h - 10), ("t3", 4)] {
        let p = write(name, &bytes[..cut]);
        match FlatIndex::load(&p) {
            Err(IndexError::Corrupt { path, message, .. }) if cut > 8 => {
                assert_eq!(path, p);
                assert!(message.contains("truncated"), "{message}");
            }
            Err(IndexError::Format { path, .. }) if cut <= 8 => assert_eq!(path, p),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Trailing garbage.
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"xx");
    assert!(matches!(
        FlatIndex::load(write("long", &longer)),
        Err(IndexError::Corrupt { .. })
    ));

    // Corrupt header JSON.
    let mut bad = bytes.clone();
    bad[h - 20..h - 10].copy_from_slice(b"@@@@@@@@@@");
    match FlatIndex::load(write("c1", &bad)) {
        Err(IndexError::Corrupt { entry, .. }) => assert_eq!(entry, "header"),
        other => panic!("{other:?}"),
    }
    // Corrupt names (checksum).
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x20;
    match FlatIndex::load(write("c2", &bad)) {
        Err(IndexError::Corrupt { entry, message, .. }) => {
            assert_eq!(entry, "names");
            assert!(message.contains("checksum"));
        }
        other => panic!("{other:?}"),
    }
    // Corrupt features: loading stays lazy, `verify` catches it.
    let mut bad = bytes.clone();
    bad[h + 5] ^= 0x40;
    let p = write("c3", &bad);
    let idx = FlatIndex::load(&p).unwrap();
    match idx.verify() {
        Err(IndexError::Corrupt { entry, path, .. }) => {
            assert_eq!(entry, "tokens");
            assert_eq!(path, p);
        }
        other => panic!("{other:?}"),
    }
    // A metadata value that does not parse.
    let text = String::from_utf8(bytes[8..h].to_vec()).unwrap();
    let bad_count = text.replacen("\"q\":\"4\"", "\"q\":\"x\"", 1);
    assert_eq!(bad_count.len(), text.len());
    let mut bad = bytes.clone();
    bad[8..h].copy_from_slice(bad_count.as_bytes());
    assert!(
        matches!(FlatIndex::load(write("c4", &bad)), Err(IndexError::Corrupt { entry, .. }) if entry == "q")
    );

    // Another version.
    let v2 = text.replacen("\"version\":\"1\"", "\"version\":\"2\"", 1);
    assert_ne!(v2, text);
    let mut bad = bytes.clone();
    bad[8..h].copy_from_slice(v2.as_bytes());
    match FlatIndex::load(write("v2", &bad)) {
        Err(IndexError::Version { found, supported, .. }) => {
            assert_eq!((found.as_str(), supported), ("2", 1))
        }
        other => panic!("{other:?}"),
    }
    // Other formats: an image, a model checkpoint (safetensors without our metadata), text.
    let png = dir.join("g/a.png");
    assert!(matches!(FlatIndex::load(&png), Err(IndexError::Format { path, .. }) if path == png));
    let ckpt = enc_fixtures().join("hf/model.safetensors");
    match FlatIndex::load(&ckpt) {
        Err(e @ IndexError::Format { .. }) => {
            assert!(e.to_string().contains("not a detailfusion index"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        FlatIndex::load(write("txt", &[b'x'; 100])),
        Err(IndexError::Format { .. })
    ));
    // Missing file.
    assert!(matches!(
        FlatIndex::load(dir.join("nope")),
        Err(IndexError::Io { .. })
    ));
}

#[test]
fn an_index_refuses_another_model() {
    let (model, _dir, file) = saved_index("other-model");
    let index = FlatIndex::load_for(&file, &model).unwrap();
    // Same weights and config: same fingerprint.
    let again = DetailFusion::from_blip2(
        &hf(),
        Some(config(Variant::Full, GalleryMode::SharedDi)),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(again.fingerprint(), model.fingerprint());
    assert_eq!(model.fingerprint().len(), 16);
    index.check_model(&again).unwrap();
    // Other weights, other variants, other configs: refused.
    let random = DetailFusion::new(config(Variant::Full, GalleryMode::SharedDi), &Device::Cpu).unwrap();
    let gm_only = DetailFusion::from_blip2(
        &hf(),
        Some(config(Variant::GmOnly, GalleryMode::SharedDi)),
        &Device::Cpu,
    )
    .unwrap();
    let mut c = config(Variant::Full, GalleryMode::SharedDi);
    c.image_processor.target_pad_ratio = None;
    let other_cfg = DetailFusion::from_blip2(&hf(), Some(c), &Device::Cpu).unwrap();
    let tuned = DetailFusion::from_blip2(
        &hf(),
        Some(config(Variant::Full, GalleryMode::SharedDi)),
        &Device::Cpu,
    )
    .unwrap();
    let (_, v) = tuned.vars(&["di.qformer."]).into_iter().last().unwrap();
    v.set(&v.as_tensor().affine(1.0, 1e-3).unwrap()).unwrap();
    let q = queries(&model, 1);
    for other in [&random, &gm_only, &other_cfg, &tuned] {
        assert_ne!(other.fingerprint(), model.fingerprint());
        match index.search(other, &q, &SearchOptions::top(1)) {
            Err(e @ IndexError::ModelMismatch { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&model.fingerprint()) && msg.contains(&other.fingerprint()),
                    "{msg}"
                );
                assert!(msg.contains(&*file.to_string_lossy()), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            FlatIndex::load_for(&file, other),
            Err(IndexError::ModelMismatch { .. })
        ));
    }
    let mut edit = FlatIndex::load(&file).unwrap();
    assert!(matches!(
        edit.add_folder(&random, &file, &quiet()),
        Err(IndexError::ModelMismatch { .. })
    ));
    // Query-side weights do not matter for the gallery.
    let (_, t) = again.vars(&["di.text_projection"]).into_iter().next().unwrap();
    t.set(&t.as_tensor().affine(2.0, 0.0).unwrap()).unwrap();
    assert_eq!(again.fingerprint(), model.fingerprint());
}

#[test]
fn empty_galleries_and_undecodable_queries_are_named() {
    let model = model(GalleryMode::SharedDi);
    // No files at all, only non-images, only broken images.
    let empty = tmpdir("empty");
    match FlatIndex::build(&model, &empty, &quiet()) {
        Err(e @ IndexError::EmptyGallery { .. }) => {
            assert!(e.to_string().contains(&*empty.to_string_lossy()))
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(empty.join("notes.txt"), b"hello").unwrap();
    assert!(matches!(
        FlatIndex::build(&model, &empty, &quiet()),
        Err(IndexError::EmptyGallery { failed: 0, .. })
    ));
    std::fs::write(empty.join("x.png"), b"not a png").unwrap();
    std::fs::write(empty.join("y.jpg"), b"").unwrap();
    match FlatIndex::build(&model, &empty, &quiet()) {
        Err(e @ IndexError::EmptyGallery { failed: 2, .. }) => {
            assert!(e.to_string().contains("2 image file"))
        }
        other => panic!("{other:?}"),
    }
    // Not a folder.
    assert!(matches!(
        FlatIndex::build(&model, empty.join("x.png"), &quiet()),
        Err(IndexError::Io { .. })
    ));
    assert!(matches!(
        FlatIndex::build(&model, empty.join("missing"), &quiet()),
        Err(IndexError::Io { .. })
    ));

    // A query image that cannot be decoded is named.
    let good = empty.join("good.png");
    write_image(&good, 7);
    let bad = empty.join("x.png");
    assert_eq!(
        load_query_images(&model, &[&good]).unwrap().dims(),
        &[1, 3, 28, 28]
    );
    match load_query_images(&model, &[&good, &bad]) {
        Err(e @ IndexError::Image { .. }) => {
            let IndexError::Image { path, .. } = &e else {
                unreachable!()
            };
            assert_eq!(path, &bad);
            assert!(e.to_string().contains(&*bad.to_string_lossy()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        load_query_images(&model, &[empty.join("missing.png")]),
        Err(IndexError::Image { .. })
    ));
    let text = detailfusion::TextProcessor::from_file(enc_fixtures().join("hf/tokenizer.json")).unwrap();
    let q = detailfusion::index::encode_query_files(&model, &text, &[&good], &["make it red"]).unwrap();
    assert_eq!(q.feature.dims(), &[1, 16]);
    assert!(matches!(
        detailfusion::index::encode_query_files(&model, &text, &[&bad], &["make it red"]),
        Err(IndexError::Image { path, .. }) if path == bad
    ));
}
