//! Retrieval evaluation (SPEC §6): rankings from scores, CIRR and Fashion IQ validation
//! recalls, the validation criterion used to keep the best checkpoint (SPEC §4), and the two
//! CIRR test-server submission files.
//!
//! Everything here works on plain data: gallery names (`&[G]` with `G: AsRef<str>`), one score
//! row per query (`&[S]` with `S: AsRef<[f32]>`, row `i` holds query `i`'s score for every
//! gallery image, higher = better), or ready-made rankings (gallery names, best first).
//! [`scores_from_tensor`] turns a `[B, N]` score tensor into such rows.
//!
//! # Protocol (SPRC `validate_blip.py` / CLIP4Cir `validate.py`)
//! - **Ranking**: descending score. Ties are broken by **gallery index ascending** (the image
//!   listed first in the gallery wins), so results never depend on sort stability; the reference
//!   code's `torch.argsort` leaves the order of ties unspecified. A NaN score is an error.
//! - **CIRR**: the reference image is removed from its own ranking (every occurrence, as the
//!   reference's boolean mask does), leaving `N − 1` images. Recall@K (K ∈ {1, 5, 10, 50}): the
//!   target is within the first K. Recall_subset@K (K ∈ {1, 2, 3}): the reference-free ranking
//!   filtered to the `img_set.members` (5 left), the target within the first K. The target must
//!   be in the gallery and among the members (the reference asserts both).
//! - **Fashion IQ**: nothing is removed; Recall@10 and Recall@50 over the category's gallery.
//! - Recalls are percentages `100 · hits / queries`, computed in `f64` (the reference divides in
//!   `float32`, so its numbers can differ from ours in the 7th significant digit).
//!
//! Recalls from scores never sort: the target's rank is counted in one pass over its row.
//! Full or top-K rankings ([`rank_row`], [`rank_rows`]) use partial selection
//! (`select_nth_unstable_by`) when only the first K are needed.

mod cirr;
mod fiq;
mod metrics;
mod rank;
mod submission;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

pub use cirr::{
    cirr_val_metrics, cirr_val_metrics_from_rankings, cirr_val_ranks, cirr_val_ranks_from_rankings,
    CirrMetrics, CirrQuery, CirrRank, CIRR_RECALL_KS, CIRR_SUBSET_KS,
};
pub use fiq::{
    fiq_category_metrics, fiq_category_metrics_from_rankings, fiq_ranks, fiq_ranks_from_rankings,
    FiqCategoryMetrics, FiqMetrics, FiqQuery, FIQ_RECALL_KS,
};
pub use metrics::EvalMetrics;
pub use rank::{rank_from_tensor, rank_row, rank_rows, scores_from_tensor};
pub use submission::{
    cirr_submission_json, cirr_test_predictions, cirr_test_predictions_from_rankings, write_cirr_submission,
    CirrPrediction, SubmissionFiles, SUBMISSION_SUBSET_TOP_K, SUBMISSION_TOP_K, SUBMISSION_VERSION,
};

/// Result of the evaluation functions.
pub type Result<T> = std::result::Result<T, EvalError>;

/// Identifies the query an error is about: its position in the input and, for CIRR, its pair id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QueryLabel {
    /// Position of the query (= its score row / ranking) in the input, if known.
    pub index: Option<usize>,
    /// CIRR `pairid`, if the query has one.
    pub pair_id: Option<i64>,
}

impl QueryLabel {
    /// The query at position `index` of the input (no pair id).
    pub fn at(index: usize) -> Self {
        Self {
            index: Some(index),
            pair_id: None,
        }
    }

    /// The CIRR query at position `index` with pair id `pair_id`.
    pub fn cirr(index: usize, pair_id: i64) -> Self {
        Self {
            index: Some(index),
            pair_id: Some(pair_id),
        }
    }
}

impl fmt::Display for QueryLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pair_id, self.index) {
            (Some(p), Some(i)) => write!(f, "query pair id {p} (#{i})"),
            (Some(p), None) => write!(f, "query pair id {p}"),
            (None, Some(i)) => write!(f, "query #{i}"),
            (None, None) => write!(f, "query"),
        }
    }
}

/// Which name of a query failed to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameRole {
    /// The reference (CIRR `reference`, Fashion IQ `candidate`).
    Reference,
    /// The target (CIRR `target_hard`, Fashion IQ `target`).
    Target,
    /// One of the CIRR `img_set.members`.
    Member,
}

impl fmt::Display for NameRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameRole::Reference => "reference",
            NameRole::Target => "target",
            NameRole::Member => "img_set member",
        })
    }
}

/// Errors of the evaluation code. Bad input never panics; every per-query error names the
/// query ([`QueryLabel`]: position and CIRR pair id).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The gallery has no images.
    #[error("the gallery is empty")]
    EmptyGallery,
    /// There are no queries to evaluate (a recall over zero queries is undefined).
    #[error("no queries to evaluate")]
    NoQueries,
    /// A gallery name is listed twice, so names do not identify images.
    #[error("gallery name {name:?} appears twice (indices {first} and {second})")]
    DuplicateGalleryName {
        /// The repeated name.
        name: String,
        /// Its first index.
        first: usize,
        /// Its second index.
        second: usize,
    },
    /// Two inputs that must have one entry per query (or per image) differ in length.
    #[error("{what}: expected {expected}, got {got}")]
    CountMismatch {
        /// What was counted, e.g. "score rows (one per query)".
        what: &'static str,
        /// The required count.
        expected: usize,
        /// The count given.
        got: usize,
    },
    /// A score row's length differs from the gallery size.
    #[error("{query}: score row has {got} entries but the gallery has {expected} images")]
    RowLength {
        /// The query.
        query: QueryLabel,
        /// Gallery size.
        expected: usize,
        /// Row length.
        got: usize,
    },
    /// A score is NaN, so the ranking is undefined.
    #[error("{query}: the score for gallery index {column} is NaN")]
    NanScore {
        /// The query.
        query: QueryLabel,
        /// Gallery index of the NaN.
        column: usize,
    },
    /// A query names an image that is not in the gallery.
    #[error("{query}: {role} {name:?} is not in the gallery")]
    NotInGallery {
        /// The query.
        query: QueryLabel,
        /// Which of the query's names.
        role: NameRole,
        /// The unknown name.
        name: String,
    },
    /// A ranking given by the caller does not contain the query's target.
    #[error("{query}: target {name:?} is missing from the query's ranking")]
    TargetNotRanked {
        /// The query.
        query: QueryLabel,
        /// The target's name.
        name: String,
    },
    /// A ranking given by the caller lists a name twice.
    #[error("{query}: {name:?} appears more than once in the query's ranking")]
    DuplicateInRanking {
        /// The query.
        query: QueryLabel,
        /// The repeated name.
        name: String,
    },
    /// A ranking given by the caller is too short to tell the top of the member subset.
    #[error(
        "{query}: the ranking holds only {found} of the {needed} img_set members needed for the subset top {needed}"
    )]
    SubsetIncomplete {
        /// The query.
        query: QueryLabel,
        /// Members (reference excluded) found in the ranking.
        found: usize,
        /// Members needed.
        needed: usize,
    },
    /// A CIRR query's target is not among its `img_set.members`, so Recall_subset is undefined.
    #[error("{query}: target {target:?} is not among the img_set members")]
    TargetNotInMembers {
        /// The query.
        query: QueryLabel,
        /// The target's name.
        target: String,
    },
    /// A validation query has no target (CIRR test split).
    #[error("{query}: has no target (test split?); validation needs one")]
    MissingTarget {
        /// The query.
        query: QueryLabel,
    },
    /// The target is the reference image itself, which CIRR removes from the ranking.
    #[error("{query}: the target is the reference image {name:?}")]
    TargetIsReference {
        /// The query.
        query: QueryLabel,
        /// The shared name.
        name: String,
    },
    /// A rank-exclusion index is outside the score row.
    #[error("{query}: excluded index {index} is outside the score row of {len} entries")]
    IndexOutOfRange {
        /// The query.
        query: QueryLabel,
        /// The bad index.
        index: usize,
        /// Row length.
        len: usize,
    },
    /// Two CIRR queries share a pair id (the submission maps pair ids to predictions).
    #[error("pair id {pair_id} appears twice (queries #{first} and #{second})")]
    DuplicatePairId {
        /// The repeated pair id.
        pair_id: i64,
        /// First query index.
        first: usize,
        /// Second query index.
        second: usize,
    },
    /// A Fashion IQ category is given twice.
    #[error("Fashion IQ category {name:?} is given twice")]
    DuplicateCategory {
        /// The category name.
        name: String,
    },
    /// The submission name would not make a plain file name.
    #[error("invalid submission name {name:?}: must be non-empty without '/', '\\' or NUL")]
    InvalidSubmissionName {
        /// The rejected name.
        name: String,
    },
    /// A score tensor is not two-dimensional.
    #[error("score tensor must have shape [B, N], got {0:?}")]
    TensorShape(Vec<usize>),
    /// A candle error while reading a score tensor.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Writing a submission file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Serialising a submission failed.
    #[error("serialising the submission: {0}")]
    Json(#[from] serde_json::Error),
}

/// Gallery names → gallery indices, checked non-empty and free of duplicates. Build it once per
/// gallery with [`GalleryIndex::new`] when evaluating several times.
#[derive(Debug, Clone)]
pub struct GalleryIndex {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl GalleryIndex {
    /// Indexes `names` (index = position). Errors on an empty gallery or a repeated name.
    pub fn new<G: AsRef<str>>(names: &[G]) -> Result<Self> {
        if names.is_empty() {
            return Err(EvalError::EmptyGallery);
        }
        let mut index = HashMap::with_capacity(names.len());
        let mut owned = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let n = n.as_ref();
            if let Some(&first) = index.get(n) {
                return Err(EvalError::DuplicateGalleryName {
                    name: n.to_owned(),
                    first,
                    second: i,
                });
            }
            index.insert(n.to_owned(), i);
            owned.push(n.to_owned());
        }
        Ok(Self { names: owned, index })
    }

    /// Number of gallery images `N`.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: [`GalleryIndex::new`] rejects empty galleries.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The gallery names, in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Name of gallery index `i`, if in range.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names.get(i).map(String::as_str)
    }

    /// Index of `name`, if in the gallery.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Index of `name`, or [`EvalError::NotInGallery`] naming `query` and `role`.
    pub fn require(&self, query: QueryLabel, role: NameRole, name: &str) -> Result<usize> {
        self.get(name).ok_or_else(|| EvalError::NotInGallery {
            query,
            role,
            name: name.to_owned(),
        })
    }
}

/// Percentage of `ranks` (0-based) below `k`: `100 · #{r < k} / len`. `ranks` must be non-empty.
fn recall_at(ranks: impl ExactSizeIterator<Item = usize>, k: usize) -> f64 {
    let n = ranks.len();
    let hits = ranks.filter(|&r| r < k).count();
    100.0 * hits as f64 / n as f64
}

fn check_count(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(EvalError::CountMismatch { what, expected, got })
    }
}
