//! Fashion IQ validation: per-category Recall@10 / Recall@50 (reference not removed), the
//! averages over categories and the validation criterion.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::rank::{check_row, target_rank};
use super::{check_count, recall_at, EvalError, GalleryIndex, NameRole, QueryLabel, Result};

/// The K of Fashion IQ Recall@K.
pub const FIQ_RECALL_KS: [usize; 2] = [10, 50];

/// One Fashion IQ validation query (from `cap.{category}.val.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiqQuery {
    /// `candidate` (the reference image). It stays in the ranking; used in error context only.
    pub candidate: String,
    /// `target` image name.
    pub target: String,
}

/// Recalls of one Fashion IQ category, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiqCategoryMetrics {
    /// Category name (`dress`, `shirt`, `toptee`).
    pub category: String,
    /// Number of queries evaluated.
    pub queries: usize,
    /// Recall@10.
    pub recall_at10: f64,
    /// Recall@50.
    pub recall_at50: f64,
}

impl FiqCategoryMetrics {
    /// Aggregates 0-based target ranks of one category. Errors on an empty slice.
    pub fn from_ranks(category: impl Into<String>, ranks: &[usize]) -> Result<Self> {
        if ranks.is_empty() {
            return Err(EvalError::NoQueries);
        }
        let [k10, k50] = FIQ_RECALL_KS;
        Ok(Self {
            category: category.into(),
            queries: ranks.len(),
            recall_at10: recall_at(ranks.iter().copied(), k10),
            recall_at50: recall_at(ranks.iter().copied(), k50),
        })
    }
}

/// Fashion IQ validation metrics over categories, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiqMetrics {
    /// Per-category recalls, in the order given.
    pub categories: Vec<FiqCategoryMetrics>,
    /// Unweighted mean of the categories' Recall@10.
    pub mean_recall_at10: f64,
    /// Unweighted mean of the categories' Recall@50.
    pub mean_recall_at50: f64,
    /// Headline "Avg" = (mean Recall@10 + mean Recall@50) / 2; also the validation criterion
    /// (SPRC's `average_recall`).
    pub avg: f64,
}

impl FiqMetrics {
    /// Averages per-category metrics (unweighted, as SPRC's `mean`). Errors when there are no
    /// categories or a category name repeats.
    pub fn from_categories(categories: Vec<FiqCategoryMetrics>) -> Result<Self> {
        if categories.is_empty() {
            return Err(EvalError::NoQueries);
        }
        let mut seen = HashSet::new();
        for c in &categories {
            if !seen.insert(c.category.as_str()) {
                return Err(EvalError::DuplicateCategory {
                    name: c.category.clone(),
                });
            }
        }
        let n = categories.len() as f64;
        let m10 = categories.iter().map(|c| c.recall_at10).sum::<f64>() / n;
        let m50 = categories.iter().map(|c| c.recall_at50).sum::<f64>() / n;
        Ok(Self {
            categories,
            mean_recall_at10: m10,
            mean_recall_at50: m50,
            avg: (m10 + m50) / 2.0,
        })
    }

    /// The validation criterion: (mean R@10 + mean R@50) / 2 (higher is better).
    pub fn criterion(&self) -> f64 {
        self.avg
    }
}

impl fmt::Display for FiqMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .categories
            .iter()
            .map(|c| c.category.chars().count())
            .chain(["category".len(), "average".len()])
            .max()
            .unwrap_or(8);
        writeln!(f, "Fashion IQ")?;
        writeln!(
            f,
            "| {:<w$} | {:>7} | {:>6} | {:>6} |",
            "category", "queries", "R@10", "R@50"
        )?;
        writeln!(f, "|{0:-<w2$}|{0:-<9}|{0:-<8}|{0:-<8}|", "", w2 = w + 2)?;
        for c in &self.categories {
            writeln!(
                f,
                "| {:<w$} | {:>7} | {:>6.2} | {:>6.2} |",
                c.category, c.queries, c.recall_at10, c.recall_at50
            )?;
        }
        let total: usize = self.categories.iter().map(|c| c.queries).sum();
        writeln!(
            f,
            "| {:<w$} | {:>7} | {:>6.2} | {:>6.2} |",
            "average", total, self.mean_recall_at10, self.mean_recall_at50
        )?;
        write!(f, "Avg = criterion = {:.2}", self.avg)
    }
}

fn fiq_label(i: usize) -> QueryLabel {
    QueryLabel::at(i)
}

/// 0-based target ranks of one category from scores: `scores` has one row of `N` scores per
/// query (`B = queries.len()` rows, `N = gallery.len()`, gallery = `split.{category}.val.json`).
/// The candidate is not removed. Errors name the query index and the missing target.
pub fn fiq_ranks<G, S>(queries: &[FiqQuery], gallery: &[G], scores: &[S]) -> Result<Vec<usize>>
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
            let query = fiq_label(i);
            let row = check_row(query, row.as_ref(), gallery.len())?;
            let t = gallery.require(query, NameRole::Target, &q.target)?;
            Ok(target_rank(row, t, None))
        })
        .collect()
}

/// 0-based target ranks of one category from ready-made rankings (`rankings[i]`: gallery names
/// for query `i`, best first; nothing is removed; may be truncated if it contains the target;
/// names must not repeat).
pub fn fiq_ranks_from_rankings<R, N>(queries: &[FiqQuery], rankings: &[R]) -> Result<Vec<usize>>
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
            let query = fiq_label(i);
            let ranking = ranking.as_ref();
            let mut seen: HashSet<&str> = HashSet::with_capacity(ranking.len());
            let mut found = None;
            for (pos, name) in ranking.iter().enumerate() {
                let name = name.as_ref();
                if !seen.insert(name) {
                    return Err(EvalError::DuplicateInRanking {
                        query,
                        name: name.to_owned(),
                    });
                }
                if found.is_none() && name == q.target {
                    found = Some(pos);
                }
            }
            found.ok_or_else(|| EvalError::TargetNotRanked {
                query,
                name: q.target.clone(),
            })
        })
        .collect()
}

/// Recalls of one category from scores ([`fiq_ranks`] then [`FiqCategoryMetrics::from_ranks`]).
pub fn fiq_category_metrics<G, S>(
    category: &str,
    queries: &[FiqQuery],
    gallery: &[G],
    scores: &[S],
) -> Result<FiqCategoryMetrics>
where
    G: AsRef<str>,
    S: AsRef<[f32]>,
{
    FiqCategoryMetrics::from_ranks(category, &fiq_ranks(queries, gallery, scores)?)
}

/// Recalls of one category from rankings ([`fiq_ranks_from_rankings`] then
/// [`FiqCategoryMetrics::from_ranks`]).
pub fn fiq_category_metrics_from_rankings<R, N>(
    category: &str,
    queries: &[FiqQuery],
    rankings: &[R],
) -> Result<FiqCategoryMetrics>
where
    R: AsRef<[N]>,
    N: AsRef<str>,
{
    FiqCategoryMetrics::from_ranks(category, &fiq_ranks_from_rankings(queries, rankings)?)
}
