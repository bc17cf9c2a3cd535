//! CIRR test-server submission: per pair id the top 50 of the reference-free ranking
//! (`recall`) and the top 3 of the `img_set.members` in that order (`recall_subset`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cirr::{member_indices, walk_ranking};
use super::rank::{check_row, rank_checked, rank_cmp};
use super::{check_count, CirrQuery, EvalError, GalleryIndex, NameRole, QueryLabel, Result};

/// Names per query in the `recall` file.
pub const SUBMISSION_TOP_K: usize = 50;
/// Names per query in the `recall_subset` file.
pub const SUBMISSION_SUBSET_TOP_K: usize = 3;
/// The `"version"` of both files (CIRR release rc2).
pub const SUBMISSION_VERSION: &str = "rc2";

/// The predictions of one CIRR query for the evaluation server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CirrPrediction {
    /// The query's pair id (the JSON key).
    pub pair_id: i64,
    /// Top [`SUBMISSION_TOP_K`] gallery names, reference removed, best first (fewer only when
    /// the gallery or a given ranking is shorter).
    pub recall: Vec<String>,
    /// Top [`SUBMISSION_SUBSET_TOP_K`] `img_set.members`, reference removed, best first.
    pub recall_subset: Vec<String>,
}

/// Paths of the two files written by [`write_cirr_submission`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionFiles {
    /// `recall_submission_<name>.json`.
    pub recall: PathBuf,
    /// `recall_subset_submission_<name>.json`.
    pub recall_subset: PathBuf,
}

fn check_unique_pair_ids(ids: impl Iterator<Item = i64>) -> Result<()> {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for (i, id) in ids.enumerate() {
        if let Some(first) = seen.insert(id, i) {
            return Err(EvalError::DuplicatePairId {
                pair_id: id,
                first,
                second: i,
            });
        }
    }
    Ok(())
}

/// Test predictions from scores: `scores` has one row of `N` scores per query
/// (`B = queries.len()` rows, `N = gallery.len()`). Targets are ignored. The reference and
/// members must be in the gallery and pair ids unique; errors name the pair id.
pub fn cirr_test_predictions<G, S>(
    queries: &[CirrQuery],
    gallery: &[G],
    scores: &[S],
) -> Result<Vec<CirrPrediction>>
where
    G: AsRef<str>,
    S: AsRef<[f32]>,
{
    let gallery = GalleryIndex::new(gallery)?;
    check_count("score rows (one per query)", queries.len(), scores.len())?;
    check_unique_pair_ids(queries.iter().map(|q| q.pair_id))?;
    let name = |i: usize| gallery.names()[i].clone();
    queries
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(i, (q, row))| {
            let query = QueryLabel::cirr(i, q.pair_id);
            let row = check_row(query, row.as_ref(), gallery.len())?;
            let r = gallery.require(query, NameRole::Reference, &q.reference)?;
            let mut members = member_indices(query, &gallery, q, r)?;
            members.sort_unstable_by(|&a, &b| rank_cmp(row, a, b));
            members.truncate(SUBMISSION_SUBSET_TOP_K);
            Ok(CirrPrediction {
                pair_id: q.pair_id,
                recall: rank_checked(row, Some(r), Some(SUBMISSION_TOP_K))
                    .into_iter()
                    .map(name)
                    .collect(),
                recall_subset: members.into_iter().map(name).collect(),
            })
        })
        .collect()
}

/// Test predictions from ready-made rankings (`rankings[i]`: gallery names for query `i`, best
/// first, reference allowed — it is removed). A truncated ranking is fine if it holds at least
/// [`SUBMISSION_SUBSET_TOP_K`] members (or all of them when fewer), since the subset top 3 is
/// then exact; otherwise [`EvalError::SubsetIncomplete`]. Names must not repeat.
pub fn cirr_test_predictions_from_rankings<R, N>(
    queries: &[CirrQuery],
    rankings: &[R],
) -> Result<Vec<CirrPrediction>>
where
    R: AsRef<[N]>,
    N: AsRef<str>,
{
    check_count("rankings (one per query)", queries.len(), rankings.len())?;
    check_unique_pair_ids(queries.iter().map(|q| q.pair_id))?;
    queries
        .iter()
        .zip(rankings)
        .enumerate()
        .map(|(i, (q, ranking))| {
            let query = QueryLabel::cirr(i, q.pair_id);
            let members: HashSet<&str> = q
                .members
                .iter()
                .map(String::as_str)
                .filter(|&m| m != q.reference)
                .collect();
            let needed = members.len().min(SUBMISSION_SUBSET_TOP_K);
            let mut recall = Vec::with_capacity(SUBMISSION_TOP_K);
            let mut subset = Vec::with_capacity(SUBMISSION_SUBSET_TOP_K);
            walk_ranking(query, ranking.as_ref(), &q.reference, |pos, name| {
                if pos < SUBMISSION_TOP_K {
                    recall.push(name.to_owned());
                }
                if subset.len() < SUBMISSION_SUBSET_TOP_K && members.contains(name) {
                    subset.push(name.to_owned());
                }
            })?;
            if subset.len() < needed {
                return Err(EvalError::SubsetIncomplete {
                    query,
                    found: subset.len(),
                    needed,
                });
            }
            Ok(CirrPrediction {
                pair_id: q.pair_id,
                recall,
                recall_subset: subset,
            })
        })
        .collect()
}

/// The two submission documents, `(recall, recall_subset)`:
/// `{"version": "rc2", "metric": "recall", "<pairid>": [50 names], …}` and
/// `{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 names], …}`. Keys are sorted
/// (as the reference's `json.dump(…, sort_keys=True)`); pair ids are written as decimal strings.
/// Errors on a repeated pair id.
pub fn cirr_submission_json(predictions: &[CirrPrediction]) -> Result<(String, String)> {
    check_unique_pair_ids(predictions.iter().map(|p| p.pair_id))?;
    let doc = |metric: &str, pick: fn(&CirrPrediction) -> &Vec<String>| {
        let mut map: BTreeMap<String, Value> = BTreeMap::new();
        map.insert("version".into(), Value::from(SUBMISSION_VERSION));
        map.insert("metric".into(), Value::from(metric));
        for p in predictions {
            map.insert(p.pair_id.to_string(), Value::from(pick(p).clone()));
        }
        serde_json::to_string(&map)
    };
    Ok((
        doc("recall", |p| &p.recall)?,
        doc("recall_subset", |p| &p.recall_subset)?,
    ))
}

/// Writes `dir/recall_submission_<name>.json` and `dir/recall_subset_submission_<name>.json`
/// (contents of [`cirr_submission_json`]), creating `dir` if needed. Each file is written to a
/// temporary file in `dir` and renamed into place, so a reader never sees a partial file.
/// `name` must be non-empty and free of `/`, `\` and NUL.
pub fn write_cirr_submission(
    dir: impl AsRef<Path>,
    name: &str,
    predictions: &[CirrPrediction],
) -> Result<SubmissionFiles> {
    if name.is_empty() || name.contains(['/', '\\', '\0']) {
        return Err(EvalError::InvalidSubmissionName {
            name: name.to_owned(),
        });
    }
    let dir = dir.as_ref();
    let (recall, subset) = cirr_submission_json(predictions)?;
    fs::create_dir_all(dir).map_err(|source| EvalError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let files = SubmissionFiles {
        recall: dir.join(format!("recall_submission_{name}.json")),
        recall_subset: dir.join(format!("recall_subset_submission_{name}.json")),
    };
    write_atomic(&files.recall, recall.as_bytes())?;
    write_atomic(&files.recall_subset, subset.as_bytes())?;
    Ok(files)
}

/// Writes `bytes` to a sibling temporary file, syncs it and renames it onto `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| EvalError::Io { path, source }
    };
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(io(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io(path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
