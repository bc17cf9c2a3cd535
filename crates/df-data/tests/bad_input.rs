//! Bad user input gives a clear `DataError` naming the file and the entry; `OnError::Skip` skips
//! the bad item and counts it in the `LoadReport`. Nothing panics.

mod common;

use std::path::Path;

use common::{write_file, write_image};
use df_data::cirr::{CirrDataset, CirrSplit};
use df_data::fashioniq::{Category, FashionIqDataset, FiqSplit};
use df_data::ipr2pr::Ipr2prDataset;
use df_data::pipeline::{Loader, LoaderConfig};
use df_data::{DataError, Entry, ImageCheck, ImageRole, LoadOptions, OnError, SkipReason};
use serde_json::{json, Value};

fn cirr_entry(pairid: u64, reference: &str, target: &str, members: &[&str]) -> Value {
    json!({
        "pairid": pairid,
        "reference": reference,
        "target_hard": target,
        "target_soft": {target: 1.0},
        "caption": format!("caption {pairid}"),
        "img_set": {"id": pairid, "members": members, "reference_rank": 0, "target_rank": 1},
    })
}

/// A small valid CIRR val split: images a..f, three queries.
fn write_cirr(root: &Path, entries: &[Value]) {
    let names = ["a", "b", "c", "d", "e", "f"];
    let split: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), json!(format!("./dev/{n}.png"))))
        .collect();
    write_file(
        &root.join("image_splits/split.rc2.val.json"),
        serde_json::to_string(&split).unwrap(),
    );
    write_file(
        &root.join("captions/cap.rc2.val.json"),
        serde_json::to_string(entries).unwrap(),
    );
    for n in names {
        write_image(&root.join(format!("dev/{n}.png")), n, 8);
    }
}

fn good_entries() -> Vec<Value> {
    let m = ["a", "b", "c", "d", "e", "f"];
    vec![
        cirr_entry(1, "a", "b", &m),
        cirr_entry(2, "c", "d", &m),
        cirr_entry(3, "e", "f", &m),
    ]
}

fn skip() -> LoadOptions {
    LoadOptions::default().on_error(OnError::Skip)
}

#[test]
fn valid_fixture_loads() {
    let tmp = tempfile::tempdir().unwrap();
    write_cirr(tmp.path(), &good_entries());
    let ds = CirrDataset::load(
        tmp.path(),
        CirrSplit::Val,
        &LoadOptions::default().check_images(ImageCheck::Decode),
    )
    .unwrap();
    assert_eq!((ds.samples.len(), ds.gallery.len()), (3, 6));
    assert!(ds.report.is_clean());
}

#[test]
fn missing_root_is_io_error() {
    let err = CirrDataset::load("/nonexistent/df-data", CirrSplit::Val, &skip()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("split.rc2.val.json"), "{err}");
}

#[test]
fn malformed_json_names_the_file_even_when_skipping() {
    let tmp = tempfile::tempdir().unwrap();
    write_cirr(tmp.path(), &good_entries());
    let cap = tmp.path().join("captions/cap.rc2.val.json");
    write_file(&cap, "[{\"pairid\": 1,");
    for opts in [LoadOptions::default(), skip()] {
        let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &opts).unwrap_err();
        assert!(
            matches!(&err, DataError::Json { path, .. } if *path == cap),
            "{err}"
        );
        assert!(err.to_string().contains("cap.rc2.val.json"));
        assert!(err.to_string().contains("line 1"), "{err}");
    }
    // Valid JSON of the wrong shape.
    write_file(&cap, "{\"pairid\": 1}");
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &skip()).unwrap_err();
    assert!(
        matches!(
            &err,
            DataError::MalformedEntry {
                entry: Entry::File,
                ..
            }
        ),
        "{err}"
    );
    // A split file that is not an object.
    write_cirr(tmp.path(), &good_entries());
    write_file(&tmp.path().join("image_splits/split.rc2.val.json"), "[\"a\"]");
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &skip()).unwrap_err();
    assert!(err.to_string().contains("split.rc2.val.json"), "{err}");
}

#[test]
fn malformed_entry_names_pair_id_and_is_skippable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut entries = good_entries();
    entries[1].as_object_mut().unwrap().remove("caption");
    entries[2]["img_set"]["members"] = json!("not a list");
    write_cirr(tmp.path(), &entries);
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &LoadOptions::default()).unwrap_err();
    match &err {
        DataError::MalformedEntry { path, entry, reason } => {
            assert!(path.ends_with("captions/cap.rc2.val.json"));
            assert_eq!(*entry, Entry::Pair { index: 1, pair_id: 2 });
            assert!(reason.contains("caption"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("pairid 2"), "{err}");
    let ds = CirrDataset::load(tmp.path(), CirrSplit::Val, &skip()).unwrap();
    assert_eq!(ds.samples.len(), 1);
    assert_eq!(ds.report.skipped(SkipReason::MalformedEntry), 2);
    let stats = ds.report.stats(SkipReason::MalformedEntry).unwrap();
    assert!(stats.examples[0].contains("pairid 2"));
    assert!(stats.examples[1].contains("pairid 3"));
    // The report prints per-reason counts and examples.
    let text = ds.report.to_string();
    assert!(text.contains("malformed entry: 2"), "{text}");
    // A non-object entry without a pairid is labelled by its index.
    let mut entries = good_entries();
    entries.push(json!(42));
    write_cirr(tmp.path(), &entries);
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("entry #3"), "{err}");
    // A val entry without target.
    let mut entries = good_entries();
    entries[0].as_object_mut().unwrap().remove("target_hard");
    write_cirr(tmp.path(), &entries);
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("target_hard"), "{err}");
}

#[test]
fn unknown_image_names_file_entry_and_image() {
    let tmp = tempfile::tempdir().unwrap();
    let mut entries = good_entries();
    entries[0]["reference"] = json!("zz");
    entries[2]["img_set"]["members"][5] = json!("yy");
    write_cirr(tmp.path(), &entries);
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &LoadOptions::default()).unwrap_err();
    match &err {
        DataError::UnknownImage {
            entry,
            name,
            role,
            split_file,
            ..
        } => {
            assert_eq!(*entry, Entry::Pair { index: 0, pair_id: 1 });
            assert_eq!(name, "zz");
            assert_eq!(*role, ImageRole::Reference);
            assert!(split_file.ends_with("split.rc2.val.json"));
        }
        other => panic!("unexpected {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("cap.rc2.val.json") && msg.contains("`zz`") && msg.contains("pairid 1"),
        "{msg}"
    );
    let ds = CirrDataset::load(tmp.path(), CirrSplit::Val, &skip()).unwrap();
    assert_eq!(ds.samples.len(), 1);
    assert_eq!(ds.samples[0].pair_id, 2);
    assert_eq!(ds.report.skipped(SkipReason::UnknownImage), 2);
    assert!(ds.report.stats(SkipReason::UnknownImage).unwrap().examples[1].contains("candidate-set member"));
}

#[test]
fn duplicate_pair_ids_and_bad_split_values() {
    let tmp = tempfile::tempdir().unwrap();
    let mut entries = good_entries();
    entries[2]["pairid"] = json!(1);
    write_cirr(tmp.path(), &entries);
    let split = tmp.path().join("image_splits/split.rc2.val.json");
    write_file(
        &split,
        r#"{"a": "./dev/a.png", "b": "./dev/b.png", "c": "./dev/c.png", "d": "./dev/d.png", "e": "./dev/e.png", "f": "./dev/f.png", "g": 7}"#,
    );
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::MalformedEntry { entry: Entry::Key(k), .. } if k == "g"),
        "{err}"
    );
    let ds = CirrDataset::load(tmp.path(), CirrSplit::Val, &skip()).unwrap();
    assert_eq!((ds.samples.len(), ds.gallery.len()), (2, 6));
    assert_eq!(ds.report.skipped(SkipReason::MalformedEntry), 1);
    assert_eq!(ds.report.skipped(SkipReason::Duplicate), 1);
    assert!(ds.report.stats(SkipReason::Duplicate).unwrap().examples[0].contains("duplicate pairid `1`"));
}

#[test]
fn missing_and_corrupt_images() {
    let tmp = tempfile::tempdir().unwrap();
    write_cirr(tmp.path(), &good_entries());
    std::fs::remove_file(tmp.path().join("dev/b.png")).unwrap();
    // Loading annotations alone never touches images.
    let ds = CirrDataset::load(tmp.path(), CirrSplit::Val, &LoadOptions::default()).unwrap();
    assert_eq!(ds.samples.len(), 3);
    // Existence check: fails naming the image, or skips it and the queries needing it.
    let opts = LoadOptions::default().check_images(ImageCheck::Exists);
    let err = CirrDataset::load(tmp.path(), CirrSplit::Val, &opts).unwrap_err();
    match &err {
        DataError::MissingImage { path, name, .. } => {
            assert_eq!(name, "b");
            assert!(path.ends_with("dev/b.png"));
        }
        other => panic!("unexpected {other}"),
    }
    let ds = CirrDataset::load(tmp.path(), CirrSplit::Val, &opts.clone().on_error(OnError::Skip)).unwrap();
    // Every query has b among its candidate members.
    assert_eq!((ds.samples.len(), ds.gallery.len()), (0, 5));
    assert_eq!(ds.report.skipped(SkipReason::MissingImage), 1);
    assert_eq!(ds.report.skipped(SkipReason::NeedsSkippedImage), 3);
    assert!(ds.report.stats(SkipReason::NeedsSkippedImage).unwrap().examples[0].contains("pairid 1"));

    // Corrupt images: garbage bytes, and a truncated PNG (header fine, data cut).
    write_cirr(tmp.path(), &good_entries());
    write_file(&tmp.path().join("dev/c.png"), b"definitely not an image");
    write_image(&tmp.path().join("dev/e.png"), "e", 64);
    let png = std::fs::read(tmp.path().join("dev/e.png")).unwrap();
    write_file(&tmp.path().join("dev/e.png"), &png[..png.len() / 2]);
    let mut ds = CirrDataset::load(tmp.path(), CirrSplit::Val, &LoadOptions::default()).unwrap();
    let err = ds.validate_images(ImageCheck::Decode, OnError::Fail).unwrap_err();
    assert!(
        matches!(&err, DataError::CorruptImage { name, .. } if name == "c"),
        "{err}"
    );
    assert!(err.to_string().contains("c.png"), "{err}");
    // Header check catches the garbage file, not the truncated one.
    let mut ds2 = ds.clone();
    ds2.validate_images(ImageCheck::Header, OnError::Skip).unwrap();
    assert_eq!(ds2.gallery.len(), 5);
    ds.validate_images(ImageCheck::Decode, OnError::Skip).unwrap();
    assert_eq!(ds.gallery.len(), 4);
    assert_eq!(ds.report.skipped(SkipReason::CorruptImage), 2);
    assert_eq!(ds.samples.len(), 0);
}

fn write_fiq(root: &Path, captions: Value, names: Value) {
    write_file(
        &root.join("captions/cap.dress.val.json"),
        serde_json::to_string(&captions).unwrap(),
    );
    write_file(
        &root.join("image_splits/split.dress.val.json"),
        serde_json::to_string(&names).unwrap(),
    );
}

#[test]
fn fashion_iq_bad_entries() {
    let tmp = tempfile::tempdir().unwrap();
    write_fiq(
        tmp.path(),
        json!([
            {"candidate": "a", "target": "b", "captions": ["x", "y"]},
            {"candidate": "a", "target": "b", "captions": ["only one"]},
            {"candidate": "a", "captions": ["x", "y"]},
            {"candidate": "q", "target": "b", "captions": ["x", "y"]},
            {"candidate": "b", "target": "a", "captions": ["x", 3]},
        ]),
        json!(["a", "b", 5, "a"]),
    );
    let err = FashionIqDataset::load(
        tmp.path(),
        Category::Dress,
        FiqSplit::Val,
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            DataError::MalformedEntry {
                entry: Entry::Index(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("split.dress.val.json"));
    let ds = FashionIqDataset::load(tmp.path(), Category::Dress, FiqSplit::Val, &skip()).unwrap();
    assert_eq!((ds.samples.len(), ds.gallery.len()), (1, 2));
    assert_eq!(ds.report.skipped(SkipReason::MalformedEntry), 1 + 3);
    assert_eq!(ds.report.skipped(SkipReason::Duplicate), 1);
    assert_eq!(ds.report.skipped(SkipReason::UnknownImage), 1);
    let ex = &ds.report.stats(SkipReason::MalformedEntry).unwrap().examples;
    assert!(
        ex.iter()
            .any(|e| e.contains("entry #1") && e.contains("expected 2 captions")),
        "{ex:?}"
    );
    assert!(
        ex.iter().any(|e| e.contains("entry #2") && e.contains("target")),
        "{ex:?}"
    );
    assert!(ds.report.stats(SkipReason::UnknownImage).unwrap().examples[0].contains("`q`"));
    // Missing image file with an existence check.
    let ds = FashionIqDataset::load(
        tmp.path(),
        Category::Dress,
        FiqSplit::Val,
        &skip().check_images(ImageCheck::Exists),
    )
    .unwrap();
    assert_eq!(ds.report.skipped(SkipReason::MissingImage), 2);
    assert!(ds.samples.is_empty() && ds.gallery.is_empty());
}

fn write_prompt_folder(root: &Path, folder: &str, prompt: &str, seeds: &[(&str, bool, bool)]) {
    let dir = root.join(folder);
    write_file(&dir.join("prompt.json"), prompt);
    for (seed, orig, edit) in seeds {
        if *orig {
            common::image_for(seed, 8)
                .save(dir.join(format!("{seed}_0.jpg")))
                .unwrap();
        }
        if *edit {
            common::image_for(seed, 8)
                .save(dir.join(format!("{seed}_1.jpg")))
                .unwrap();
        }
    }
}

#[test]
fn ipr2pr_bad_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let good = r#"{"input": "a cat", "edit": "make it a dog", "output": "a dog"}"#;
    write_prompt_folder(
        tmp.path(),
        "shard-0/0001",
        good,
        &[("11", true, true), ("12", true, false)],
    );
    write_prompt_folder(
        tmp.path(),
        "shard-0/0002",
        "{\"input\": \"x\",",
        &[("13", true, true)],
    );
    write_prompt_folder(
        tmp.path(),
        "shard-0/0003",
        r#"{"input": "x", "edit": "y"}"#,
        &[("14", true, true)],
    );
    write_prompt_folder(tmp.path(), "shard-1/0004", good, &[]);
    write_prompt_folder(tmp.path(), "shard-1/0005", good, &[("15", true, true)]);
    write_file(&tmp.path().join("shard-1/0005/15_1.jpg"), b"garbage");

    let err = Ipr2prDataset::load(tmp.path(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::MissingImage { name, .. } if name == "shard-0/0001/12_1"),
        "{err}"
    );
    let ds = Ipr2prDataset::load(tmp.path(), &skip()).unwrap();
    // 0001/11 and 0005/15 (not decoded, so not noticed).
    assert_eq!(ds.triplets.len(), 2);
    assert_eq!(ds.report.skipped(SkipReason::MissingImage), 1);
    assert_eq!(ds.report.skipped(SkipReason::MalformedEntry), 3);
    let ex = ds
        .report
        .stats(SkipReason::MalformedEntry)
        .unwrap()
        .examples
        .join("\n");
    assert!(ex.contains("0002") && ex.contains("prompt.json"), "{ex}");
    assert!(ex.contains("missing field `output`"), "{ex}");
    assert!(ex.contains("no `<seed>_0`"), "{ex}");
    let ds = Ipr2prDataset::load(tmp.path(), &skip().check_images(ImageCheck::Decode)).unwrap();
    assert_eq!(ds.triplets.len(), 1);
    assert_eq!(ds.report.skipped(SkipReason::CorruptImage), 1);
    let t = &ds.triplets[0];
    assert_eq!((t.folder.as_str(), t.seed.as_str()), ("shard-0/0001", "11"));
    assert_eq!(t.prompt.edit, "make it a dog");
}

#[test]
fn pipeline_bad_images_and_failing_closures() {
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for i in 0..10 {
        let p = tmp.path().join(format!("{i}.png"));
        write_image(&p, &i.to_string(), 8);
        paths.push(p);
    }
    write_file(&paths[3], b"junk");
    paths[7] = tmp.path().join("absent.png");
    let id = |img: &image::DynamicImage| Ok::<_, DataError>(img.width());
    for workers in [0, 2] {
        let cfg = LoaderConfig::default().batch_size(4).num_workers(workers);
        let loader = Loader::from_paths(paths.clone(), cfg.clone(), id).unwrap();
        let out: Vec<_> = loader.epoch(0).collect();
        assert_eq!(out.len(), 1, "stops at the first error");
        let err = out.into_iter().next().unwrap().unwrap_err();
        assert!(
            matches!(
                &err,
                DataError::CorruptImage {
                    entry: Entry::Item(3),
                    ..
                }
            ),
            "{err}"
        );

        let loader = Loader::from_paths(paths.clone(), cfg.clone().on_error(OnError::Skip), id).unwrap();
        let mut it = loader.epoch(0);
        let batches: Vec<_> = it.by_ref().map(Result::unwrap).collect();
        assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), [3, 3, 2]);
        assert_eq!(batches[0].indices, [0, 1, 2]);
        assert_eq!(batches[0].skipped, 1);
        assert_eq!(it.report().samples, 8);
        assert_eq!(it.report().skipped(SkipReason::CorruptImage), 1);
        assert_eq!(it.report().skipped(SkipReason::MissingImage), 1);

        // A closure that errors, and one that panics: errors, not panics.
        let ok_paths: Vec<_> = paths.iter().take(3).cloned().collect();
        let loader = Loader::from_paths(ok_paths.clone(), cfg.clone(), |_| {
            Err::<u32, _>(std::io::Error::other("boom"))
        })
        .unwrap();
        let err = loader.epoch(0).next().unwrap().unwrap_err();
        assert!(
            matches!(&err, DataError::Preprocess { .. }) && err.to_string().contains("boom"),
            "{err}"
        );
        let loader = Loader::from_paths(ok_paths, cfg.clone(), |img| {
            if img.width() == 8 {
                panic!("closure bug");
            }
            Ok::<_, DataError>(0u8)
        })
        .unwrap();
        let err = loader.epoch(0).next().unwrap().unwrap_err();
        assert!(matches!(err, DataError::WorkerPanicked { batch: 0, .. }), "{err}");
    }
    // Invalid configuration.
    assert!(Loader::from_paths(paths, LoaderConfig::default().batch_size(0), id).is_err());
}
