//! Evaluation metrics on hand-made rankings whose answers are known (SPEC §6).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use df_train::eval::{
    cirr_submission_json, cirr_test_predictions, cirr_test_predictions_from_rankings, cirr_val_metrics,
    cirr_val_metrics_from_rankings, cirr_val_ranks, cirr_val_ranks_from_rankings, fiq_category_metrics,
    fiq_category_metrics_from_rankings, fiq_ranks, fiq_ranks_from_rankings, rank_from_tensor, rank_row,
    rank_rows, scores_from_tensor, write_cirr_submission, CirrMetrics, CirrQuery, CirrRank, EvalError,
    EvalMetrics, FiqCategoryMetrics, FiqMetrics, FiqQuery, GalleryIndex,
};
use serde_json::Value;

const EPS: f64 = 1e-9;

fn gallery(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("g{i:03}")).collect()
}

/// Scores that realise `ranking` (names, best first) over `gallery`; unlisted names score lowest.
fn scores_for(gallery: &[String], ranking: &[&str]) -> Vec<f32> {
    let mut row = vec![-1000.0; gallery.len()];
    for (p, name) in ranking.iter().enumerate() {
        let j = gallery.iter().position(|g| g == name).expect("name in gallery");
        row[j] = (ranking.len() - p) as f32;
    }
    row
}

fn cirr_query(pair_id: i64, reference: &str, target: &str, others: &[&str]) -> CirrQuery {
    let mut members = vec![reference.to_owned(), target.to_owned()];
    members.extend(others.iter().map(|s| s.to_string()));
    CirrQuery {
        pair_id,
        reference: reference.into(),
        target: Some(target.into()),
        members,
    }
}

fn assert_close(a: f64, b: f64) {
    assert!((a - b).abs() < EPS, "{a} != {b}");
}

/// CIRR metrics from both entry points (scores and rankings), checked to agree.
fn cirr_both(q: &[CirrQuery], g: &[String], rankings: &[Vec<&str>]) -> CirrMetrics {
    let scores: Vec<Vec<f32>> = rankings.iter().map(|r| scores_for(g, r)).collect();
    let a = cirr_val_metrics(q, g, &scores).unwrap();
    let b = cirr_val_metrics_from_rankings(q, rankings).unwrap();
    assert_eq!(a, b);
    a
}

#[test]
fn perfect_ranking_is_100() {
    let g = gallery(60);
    let q = vec![
        cirr_query(1, "g000", "g001", &["g002", "g003", "g004", "g005"]),
        cirr_query(2, "g010", "g011", &["g012", "g013", "g014", "g015"]),
    ];
    // The reference itself may sit anywhere, even first: it is removed.
    let rankings = [vec!["g000", "g001", "g002"], vec!["g011", "g010"]];
    let full: Vec<Vec<&str>> = rankings
        .iter()
        .map(|r| {
            let mut v = r.clone();
            v.extend(g.iter().map(String::as_str).filter(|n| !r.contains(n)));
            v
        })
        .collect();
    let m = cirr_both(&q, &g, &full);
    assert_eq!(m.queries, 2);
    for v in [
        m.recall_at1,
        m.recall_at5,
        m.recall_at10,
        m.recall_at50,
        m.recall_subset_at1,
        m.recall_subset_at2,
        m.recall_subset_at3,
        m.avg,
        m.criterion,
    ] {
        assert_close(v, 100.0);
    }

    let fq = vec![FiqQuery {
        candidate: "g000".into(),
        target: "g001".into(),
    }];
    let fm = fiq_category_metrics("dress", &fq, &g, &[scores_for(&g, &["g001"])]).unwrap();
    assert_close(fm.recall_at10, 100.0);
    assert_close(fm.recall_at50, 100.0);
}

#[test]
fn target_at_rank_7() {
    let g = gallery(60);
    // Six non-members, then the target (position 7); the other members come later.
    let q = vec![cirr_query(7, "g050", "g007", &["g051", "g052", "g053", "g054"])];
    let mut ranking = vec!["g001", "g002", "g003", "g004", "g005", "g006", "g007"];
    ranking.extend(["g050", "g051", "g052", "g053", "g054"]);
    let m = cirr_both(&q, &g, std::slice::from_ref(&ranking));
    assert_close(m.recall_at1, 0.0);
    assert_close(m.recall_at5, 0.0);
    assert_close(m.recall_at10, 100.0);
    assert_close(m.recall_at50, 100.0);
    assert_close(m.recall_subset_at1, 100.0);
    assert_close(m.avg, 50.0);
    assert_close(m.criterion, 500.0 / 7.0);
    let ranks = cirr_val_ranks_from_rankings(&q, &[ranking]).unwrap();
    assert_eq!(
        ranks,
        vec![CirrRank {
            pair_id: 7,
            rank: 6,
            subset_rank: 0
        }]
    );

    // Fashion IQ: same position → R@10 hit; at position 11 → R@10 miss, R@50 hit.
    let fq = vec![FiqQuery {
        candidate: "g050".into(),
        target: "g007".into(),
    }];
    let s = scores_for(&g, &["g001", "g002", "g003", "g004", "g005", "g006", "g007"]);
    assert_eq!(fiq_ranks(&fq, &g, &[s]).unwrap(), vec![6]);
    let late: Vec<&str> = (1..=11).map(|i| g[i].as_str()).collect();
    let fq11 = vec![FiqQuery {
        candidate: "g050".into(),
        target: "g011".into(),
    }];
    let fm = fiq_category_metrics("shirt", &fq11, &g, &[scores_for(&g, &late)]).unwrap();
    assert_close(fm.recall_at10, 0.0);
    assert_close(fm.recall_at50, 100.0);
}

#[test]
fn ties_break_by_gallery_index() {
    assert_eq!(rank_row(&[1.0, 1.0, 1.0], None, None).unwrap(), vec![0, 1, 2]);
    assert_eq!(
        rank_row(&[0.5, 1.0, 1.0, 0.5, 2.0], None, None).unwrap(),
        vec![4, 1, 2, 0, 3]
    );
    // Top-k keeps the same order as the full ranking, ties included.
    assert_eq!(
        rank_row(&[0.5, 1.0, 1.0, 0.5, 2.0], None, Some(3)).unwrap(),
        vec![4, 1, 2]
    );
    // -0.0 and 0.0 tie.
    assert_eq!(rank_row(&[0.0, -0.0], None, None).unwrap(), vec![0, 1]);
    assert_eq!(rank_row(&[-0.0, 0.0], None, None).unwrap(), vec![0, 1]);

    // All scores equal: the ranking is the gallery order. Target g003, reference g001 removed:
    // g000, g002 precede it → rank 2.
    let g = gallery(8);
    let q = vec![cirr_query(3, "g001", "g003", &["g002", "g004", "g005", "g006"])];
    let ranks = cirr_val_ranks(&q, &g, &[vec![0.25f32; 8]]).unwrap();
    assert_eq!(ranks[0].rank, 2);
    assert_eq!(ranks[0].subset_rank, 1); // only g002 among members precedes g003
                                         // Same tie but the target listed first in the gallery wins.
    let q = vec![cirr_query(4, "g005", "g000", &["g002", "g004", "g001", "g006"])];
    let ranks = cirr_val_ranks(&q, &g, &[vec![0.25f32; 8]]).unwrap();
    assert_eq!((ranks[0].rank, ranks[0].subset_rank), (0, 0));
}

#[test]
fn reference_removal_changes_result() {
    let g = gallery(60);
    // Reference ranked first, target second: CIRR removes the reference → R@1 hit.
    let q = vec![cirr_query(5, "g000", "g001", &["g002", "g003", "g004", "g005"])];
    let m = cirr_both(&q, &g, &[vec!["g000", "g001", "g002"]]);
    assert_close(m.recall_at1, 100.0);

    // Reference + 9 others before the target: CIRR rank 9 (R@10 hit), Fashion IQ keeps the
    // candidate → rank 10 (R@10 miss).
    let mut ranking = vec!["g000"];
    ranking.extend((10..19).map(|i| g[i].as_str()));
    ranking.push("g001");
    let m = cirr_both(&q, &g, std::slice::from_ref(&ranking));
    assert_close(m.recall_at10, 100.0);
    let fq = vec![FiqQuery {
        candidate: "g000".into(),
        target: "g001".into(),
    }];
    let fiq = fiq_category_metrics_from_rankings("toptee", &fq, &[ranking.clone()]).unwrap();
    assert_close(fiq.recall_at10, 0.0);
    assert_close(fiq.recall_at50, 100.0);
    let scores = [scores_for(&g, &ranking)];
    assert_eq!(fiq_ranks(&fq, &g, &scores).unwrap(), vec![10]);
    assert_eq!(fiq_ranks_from_rankings(&fq, &[ranking]).unwrap(), vec![10]);
}

#[test]
fn subset_recall_removes_reference_member() {
    let g = gallery(60);
    // members = [ref g000, target g004, g001, g002, g003, g005]; ranking:
    // g000 (ref, removed), g001, g030, g002, g003, g004 → subset order g001, g002, g003, g004.
    let q = vec![cirr_query(9, "g000", "g004", &["g001", "g002", "g003", "g005"])];
    let ranking = vec!["g000", "g001", "g030", "g002", "g003", "g004", "g005"];
    let m = cirr_both(&q, &g, std::slice::from_ref(&ranking));
    assert_close(m.recall_subset_at1, 0.0);
    assert_close(m.recall_subset_at2, 0.0);
    assert_close(m.recall_subset_at3, 0.0);
    assert_close(m.recall_at5, 100.0); // rank 4 after removal

    // Target third among the members (the reference ranked above everything is not counted).
    let ranking = vec!["g000", "g001", "g030", "g002", "g004", "g003"];
    let m = cirr_both(&q, &g, &[ranking]);
    assert_close(m.recall_subset_at1, 0.0);
    assert_close(m.recall_subset_at2, 0.0);
    assert_close(m.recall_subset_at3, 100.0);
    assert_close(m.avg, (100.0 + 0.0) / 2.0);
}

#[test]
fn fashion_iq_averages_over_categories() {
    let c = |name: &str, r10, r50| FiqCategoryMetrics {
        category: name.into(),
        queries: 10,
        recall_at10: r10,
        recall_at50: r50,
    };
    let m = FiqMetrics::from_categories(vec![
        c("dress", 100.0, 100.0),
        c("shirt", 0.0, 100.0),
        c("toptee", 50.0, 50.0),
    ])
    .unwrap();
    assert_close(m.mean_recall_at10, 50.0);
    assert_close(m.mean_recall_at50, 250.0 / 3.0);
    assert_close(m.avg, (50.0 + 250.0 / 3.0) / 2.0);
    assert_close(m.criterion(), m.avg);
    let table = m.to_string();
    assert!(table.contains("dress") && table.contains("83.33") && table.contains("66.67"));
    assert!(matches!(
        FiqMetrics::from_categories(vec![c("dress", 1.0, 1.0), c("dress", 1.0, 1.0)]),
        Err(EvalError::DuplicateCategory { .. })
    ));
    assert!(matches!(
        FiqMetrics::from_categories(vec![]),
        Err(EvalError::NoQueries)
    ));

    // Fractions: 3 queries at ranks 0, 20, 60 → R@10 = 33.33, R@50 = 66.67.
    let r = FiqCategoryMetrics::from_ranks("dress", &[0, 20, 60]).unwrap();
    assert_close(r.recall_at10, 100.0 / 3.0);
    assert_close(r.recall_at50, 200.0 / 3.0);
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("df-train-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn submission_files() {
    let g = gallery(80);
    let mut q = vec![
        cirr_query(101, "g000", "g001", &["g002", "g003", "g004", "g005"]),
        cirr_query(7, "g040", "g041", &["g042", "g043", "g044", "g045"]),
    ];
    q[1].target = None; // test split
                        // Query 101: reverse gallery order, reference g000 would be last anyway; put it first.
    let mut r0: Vec<&str> = vec!["g000"];
    r0.extend(g.iter().rev().map(String::as_str).filter(|&n| n != "g000"));
    let r1: Vec<&str> = g.iter().map(String::as_str).collect();
    let scores = vec![scores_for(&g, &r0), scores_for(&g, &r1)];
    let preds = cirr_test_predictions(&q, &g, &scores).unwrap();
    assert_eq!(
        preds,
        cirr_test_predictions_from_rankings(&q, &[r0.clone(), r1.clone()]).unwrap()
    );
    assert_eq!(preds[0].pair_id, 101);
    assert_eq!(preds[0].recall.len(), 50);
    assert_eq!(preds[0].recall[0], "g079");
    assert_eq!(preds[0].recall[49], "g030");
    assert!(!preds[0].recall.contains(&"g000".to_string()));
    assert_eq!(preds[0].recall_subset, ["g005", "g004", "g003"]);
    assert_eq!(preds[1].recall.len(), 50);
    assert_eq!(preds[1].recall[0], "g000");
    assert!(!preds[1].recall.contains(&"g040".to_string()));
    assert_eq!(preds[1].recall[49], "g050");
    assert_eq!(preds[1].recall_subset, ["g041", "g042", "g043"]);

    let dir = tmp_dir("submission");
    let files = write_cirr_submission(&dir, "detailfusion", &preds).unwrap();
    assert_eq!(files.recall, dir.join("recall_submission_detailfusion.json"));
    assert_eq!(
        files.recall_subset,
        dir.join("recall_subset_submission_detailfusion.json")
    );
    let recall: Value = serde_json::from_str(&std::fs::read_to_string(&files.recall).unwrap()).unwrap();
    let subset: Value =
        serde_json::from_str(&std::fs::read_to_string(&files.recall_subset).unwrap()).unwrap();
    assert_eq!(recall["version"], "rc2");
    assert_eq!(recall["metric"], "recall");
    assert_eq!(subset["version"], "rc2");
    assert_eq!(subset["metric"], "recall_subset");
    assert_eq!(recall.as_object().unwrap().len(), 4);
    assert_eq!(recall["101"].as_array().unwrap().len(), 50);
    assert_eq!(recall["7"].as_array().unwrap().len(), 50);
    assert_eq!(recall["101"][0], "g079");
    assert_eq!(subset["101"], serde_json::json!(["g005", "g004", "g003"]));
    assert_eq!(subset["7"].as_array().unwrap().len(), 3);
    // Only the two files, no temporary leftovers.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "recall_submission_detailfusion.json",
            "recall_subset_submission_detailfusion.json"
        ]
    );
    // Keys sorted like Python's sort_keys=True.
    let (text, _) = cirr_submission_json(&preds).unwrap();
    assert!(text.starts_with("{\"101\":["), "{}", &text[..20]);
    assert!(text.find("\"7\"").unwrap() < text.find("\"metric\"").unwrap());
    std::fs::remove_dir_all(&dir).unwrap();

    // Truncated rankings work when they hold enough members; otherwise a clear error.
    let short = cirr_test_predictions_from_rankings(&q[1..], &[&r1[..46]]).unwrap();
    assert_eq!(short[0].recall.len(), 45);
    assert_eq!(short[0].recall_subset, ["g041", "g042", "g043"]);
    let err = cirr_test_predictions_from_rankings(&q[1..], &[&r1[..43]]).unwrap_err();
    assert!(
        matches!(
            err,
            EvalError::SubsetIncomplete {
                found: 2,
                needed: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("pair id 7"), "{err}");
}

fn msg(e: EvalError) -> String {
    e.to_string()
}

#[test]
fn bad_input_errors_name_the_query() {
    let g = gallery(10);
    let ok = cirr_query(42, "g000", "g001", &["g002", "g003", "g004", "g005"]);
    let row = vec![vec![0.0f32; 10]];

    // Target not in the gallery.
    let q = vec![cirr_query(42, "g000", "nope", &["g002", "g003", "g004", "g005"])];
    let e = cirr_val_metrics(&q, &g, &row).unwrap_err();
    assert!(matches!(e, EvalError::NotInGallery { .. }));
    let m = msg(e);
    assert!(
        m.contains("pair id 42") && m.contains("target") && m.contains("nope"),
        "{m}"
    );

    // Reference / member not in the gallery.
    let q = vec![cirr_query(43, "zzz", "g001", &["g002", "g003", "g004", "g005"])];
    let m = msg(cirr_val_metrics(&q, &g, &row).unwrap_err());
    assert!(m.contains("pair id 43") && m.contains("reference"), "{m}");
    let q = vec![cirr_query(44, "g000", "g001", &["g002", "g003", "g004", "x"])];
    let m = msg(cirr_test_predictions(&q, &g, &row).unwrap_err());
    assert!(m.contains("pair id 44") && m.contains("member"), "{m}");

    // Target missing from a ranking.
    let e = cirr_val_metrics_from_rankings(std::slice::from_ref(&ok), &[vec!["g000", "g002"]]).unwrap_err();
    assert!(matches!(e, EvalError::TargetNotRanked { .. }));
    assert!(msg(e).contains("pair id 42"));
    let fq = vec![
        FiqQuery {
            candidate: "g000".into(),
            target: "g001".into(),
        },
        FiqQuery {
            candidate: "g000".into(),
            target: "g009".into(),
        },
    ];
    let m = msg(fiq_ranks_from_rankings(&fq, &[vec!["g001"], vec!["g001"]]).unwrap_err());
    assert!(m.contains("query #1") && m.contains("g009"), "{m}");
    let m = msg(fiq_ranks(&fq, &gallery(5), &[vec![0.0; 5], vec![0.0; 5]]).unwrap_err());
    assert!(m.contains("query #1") && m.contains("g009"), "{m}");

    // Empty gallery.
    let empty: Vec<String> = vec![];
    let none: Vec<Vec<f32>> = vec![vec![]];
    assert!(matches!(
        cirr_val_metrics(std::slice::from_ref(&ok), &empty, &none),
        Err(EvalError::EmptyGallery)
    ));
    assert!(matches!(
        fiq_ranks(&fq[..1], &empty, &none),
        Err(EvalError::EmptyGallery)
    ));

    // Mismatched query count.
    let e = cirr_val_metrics(&[ok.clone(), ok.clone()], &g, &row).unwrap_err();
    assert!(
        matches!(
            e,
            EvalError::CountMismatch {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        cirr_val_metrics_from_rankings(std::slice::from_ref(&ok), &Vec::<Vec<&str>>::new()),
        Err(EvalError::CountMismatch { .. })
    ));

    // Ragged row, NaN.
    let e = cirr_val_metrics(std::slice::from_ref(&ok), &g, &[vec![0.0f32; 9]]).unwrap_err();
    let m = msg(e);
    assert!(
        m.contains("pair id 42") && m.contains("9") && m.contains("10"),
        "{m}"
    );
    let mut nan = vec![0.0f32; 10];
    nan[3] = f32::NAN;
    let e = cirr_val_metrics(std::slice::from_ref(&ok), &g, &[nan]).unwrap_err();
    assert!(matches!(e, EvalError::NanScore { column: 3, .. }));
    assert!(msg(e).contains("pair id 42"));

    // No target (test split), target = reference, target outside the members.
    let mut t = ok.clone();
    t.target = None;
    assert!(msg(cirr_val_metrics(&[t], &g, &row).unwrap_err()).contains("pair id 42"));
    let q = vec![cirr_query(45, "g000", "g000", &["g002"])];
    assert!(matches!(
        cirr_val_metrics(&q, &g, &row),
        Err(EvalError::TargetIsReference { .. })
    ));
    let mut t = ok.clone();
    t.members.retain(|m| m != "g001");
    let e = cirr_val_metrics(&[t], &g, &row).unwrap_err();
    assert!(matches!(e, EvalError::TargetNotInMembers { .. }), "{e}");

    // Duplicate gallery names, duplicate ranking names, duplicate pair ids, no queries.
    let dup = vec!["a".to_string(), "b".into(), "a".into()];
    assert!(matches!(
        GalleryIndex::new(&dup),
        Err(EvalError::DuplicateGalleryName {
            first: 0,
            second: 2,
            ..
        })
    ));
    let e = cirr_val_metrics_from_rankings(std::slice::from_ref(&ok), &[vec!["g002", "g002", "g001"]])
        .unwrap_err();
    assert!(matches!(e, EvalError::DuplicateInRanking { .. }));
    let e =
        cirr_test_predictions(&[ok.clone(), ok.clone()], &g, &[row[0].clone(), row[0].clone()]).unwrap_err();
    assert!(matches!(e, EvalError::DuplicatePairId { pair_id: 42, .. }));
    assert!(matches!(
        cirr_val_metrics(&[], &g, &Vec::<Vec<f32>>::new()),
        Err(EvalError::NoQueries)
    ));

    // Submission name, rank exclusion out of range, ragged rank_rows.
    let dir = tmp_dir("badname");
    assert!(matches!(
        write_cirr_submission(&dir, "../x", &[]),
        Err(EvalError::InvalidSubmissionName { .. })
    ));
    assert!(!dir.exists());
    assert!(matches!(
        rank_row(&[1.0, 2.0], Some(2), None),
        Err(EvalError::IndexOutOfRange { index: 2, .. })
    ));
    let m = msg(rank_rows(&[vec![1.0f32, 2.0], vec![1.0]], None, None).unwrap_err());
    assert!(m.contains("query #1"), "{m}");
}

/// Deterministic pseudo-random numbers (no extra dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn scores_and_rankings_agree_on_random_data() {
    let mut rng = Lcg(7);
    let n = 120;
    let g = gallery(n);
    let b = 40;
    let mut queries = Vec::new();
    let mut scores = Vec::new();
    for i in 0..b {
        // Six distinct members; reference = first, target = second.
        let mut m: Vec<usize> = Vec::new();
        while m.len() < 6 {
            let x = rng.next() as usize % n;
            if !m.contains(&x) {
                m.push(x);
            }
        }
        queries.push(CirrQuery {
            pair_id: 1000 + i as i64,
            reference: g[m[0]].clone(),
            target: Some(g[m[1]].clone()),
            members: m.iter().map(|&x| g[x].clone()).collect(),
        });
        // Few score levels → many ties.
        scores.push(
            (0..n)
                .map(|_| (rng.next() % 7) as f32 * 0.5)
                .collect::<Vec<f32>>(),
        );
    }
    let rankings: Vec<Vec<String>> = rank_rows(&scores, None, None)
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|j| g[j].clone()).collect())
        .collect();
    assert_eq!(
        cirr_val_ranks(&queries, &g, &scores).unwrap(),
        cirr_val_ranks_from_rankings(&queries, &rankings).unwrap()
    );
    let fq: Vec<FiqQuery> = queries
        .iter()
        .map(|q| FiqQuery {
            candidate: q.reference.clone(),
            target: q.target.clone().unwrap(),
        })
        .collect();
    assert_eq!(
        fiq_ranks(&fq, &g, &scores).unwrap(),
        fiq_ranks_from_rankings(&fq, &rankings).unwrap()
    );
    assert_eq!(
        cirr_test_predictions(&queries, &g, &scores).unwrap(),
        cirr_test_predictions_from_rankings(&queries, &rankings).unwrap()
    );
    // Top-k by partial selection = prefix of the full ranking, with and without exclusion.
    let full = rank_rows(&scores, None, None).unwrap();
    let excl: Vec<usize> = (0..b).map(|i| i % n).collect();
    let full_ex = rank_rows(&scores, Some(&excl), None).unwrap();
    for k in [0, 1, 3, 50, n - 1, n, n + 5] {
        let top = rank_rows(&scores, None, Some(k)).unwrap();
        let top_ex = rank_rows(&scores, Some(&excl), Some(k)).unwrap();
        for i in 0..b {
            assert_eq!(top[i], full[i][..k.min(n)]);
            assert_eq!(top_ex[i], full_ex[i][..k.min(n - 1)]);
            assert!(!top_ex[i].contains(&excl[i]));
        }
    }
}

#[test]
fn tensor_helpers() {
    let t = Tensor::new(&[[0.1f32, 0.3, 0.2], [0.5, 0.5, 0.9]], &Device::Cpu).unwrap();
    assert_eq!(
        scores_from_tensor(&t).unwrap(),
        vec![vec![0.1, 0.3, 0.2], vec![0.5, 0.5, 0.9]]
    );
    assert_eq!(
        rank_from_tensor(&t, None).unwrap(),
        vec![vec![1, 2, 0], vec![2, 0, 1]]
    );
    assert_eq!(rank_from_tensor(&t, Some(1)).unwrap(), vec![vec![1], vec![2]]);
    let bf = t.to_dtype(candle_core::DType::BF16).unwrap();
    assert_eq!(rank_from_tensor(&bf, None).unwrap()[0], vec![1, 2, 0]);
    let v = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    assert!(matches!(
        scores_from_tensor(&v),
        Err(EvalError::TensorShape(d)) if d == vec![2]
    ));
}

#[test]
fn metrics_serialise_and_print() {
    let ranks: Vec<CirrRank> = [(0, 0), (4, 1), (9, 2), (49, 3)]
        .iter()
        .enumerate()
        .map(|(i, &(rank, subset_rank))| CirrRank {
            pair_id: i as i64,
            rank,
            subset_rank,
        })
        .collect();
    let m = CirrMetrics::from_ranks(&ranks).unwrap();
    assert_close(m.recall_at1, 25.0);
    assert_close(m.recall_at5, 50.0);
    assert_close(m.recall_at10, 75.0);
    assert_close(m.recall_at50, 100.0);
    assert_close(m.recall_subset_at1, 25.0);
    assert_close(m.recall_subset_at2, 50.0);
    assert_close(m.recall_subset_at3, 75.0);
    assert_close(m.avg, 37.5);
    assert_close(m.criterion, 400.0 / 7.0);

    let e = EvalMetrics::from(m);
    assert_close(e.criterion(), m.criterion);
    assert_close(e.avg(), 37.5);
    let json = serde_json::to_string(&e).unwrap();
    assert!(json.contains("\"dataset\":\"cirr\"") && json.contains("\"recall_subset_at1\":25.0"));
    let back: EvalMetrics = serde_json::from_str(&json).unwrap();
    assert_eq!(back, e);
    let table = e.to_string();
    assert!(
        table.contains("CIRR (4 queries)") && table.contains("Rs@1"),
        "{table}"
    );
    assert!(table.contains("57.14") && table.contains("37.50"), "{table}");

    let f = EvalMetrics::from(
        FiqMetrics::from_categories(vec![FiqCategoryMetrics::from_ranks("dress", &[0, 60]).unwrap()])
            .unwrap(),
    );
    let json = serde_json::to_string(&f).unwrap();
    assert!(json.contains("\"dataset\":\"fashion_iq\""), "{json}");
    assert_eq!(serde_json::from_str::<EvalMetrics>(&json).unwrap(), f);
    assert_close(f.criterion(), 50.0);
    assert!(f.to_string().contains("dress"));
}

/// The real CIRR annotation files (`shared/data`, next to the workspace).
fn cirr_file(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/cirr/")).join(rel)
}

/// Queries and gallery of a real CIRR split, read with plain `serde_json`.
fn real_cirr(split: &str) -> (Vec<CirrQuery>, Vec<String>) {
    let read = |rel: String| -> Value {
        let path = cirr_file(&rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    };
    let caps = read(format!("captions/cap.rc2.{split}.json"));
    let queries = caps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| CirrQuery {
            pair_id: c["pairid"].as_i64().unwrap(),
            reference: c["reference"].as_str().unwrap().into(),
            target: c.get("target_hard").and_then(Value::as_str).map(Into::into),
            members: c["img_set"]["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect(),
        })
        .collect();
    let split = read(format!("image_splits/split.rc2.{split}.json"));
    let gallery = split.as_object().unwrap().keys().cloned().collect();
    (queries, gallery)
}

/// `b` rows of `n` pseudo-random scores, cheap to build in debug builds: one random row, rotated by
/// a pseudo-random offset per query.
fn rotated_rows(rng: &mut Lcg, b: usize, n: usize) -> Vec<Vec<f32>> {
    let base: Vec<f32> = (0..n).map(|_| (rng.next() % 1000) as f32).collect();
    (0..b)
        .map(|_| {
            let off = rng.next() as usize % n;
            [&base[off..], &base[..off]].concat()
        })
        .collect()
}

#[test]
fn real_cirr_val_and_test1() {
    let (queries, g) = real_cirr("val");
    assert_eq!((queries.len(), g.len()), (4181, 2297));
    let index = GalleryIndex::new(&g).unwrap();
    let mut rng = Lcg(11);
    // Random scores: every protocol precondition holds on the real file; chance-level recalls.
    let mut scores = rotated_rows(&mut rng, queries.len(), g.len());
    let m = cirr_val_metrics(&queries, &g, &scores).unwrap();
    assert_eq!(m.queries, 4181);
    assert!(m.recall_at50 < 5.0 && m.recall_subset_at1 > 10.0, "{m}");
    assert!(m.recall_subset_at3 > 50.0 && m.recall_subset_at3 < 70.0, "{m}");
    // Oracle scores (target highest, reference higher still) → every recall is 100.
    for (q, row) in queries.iter().zip(&mut scores) {
        row[index.get(q.target.as_deref().unwrap()).unwrap()] = 2000.0;
        row[index.get(&q.reference).unwrap()] = 3000.0;
    }
    assert_close(cirr_val_metrics(&queries, &g, &scores).unwrap().criterion, 100.0);

    let (queries, g) = real_cirr("test1");
    assert_eq!((queries.len(), g.len()), (4148, 2315));
    let index = GalleryIndex::new(&g).unwrap();
    for q in &queries {
        assert!(q.target.is_none() && q.members.len() == 6 && q.members.contains(&q.reference));
        assert!(q.members.iter().all(|m| index.get(m).is_some()));
    }
    // Top-50 selection is slow in unoptimised test builds: a prefix of the queries suffices.
    let queries = &queries[..800];
    let scores = rotated_rows(&mut rng, queries.len(), g.len());
    let preds = cirr_test_predictions(queries, &g, &scores).unwrap();
    for (q, p) in queries.iter().zip(&preds) {
        assert_eq!((p.recall.len(), p.recall_subset.len()), (50, 3));
        assert!(!p.recall.contains(&q.reference) && !p.recall_subset.contains(&q.reference));
        assert!(p.recall_subset.iter().all(|n| q.members.contains(n)));
    }
    let (recall, subset) = cirr_submission_json(&preds).unwrap();
    let recall: Value = serde_json::from_str(&recall).unwrap();
    let subset: Value = serde_json::from_str(&subset).unwrap();
    assert_eq!(recall.as_object().unwrap().len(), 800 + 2);
    assert_eq!(subset.as_object().unwrap().len(), 800 + 2);
}
