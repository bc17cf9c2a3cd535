//! Exact search of the flat index.

use candle_core::{Device, Tensor};

use super::super::error::{IndexError, Result};
use super::super::kernel::{self, GEMM_MIN_BATCH};
use super::super::store::{to_cpu_f32, Store};
use super::super::{Hit, SearchOptions};
use super::FlatIndex;
use crate::{DetailFusion, QueryFeatures};

impl FlatIndex {
    // -----------------------------------------------------------------------------------------
    // Search.

    /// Checks `model` once ([`FlatIndex::check_model`]) and returns a handle that searches
    /// with its queries without re-checking (computing a fingerprint reads weights; do it once
    /// per model, not per query batch).
    pub fn searcher(&self, model: &DetailFusion) -> Result<Searcher<'_>> {
        self.check_model(model)?;
        Ok(Searcher { index: self })
    }

    /// The `k` best images for each composed query, scored as [`DetailFusion::score`] does
    /// (per-branch galleries combine both branches with the query's fusion weights). Checks
    /// the model first; see [`FlatIndex::searcher`] for repeated searches.
    pub fn search(
        &self,
        model: &DetailFusion,
        queries: &QueryFeatures,
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        self.searcher(model)?.search(queries, opts)
    }

    /// The `k` best images for raw query features `[B, P]` against `tokens` (no model check:
    /// the caller vouches that the queries come from the index's model).
    pub fn search_features(&self, queries: &Tensor, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        let (q, b) = self.query_values(queries, "queries")?;
        let scores = self.score_rows(&self.tokens, &q, b, opts.threads)?;
        self.top_hits(&scores, b, opts)
    }

    /// The `k` best images of a per-branch gallery for DI and GM query features `[B, P]` and
    /// fusion weights `[B, 2]` (`[α_DI, α_GM]`), without a model check.
    pub fn search_per_branch(
        &self,
        di: &Tensor,
        gm: &Tensor,
        weights: &Tensor,
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        let (scores, b) = self.per_branch_scores(di, gm, weights, opts.threads)?;
        self.top_hits(&scores, b, opts)
    }

    /// All scores `[B, N]` of raw query features `[B, P]` against `tokens` (CPU tensor).
    pub fn scores(&self, queries: &Tensor) -> Result<Tensor> {
        let (q, b) = self.query_values(queries, "queries")?;
        let s = self.score_rows(&self.tokens, &q, b, None)?;
        Ok(Tensor::from_vec(s, (b, self.len()), &Device::Cpu)?)
    }

    pub(super) fn query_values(&self, t: &Tensor, name: &str) -> Result<(Vec<f32>, usize)> {
        let (b, p) = t
            .dims2()
            .map_err(|_| IndexError::input(name, format!("expected [B, P], got {:?}", t.dims())))?;
        if p != self.info.p {
            return Err(IndexError::input(
                name,
                format!("width {p}, the index holds P = {}", self.info.p),
            ));
        }
        Ok((to_cpu_f32(t)?, b))
    }

    pub(super) fn score_rows(
        &self,
        store: &Store,
        queries: &[f32],
        b: usize,
        threads: Option<usize>,
    ) -> Result<Vec<f32>> {
        if self.is_empty() {
            return Err(IndexError::EmptyIndex);
        }
        if b == 0 {
            return Ok(Vec::new());
        }
        let (q, p) = (self.info.q, self.info.p);
        if b >= GEMM_MIN_BATCH {
            kernel::gemm_scores(&store.gemm_tensor(p)?, q, queries, b)
        } else {
            let threads = kernel::thread_count(threads);
            store.with_rows(|rows| kernel::scan_scores(rows, q, p, queries, b, threads))
        }
    }

    pub(super) fn per_branch_scores(
        &self,
        di: &Tensor,
        gm: &Tensor,
        weights: &Tensor,
        threads: Option<usize>,
    ) -> Result<(Vec<f32>, usize)> {
        let Some(gm_store) = &self.gm_tokens else {
            return Err(IndexError::input(
                "gm",
                "the index has no GM gallery (not per-branch)",
            ));
        };
        let (qd, b) = self.query_values(di, "di")?;
        let (qg, bg) = self.query_values(gm, "gm")?;
        if weights.dims() != [b, 2] || bg != b {
            return Err(IndexError::input(
                "weights",
                format!("expected [{b}, 2] with {b} GM queries, got {:?}", weights.dims()),
            ));
        }
        let w = to_cpu_f32(weights)?;
        let n = self.len();
        let mut s = self.score_rows(&self.tokens, &qd, b, threads)?;
        let sg = self.score_rows(gm_store, &qg, b, threads)?;
        for j in 0..b {
            let (a_di, a_gm) = (w[2 * j], w[2 * j + 1]);
            for (x, y) in s[j * n..(j + 1) * n].iter_mut().zip(&sg[j * n..(j + 1) * n]) {
                *x = *x * a_di + *y * a_gm;
            }
        }
        Ok((s, b))
    }

    pub(super) fn top_hits(&self, scores: &[f32], b: usize, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        if !opts.exclude.is_empty() && opts.exclude.len() != b {
            return Err(IndexError::input(
                "exclude",
                format!("{} entries for {b} queries", opts.exclude.len()),
            ));
        }
        let exclude: Vec<Option<usize>> = opts
            .exclude
            .iter()
            .map(|e| e.as_deref().and_then(|n| self.position(n)))
            .collect();
        let threads = kernel::thread_count(opts.threads);
        Ok(kernel::top_k_rows(scores, self.len(), opts.k, &exclude, threads)
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(index, score)| Hit {
                        index,
                        name: self.names[index].clone(),
                        score,
                    })
                    .collect()
            })
            .collect())
    }
}

/// Searches an index with the queries of a model checked once ([`FlatIndex::searcher`]).
#[derive(Debug, Clone, Copy)]
pub struct Searcher<'a> {
    index: &'a FlatIndex,
}

impl Searcher<'_> {
    /// See [`FlatIndex::search`].
    pub fn search(&self, queries: &QueryFeatures, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        let index = self.index;
        match (&index.gm_tokens, &queries.di, &queries.gm) {
            (Some(_), Some(di), Some(gm)) => {
                index.search_per_branch(&di.global, &gm.global, &queries.weights, opts)
            }
            _ => index.search_features(&queries.feature, opts),
        }
    }

    /// All scores `[B, N]` (CPU), as [`DetailFusion::score`] computes them.
    pub fn scores(&self, queries: &QueryFeatures) -> Result<Tensor> {
        let index = self.index;
        match (&index.gm_tokens, &queries.di, &queries.gm) {
            (Some(_), Some(di), Some(gm)) => {
                let (s, b) = index.per_branch_scores(&di.global, &gm.global, &queries.weights, None)?;
                Ok(Tensor::from_vec(s, (b, index.len()), &Device::Cpu)?)
            }
            _ => index.scores(&queries.feature),
        }
    }

    /// The index searched.
    pub fn index(&self) -> &FlatIndex {
        self.index
    }
}
