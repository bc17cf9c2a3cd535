//! The loaders on the real CIRR and Fashion IQ annotation files of `shared/data` (no images there:
//! pixels come from deterministic images written to a temp dir).

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{cirr_root, fiq_root, write_image};
use df_data::cirr::{CirrDataset, CirrSplit};
use df_data::fashioniq::{Category, FashionIqDataset, FiqSplit};
use df_data::pipeline::{Loader, LoaderConfig};
use df_data::rng::fnv1a64;
use df_data::{DataError, FiqTextVariant, ImageCheck, LoadOptions, OnError, QueryText, SkipReason};

#[test]
fn shared_data_is_present() {
    // CI has the data: a missing folder is a failure, not a skip.
    assert!(
        cirr_root().join("captions/cap.rc2.val.json").is_file(),
        "missing {}",
        cirr_root().display()
    );
    assert!(fiq_root().join("captions/cap.dress.val.json").is_file());
}

#[test]
fn cirr_val_counts_and_fields() {
    let ds = CirrDataset::load(cirr_root(), CirrSplit::Val, &LoadOptions::default()).unwrap();
    assert_eq!(ds.samples.len(), 4181);
    assert_eq!(ds.gallery.len(), 2297);
    assert!(ds.report.is_clean());
    assert_eq!((ds.report.samples, ds.report.gallery_images), (4181, 2297));
    let mut ids = HashSet::new();
    for s in &ds.samples {
        assert!(ids.insert(s.pair_id));
        let c = s.candidates.as_ref().expect("img_set");
        assert_eq!(c.members.len(), 6, "pairid {}", s.pair_id);
        assert!(c.members.contains(&s.reference));
        assert!(c.members.contains(s.target.as_ref().expect("val has targets")));
        assert!(c.target_rank.is_some() && c.reference_rank.is_some());
        // target_soft is present; in 42 entries it does not contain target_hard (a data quirk).
        assert!(!s.target_soft.is_empty());
    }
    let s = &ds.samples[0];
    assert_eq!(s.pair_id, 12060);
    assert_eq!(s.reference, "dev-244-0-img0");
    assert_eq!(s.target.as_deref(), Some("dev-1028-1-img1"));
    assert_eq!(s.query_text(), "show three bottles of soft drink");
    assert_eq!(
        s.text,
        QueryText::Single("show three bottles of soft drink".into())
    );
    let c = s.candidates.as_ref().unwrap();
    assert_eq!((c.id, c.reference_rank, c.target_rank), (36, Some(2), Some(3)));
    assert_eq!(
        ds.gallery.path("dev-244-0-img0").unwrap(),
        cirr_root().join("dev").join("dev-244-0-img0.png")
    );
    // Gallery order is the split file's order.
    assert_eq!(ds.gallery.names().next(), Some("dev-244-0-img0"));
}

#[test]
fn cirr_test1_counts_and_no_targets() {
    let ds = CirrDataset::load(cirr_root(), CirrSplit::Test1, &LoadOptions::default()).unwrap();
    assert_eq!(ds.samples.len(), 4148);
    assert_eq!(ds.gallery.len(), 2315);
    for s in &ds.samples {
        assert!(s.target.is_none() && s.target_soft.is_empty());
        let c = s.candidates.as_ref().unwrap();
        assert_eq!(c.members.len(), 6);
        assert!(c.members.contains(&s.reference));
        assert!(c.target_rank.is_none());
    }
    assert_eq!(ds.samples[0].pair_id, 12063);
}

#[test]
fn cirr_train_split_and_missing_train_captions() {
    let (g, report) =
        CirrDataset::load_gallery(cirr_root(), CirrSplit::Train, &LoadOptions::default()).unwrap();
    assert_eq!(g.len(), 16939);
    assert!(report.is_clean());
    assert_eq!(
        g.path("train-11041-2-img0").unwrap(),
        cirr_root().join("train/34/train-11041-2-img0.png")
    );
    // The train captions are not shipped: a clear I/O error naming the file.
    let err = CirrDataset::load(cirr_root(), CirrSplit::Train, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("cap.rc2.train.json"), "{err}");
}

const FIQ_COUNTS: [(Category, FiqSplit, usize, usize); 9] = [
    (Category::Dress, FiqSplit::Train, 5985, 11452),
    (Category::Dress, FiqSplit::Val, 2017, 3817),
    (Category::Dress, FiqSplit::Test, 2024, 3818),
    (Category::Shirt, FiqSplit::Train, 5988, 19036),
    (Category::Shirt, FiqSplit::Val, 2038, 6346),
    (Category::Shirt, FiqSplit::Test, 2038, 6346),
    (Category::Toptee, FiqSplit::Train, 6027, 16121),
    (Category::Toptee, FiqSplit::Val, 1961, 5373),
    (Category::Toptee, FiqSplit::Test, 2056, 5374),
];

#[derive(serde::Deserialize)]
struct TextFixture {
    count: usize,
    hash: BTreeMap<String, String>,
    examples: Vec<(usize, String)>,
}

#[test]
fn fashion_iq_counts_and_texts_match_python() {
    let fixture: BTreeMap<String, TextFixture> =
        serde_json::from_str(include_str!("fixtures/fiq_texts.json")).unwrap();
    for (cat, split, queries, images) in FIQ_COUNTS {
        let ds = FashionIqDataset::load(fiq_root(), cat, split, &LoadOptions::default()).unwrap();
        assert_eq!(ds.samples.len(), queries, "{cat} {split}");
        assert_eq!(ds.gallery.len(), images, "{cat} {split}");
        assert!(ds.report.is_clean());
        assert_eq!(
            ds.samples.iter().all(|s| s.target.is_some()),
            split != FiqSplit::Test
        );
        assert_eq!(
            ds.samples.iter().any(|s| s.target.is_some()),
            split != FiqSplit::Test
        );
        let first = &ds.samples[0];
        assert_eq!(
            ds.gallery.path(&first.reference).unwrap(),
            fiq_root().join("images").join(format!("{}.png", first.reference))
        );
        // Query texts, byte for byte as Python builds them (tools/gen_data_fiq_text_fixture.py).
        let fx = &fixture[&format!("{cat}.{split}")];
        assert_eq!(fx.count, queries);
        let joined = |f: &dyn Fn(&QueryText) -> String| {
            let v: Vec<String> = ds.samples.iter().map(|s| f(&s.text)).collect();
            format!("{:016x}", fnv1a64(v.join("\n").as_bytes()))
        };
        assert_eq!(joined(&|t| t.eval_text()), fx.hash["eval"], "{cat} {split}");
        for (key, v) in [
            ("first_and_second", FiqTextVariant::FirstAndSecond),
            ("second_and_first", FiqTextVariant::SecondAndFirst),
            ("first", FiqTextVariant::First),
            ("second", FiqTextVariant::Second),
        ] {
            assert_eq!(
                joined(&|t| t.variant_text(v)),
                fx.hash[key],
                "{cat} {split} {key}"
            );
        }
        for (i, text) in &fx.examples {
            assert_eq!(&ds.samples[*i].query_text(), text);
        }
    }
}

#[test]
fn cirr_val_with_generated_pixels() {
    // Write a small deterministic image for every val image name, then validate and decode.
    let tmp = tempfile::tempdir().unwrap();
    let ds = CirrDataset::load(cirr_root(), CirrSplit::Val, &LoadOptions::default()).unwrap();
    for g in &ds.gallery {
        // Resolve the relative paths of the split file under the temp dir.
        let rel = g.path.strip_prefix(cirr_root()).unwrap();
        write_image(&tmp.path().join(rel), &g.name, 8);
    }
    let opts = LoadOptions::default()
        .image_root(tmp.path())
        .check_images(ImageCheck::Header);
    let ds = CirrDataset::load(cirr_root(), CirrSplit::Val, &opts).unwrap();
    assert_eq!((ds.samples.len(), ds.gallery.len()), (4181, 2297));
    assert!(ds.report.is_clean());

    // Remove one image: failing load names it; skipping drops it and every query that needs it.
    let victim = ds.samples[0].reference.clone();
    std::fs::remove_file(ds.gallery.path(&victim).unwrap()).unwrap();
    let err = CirrDataset::load(cirr_root(), CirrSplit::Val, &opts).unwrap_err();
    assert!(
        matches!(&err, DataError::MissingImage { name, .. } if *name == victim),
        "{err}"
    );
    let ds2 = CirrDataset::load(cirr_root(), CirrSplit::Val, &opts.clone().on_error(OnError::Skip)).unwrap();
    let needing = ds
        .samples
        .iter()
        .filter(|s| s.image_names().iter().any(|(_, n)| *n == victim))
        .count();
    assert!(needing >= 1);
    assert_eq!(ds2.gallery.len(), 2296);
    assert_eq!(ds2.samples.len(), 4181 - needing);
    assert_eq!(ds2.report.skipped(SkipReason::MissingImage), 1);
    assert_eq!(ds2.report.skipped(SkipReason::NeedsSkippedImage), needing);
    assert_eq!(ds2.report.total_skipped(), 1 + needing);

    // Decode the first batches of reference/target pairs through the pipeline.
    let (_, pairs) = df_data::pipeline::cir_pairs(&ds2.samples[..40], &ds2.gallery).unwrap();
    let loader = Loader::new(
        pairs,
        LoaderConfig::default().batch_size(16).num_workers(2),
        |img| Ok::<_, DataError>(img.to_rgb8().get_pixel(0, 0).0),
    )
    .unwrap();
    let batches: Vec<_> = loader.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 40);
    let s0 = &ds2.samples[0];
    let expect = common::image_for(&s0.reference, 8).get_pixel(0, 0).0;
    assert_eq!(batches[0].items[0][0], expect);
}
