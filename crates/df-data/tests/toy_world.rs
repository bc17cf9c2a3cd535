//! The procedural CIR world: determinism, structure, disjoint splits, vocabulary, and the round
//! trip through the CIRR and IPr2Pr loaders.

use std::collections::HashSet;

use df_data::cirr::{CirrDataset, CirrSplit};
use df_data::ipr2pr::Ipr2prDataset;
use df_data::toy::{self, split_of, ToyConfig, ToyWorld};
use df_data::{ImageCheck, LoadOptions};

fn small() -> ToyConfig {
    ToyConfig::default().with_counts(60, 20, 20).with_seed(7)
}

#[test]
fn generation_is_deterministic() {
    let a = ToyWorld::generate(&small()).unwrap();
    let b = ToyWorld::generate(&small()).unwrap();
    assert_eq!(a, b);
    let c = ToyWorld::generate(&small().with_seed(8)).unwrap();
    assert_ne!(a.splits[0].queries[0].caption, c.splits[0].queries[0].caption);
    // Each split has its own stream: resizing val leaves train and test alone.
    let mut cfg = small();
    cfg.val = 5;
    let d = ToyWorld::generate(&cfg).unwrap();
    assert_eq!(d.splits[0], a.splits[0]);
    assert_eq!(d.splits[2].queries.len(), a.splits[2].queries.len());
    assert_eq!(d.splits[2].images, a.splits[2].images);
    assert_eq!(d.edit_pairs, a.edit_pairs);
}

#[test]
fn queries_candidates_and_hard_negatives() {
    let cfg = small();
    let w = ToyWorld::generate(&cfg).unwrap();
    let mut ids = HashSet::new();
    for split in &w.splits {
        assert_eq!(split.queries.len(), cfg.count(split.split));
        let names: HashSet<_> = split.images.iter().map(|i| i.name.clone()).collect();
        assert_eq!(names.len(), split.images.len());
        let keys: HashSet<_> = split.images.iter().map(|i| i.scene.key()).collect();
        assert_eq!(keys.len(), split.images.len(), "one image per distinct scene");
        for q in &split.queries {
            assert!(ids.insert(q.pair_id));
            assert!((1..=3).contains(&q.edits.len()));
            let reference = &split.images[q.reference].scene;
            let target = &split.images[q.target].scene;
            let mut s = reference.clone();
            for e in &q.edits {
                s = s.apply(e).expect("edits apply in order");
            }
            assert_eq!(&s, target);
            assert_ne!(reference, target);
            assert_eq!(q.members.len(), 6);
            let set: HashSet<_> = q.members.iter().collect();
            assert_eq!(set.len(), 6);
            assert!(q.members.contains(&q.reference) && q.members.contains(&q.target));
            assert_eq!(q.negatives.len(), 4);
            for n in &q.negatives {
                assert!(q.members.contains(&n.image));
                // Exactly one detail away from the target.
                assert_eq!(target.apply(&n.edit).as_ref(), Some(&split.images[n.image].scene));
                assert!(n.image != q.reference && n.image != q.target);
            }
            for obj in &reference.objects {
                assert!((obj.cell as usize) < 9);
            }
            assert!(!q.caption.is_empty());
        }
    }
    let multi = w.splits[0].queries.iter().filter(|q| q.edits.len() > 1).count();
    assert!(multi > 10, "composed queries with several edits: {multi}");
}

#[test]
fn splits_have_disjoint_configurations() {
    let cfg = small();
    let w = ToyWorld::generate(&cfg).unwrap();
    let mut seen: Vec<HashSet<u128>> = Vec::new();
    for split in &w.splits {
        for img in &split.images {
            assert_eq!(split_of(&img.scene, cfg.split_fractions), split.split);
        }
        seen.push(split.images.iter().map(|i| i.scene.key()).collect());
    }
    assert!(seen[0].is_disjoint(&seen[1]));
    assert!(seen[0].is_disjoint(&seen[2]));
    assert!(seen[1].is_disjoint(&seen[2]));
    for p in &w.edit_pairs {
        assert_eq!(split_of(&p.original, cfg.split_fractions), CirrSplit::Train);
        assert_eq!(split_of(&p.edited, cfg.split_fractions), CirrSplit::Train);
        assert_eq!(p.original.apply(&p.edit).as_ref(), Some(&p.edited));
    }
}

#[test]
fn every_text_tokenizes_without_unk() {
    let w = ToyWorld::generate(&small()).unwrap();
    let tok = toy::build_tokenizer().unwrap();
    let unk = tok.token_to_id("[UNK]").unwrap();
    assert_eq!(tok.token_to_id("[PAD]"), Some(0));
    let texts = w.texts();
    assert!(texts.len() > 300);
    for t in &texts {
        let enc = tok.encode(t.as_str(), true).unwrap();
        assert!(!enc.get_ids().contains(&unk), "[UNK] in {t:?}");
        // Every word is a whole vocabulary entry (no fallback to letters).
        assert!(
            enc.get_tokens().iter().all(|p| !p.starts_with("##")),
            "{t:?} -> {:?}",
            enc.get_tokens()
        );
        assert_eq!(enc.get_tokens()[0], "[CLS]");
    }
    let scene = &w.splits[0].images[0].scene;
    let caption = scene.caption();
    assert!(caption.ends_with("background"), "{caption}");
    assert!(caption.starts_with("a "), "{caption}");
}

#[test]
fn written_world_reads_back_through_the_loaders() {
    let cfg = ToyConfig::default().with_counts(30, 10, 10).with_seed(3);
    let w = ToyWorld::generate(&cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("world");
    let written = w.write(&out).unwrap();
    let opts = LoadOptions::default().check_images(ImageCheck::Decode);
    for split in &w.splits {
        let ds = CirrDataset::load(&written.cirr_root, split.split, &opts).unwrap();
        assert!(ds.report.is_clean(), "{}", ds.report);
        assert_eq!(ds.samples.len(), split.queries.len());
        assert_eq!(ds.gallery.len(), split.images.len());
        for (s, q) in ds.samples.iter().zip(&split.queries) {
            assert_eq!(s.pair_id, q.pair_id);
            assert_eq!(s.reference, split.images[q.reference].name);
            assert_eq!(s.target.as_deref(), Some(split.images[q.target].name.as_str()));
            assert_eq!(s.query_text(), q.caption);
            assert_eq!(s.candidates.as_ref().unwrap().members.len(), 6);
        }
        // Pixels on disk are the rendered scenes.
        let first = &split.images[0];
        let on_disk = image::open(ds.gallery.path(&first.name).unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!(on_disk, w.render(&first.scene));
        assert_eq!(on_disk.dimensions(), (64, 64));
        let caps = toy::load_scene_captions(&written.cirr_root, split.split).unwrap();
        assert_eq!(caps.len(), split.images.len());
        assert_eq!(caps[0], (first.name.clone(), first.scene.caption()));
    }
    assert!(written.cirr_root.join("train/0/train-0.png").is_file());
    assert!(written.cirr_root.join("dev/dev-0.png").is_file());
    assert_eq!(
        written.cirr_images.len(),
        w.splits.iter().map(|s| s.images.len()).sum::<usize>()
    );

    let ip = Ipr2prDataset::load(
        &written.ipr2pr_root,
        &LoadOptions::default().check_images(ImageCheck::Decode),
    )
    .unwrap();
    assert!(ip.report.is_clean(), "{}", ip.report);
    assert_eq!(ip.len(), w.edit_pairs.len());
    for (t, p) in ip.triplets.iter().zip(&w.edit_pairs) {
        assert_eq!(t.folder, p.folder);
        assert_eq!(t.seed, p.seed.to_string());
        assert_eq!(t.prompt.edit, p.instruction);
        assert_eq!(t.prompt.input, p.original.caption());
        assert_eq!(t.prompt.output, p.edited.caption());
    }
    let (samples, gallery) = ip.to_cir();
    assert_eq!(
        (samples.len(), gallery.len()),
        (w.edit_pairs.len(), 2 * w.edit_pairs.len())
    );

    // The tokenizer file loads with the tokenizers crate and matches the in-memory one.
    let tok = tokenizers::Tokenizer::from_file(&written.tokenizer).unwrap();
    let enc = tok.encode(w.splits[0].queries[0].caption.as_str(), true).unwrap();
    assert!(!enc.get_ids().contains(&1));
    assert_eq!(tok.get_vocab_size(true), toy::vocabulary().len());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&written.summary).unwrap()).unwrap();
    assert_eq!(summary["cirr"]["val"]["queries"], 10);

    // Writing into a non-empty directory is refused.
    assert!(w.write(&out).is_err());
}

#[test]
fn hidden_test_targets_look_like_cirr_test1() {
    let mut cfg = ToyConfig::default().with_counts(0, 0, 5);
    cfg.ipr2pr = 0;
    cfg.hide_test_targets = true;
    let w = ToyWorld::generate(&cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let written = w.write(tmp.path()).unwrap();
    let ds = CirrDataset::load(&written.cirr_root, CirrSplit::Test1, &LoadOptions::default()).unwrap();
    assert_eq!(ds.samples.len(), 5);
    assert!(ds.samples.iter().all(|s| s.target.is_none()));
    let train = CirrDataset::load(&written.cirr_root, CirrSplit::Train, &LoadOptions::default()).unwrap();
    assert!(train.is_empty());
    let ip = Ipr2prDataset::load(&written.ipr2pr_root, &LoadOptions::default());
    assert!(ip.is_err(), "no ipr2pr folder was written");
}

#[test]
fn invalid_configs_are_errors() {
    let cfg = ToyConfig {
        max_objects: 12,
        ..ToyConfig::default()
    };
    assert!(ToyWorld::generate(&cfg).is_err());
    let cfg = ToyConfig {
        split_fractions: [1.0, 0.0, 0.0],
        ..ToyConfig::default()
    };
    assert!(ToyWorld::generate(&cfg).is_err());
    let mut cfg = ToyConfig::default().with_counts(3, 0, 0);
    cfg.image_size = 4;
    assert!(ToyWorld::generate(&cfg).is_err());
    cfg.image_size = 64;
    cfg.jitter = f32::NAN;
    let err = ToyWorld::generate(&cfg).unwrap_err();
    assert!(err.to_string().contains("jitter"), "{err}");
    cfg.jitter = 0.0;
    let w = ToyWorld::generate(&cfg).unwrap();
    assert_eq!(w.split(CirrSplit::Train).unwrap().queries.len(), 3);
}
