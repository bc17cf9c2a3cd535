//! One result type for either benchmark, for training logs and best-checkpoint selection.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{CirrMetrics, FiqMetrics};

/// Validation metrics of either benchmark. Serialises with a `"dataset"` tag
/// (`"cirr"` / `"fashion_iq"`) next to the fields of the inner struct, one JSON object per
/// evaluation (JSONL-friendly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dataset", rename_all = "snake_case")]
pub enum EvalMetrics {
    /// CIRR validation.
    Cirr(CirrMetrics),
    /// Fashion IQ validation.
    FashionIq(FiqMetrics),
}

impl EvalMetrics {
    /// The validation criterion of SPEC §4 (higher is better): CIRR the mean of the 7 recalls,
    /// Fashion IQ (mean R@10 + mean R@50) / 2.
    pub fn criterion(&self) -> f64 {
        match self {
            EvalMetrics::Cirr(m) => m.criterion(),
            EvalMetrics::FashionIq(m) => m.criterion(),
        }
    }

    /// The headline "Avg" of SPEC §6: CIRR (R@5 + Rs@1) / 2, Fashion IQ (mean R@10 + mean R@50) / 2.
    pub fn avg(&self) -> f64 {
        match self {
            EvalMetrics::Cirr(m) => m.avg,
            EvalMetrics::FashionIq(m) => m.avg,
        }
    }
}

impl From<CirrMetrics> for EvalMetrics {
    fn from(m: CirrMetrics) -> Self {
        EvalMetrics::Cirr(m)
    }
}

impl From<FiqMetrics> for EvalMetrics {
    fn from(m: FiqMetrics) -> Self {
        EvalMetrics::FashionIq(m)
    }
}

impl fmt::Display for EvalMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalMetrics::Cirr(m) => m.fmt(f),
            EvalMetrics::FashionIq(m) => m.fmt(f),
        }
    }
}
