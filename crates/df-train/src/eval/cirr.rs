//! CIRR validation: Recall@{1,5,10,50} with the reference removed from its own ranking,
//! Recall_subset@{1,2,3} over the `img_set.members`, "Avg" and the validation criterion.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::rank::{check_row, ranks_before, target_rank};
use super::{check_count, recall_at, EvalError, GalleryIndex, NameRole, QueryLabel, Result};

/// The K of CIRR Recall@K.
pub const CIRR_RECALL_KS: [usize; 4] = [1, 5, 10, 50];
/// The K of CIRR Recall_subset@K.
pub const CIRR_SUBSET_KS: [usize; 3] = [1, 2, 3];

/// One CIRR query as the evaluation needs it (from `cap.rc2.{val,test1}.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CirrQuery {
    /// `pairid`.
    pub pair_id: i64,
    /// `reference` image name; removed from the query's own ranking.
    pub reference: String,
    /// `target_hard`; `None` on the test split.
    pub target: Option<String>,
    /// `img_set.members` (6 names, reference and target included).
    pub members: Vec<String>,
}

/// Where a CIRR query's target landed (ranks are 0-based: 0 = first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CirrRank {
    /// The query's pair id.
    pub pair_id: i64,
    /// Rank of the target among all gallery images, reference removed.
    pub rank: usize,
    /// Rank of the target among the `img_set.members`, reference removed.
    pub subset_rank: usize,
}

/// CIRR validation metrics, all in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CirrMetrics {
    /// Number of queries evaluated.
    pub queries: usize,
    /// Recall@1.
    pub recall_at1: f64,
    /// Recall@5.
    pub recall_at5: f64,
    /// Recall@10.
    pub recall_at10: f64,
    /// Recall@50.
    pub recall_at50: f64,
    /// Recall_subset@1.
    pub recall_subset_at1: f64,
    /// Recall_subset@2.
    pub recall_subset_at2: f64,
    /// Recall_subset@3.
    pub recall_subset_at3: f64,
    /// Headline "Avg" = (Recall@5 + Recall_subset@1) / 2.
    pub avg: f64,
    /// Validation criterion (SPRC's `arithmetic_mean`): mean of the 7 recalls above.
    pub criterion: f64,
}

impl CirrMetrics {
    /// Aggregates per-query ranks. Errors on an empty slice.
    pub fn from_ranks(ranks: &[CirrRank]) -> Result<Self> {
        if ranks.is_empty() {
            return Err(EvalError::NoQueries);
        }
        let r = |k| recall_at(ranks.iter().map(|x| x.rank), k);
        let s = |k| recall_at(ranks.iter().map(|x| x.subset_rank), k);
        let [k1, k5, k10, k50] = CIRR_RECALL_KS;
        let [s1, s2, s3] = CIRR_SUBSET_KS;
        let (r1, r5, r10, r50) = (r(k1), r(k5), r(k10), r(k50));
        let (rs1, rs2, rs3) = (s(s1), s(s2), s(s3));
        Ok(Self {
            queries: ranks.len(),
            recall_at1: r1,
            recall_at5: r5,
            recall_at10: r10,
            recall_at50: r50,
            recall_subset_at1: rs1,
            recall_subset_at2: rs2,
            recall_subset_at3: rs3,
            avg: (r5 + rs1) / 2.0,
            criterion: (r1 + r5 + r10 + r50 + rs1 + rs2 + rs3) / 7.0,
        })
    }

    /// The validation criterion: mean of the 7 recalls (higher is better).
    pub fn criterion(&self) -> f64 {
        self.criterion
    }
}

impl fmt::Display for CirrMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "CIRR ({} queries)", self.queries)?;
        writeln!(
            f,
            "| {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>9} |",
            "R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg", "criterion"
        )?;
        writeln!(
            f,
            "|{0:-<8}|{0:-<8}|{0:-<8}|{0:-<8}|{0:-<8}|{0:-<8}|{0:-<8}|{0:-<8}|{0:-<11}|",
            ""
        )?;
        write!(
            f,
            "| {:>6.2} | {:>6.2} | {:>6.2} | {:>6.2} | {:>6.2} | {:>6.2} | {:>6.2} | {:>6.2} | {:>9.2} |",
            self.recall_at1,
            self.recall_at5,
            self.recall_at10,
            self.recall_at50,
            self.recall_subset_at1,
            self.recall_subset_at2,
            self.recall_subset_at3,
            self.avg,
            self.criterion
        )
    }
}

/// The target name of a validation query, checked to differ from the reference.
fn val_target(query: QueryLabel, q: &CirrQuery) -> Result<&str> {
    let t = q.target.as_deref().ok_or(EvalError::MissingTarget { query })?;
    if t == q.reference {
        return Err(EvalError::TargetIsReference {
            query,
            name: t.to_owned(),
        });
    }
    Ok(t)
}

/// Gallery indices of the members, reference removed, duplicates dropped, in member order.
pub(super) fn member_indices(
    query: QueryLabel,
    gallery: &GalleryIndex,
    q: &CirrQuery,
    reference: usize,
) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::with_capacity(q.members.len());
    for m in &q.members {
        let i = gallery.require(query, NameRole::Member, m)?;
        if i != reference && !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

/// Per-query target ranks from scores. `scores`: `B` rows of `N` scores (row `i` = query `i`,
/// column `j` = gallery image `j`), `B = queries.len()`, `N = gallery.len()`.
///
/// Each query's reference, target and members must be in the gallery, the target must differ
/// from the reference and be among the members; errors name the query's pair id.
pub fn cirr_val_ranks<G, S>(queries: &[CirrQuery], gallery: &[G], scores: &[S]) -> Result<Vec<CirrRank>>
where
    G: AsRef<str>,
    S: AsRef<[f32]>,
{
    let gallery = GalleryIndex::new(gallery)?;
    check_count("score rows (one per query)", queries.len(), scores.len())?;
    queries
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(i, (q, row))| {
            let query = QueryLabel::cirr(i, q.pair_id);
            let row = check_row(query, row.as_ref(), gallery.len())?;
            let target_name = val_target(query, q)?;
            let r = gallery.require(query, NameRole::Reference, &q.reference)?;
            let t = gallery.require(query, NameRole::Target, target_name)?;
            let members = member_indices(query, &gallery, q, r)?;
            if !members.contains(&t) {
                return Err(EvalError::TargetNotInMembers {
                    query,
                    target: target_name.to_owned(),
                });
            }
            let subset_rank = members
                .iter()
                .filter(|&&m| m != t && ranks_before(row, m, t))
                .count();
            Ok(CirrRank {
                pair_id: q.pair_id,
                rank: target_rank(row, t, Some(r)),
                subset_rank,
            })
        })
        .collect()
}

/// [`cirr_val_ranks`] then [`CirrMetrics::from_ranks`].
pub fn cirr_val_metrics<G, S>(queries: &[CirrQuery], gallery: &[G], scores: &[S]) -> Result<CirrMetrics>
where
    G: AsRef<str>,
    S: AsRef<[f32]>,
{
    CirrMetrics::from_ranks(&cirr_val_ranks(queries, gallery, scores)?)
}

/// Walks a caller-given ranking once: checks duplicates, drops every occurrence of the reference
/// and calls `visit(position_without_reference, name)` for the others.
pub(super) fn walk_ranking<'a, N: AsRef<str> + 'a>(
    query: QueryLabel,
    ranking: &'a [N],
    reference: &str,
    mut visit: impl FnMut(usize, &'a str),
) -> Result<()> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(ranking.len());
    let mut pos = 0;
    for name in ranking {
        let name = name.as_ref();
        if !seen.insert(name) {
            return Err(EvalError::DuplicateInRanking {
                query,
                name: name.to_owned(),
            });
        }
        if name != reference {
            visit(pos, name);
            pos += 1;
        }
    }
    Ok(())
}

/// Per-query target ranks from ready-made rankings: `rankings[i]` lists gallery names for query
/// `i`, best first. The reference may appear in it (it is removed, as the protocol does); the
/// ranking may be truncated (a top-K list) as long as it contains the target, since everything
/// ranked before the target is then present. Names must not repeat.
pub fn cirr_val_ranks_from_rankings<R, N>(queries: &[CirrQuery], rankings: &[R]) -> Result<Vec<CirrRank>>
where
    R: AsRef<[N]>,
    N: AsRef<str>,
{
    check_count("rankings (one per query)", queries.len(), rankings.len())?;
    queries
        .iter()
        .zip(rankings)
        .enumerate()
        .map(|(i, (q, ranking))| {
            let query = QueryLabel::cirr(i, q.pair_id);
            let target = val_target(query, q)?;
            let members: HashSet<&str> = q
                .members
                .iter()
                .map(String::as_str)
                .filter(|&m| m != q.reference)
                .collect();
            if !members.contains(target) {
                return Err(EvalError::TargetNotInMembers {
                    query,
                    target: target.to_owned(),
                });
            }
            let mut found = None;
            let mut members_before = 0;
            walk_ranking(query, ranking.as_ref(), &q.reference, |pos, name| {
                if found.is_some() {
                    return;
                }
                if name == target {
                    found = Some((pos, members_before));
                } else if members.contains(name) {
                    members_before += 1;
                }
            })?;
            let (rank, subset_rank) = found.ok_or_else(|| EvalError::TargetNotRanked {
                query,
                name: target.to_owned(),
            })?;
            Ok(CirrRank {
                pair_id: q.pair_id,
                rank,
                subset_rank,
            })
        })
        .collect()
}

/// [`cirr_val_ranks_from_rankings`] then [`CirrMetrics::from_ranks`].
pub fn cirr_val_metrics_from_rankings<R, N>(queries: &[CirrQuery], rankings: &[R]) -> Result<CirrMetrics>
where
    R: AsRef<[N]>,
    N: AsRef<str>,
{
    CirrMetrics::from_ranks(&cirr_val_ranks_from_rankings(queries, rankings)?)
}
