//! Rankings from score rows with the deterministic tie rule (higher score first, then lower
//! gallery index first).

use std::cmp::Ordering;

use candle_core::{DType, Tensor};

use super::{check_count, EvalError, QueryLabel, Result};

/// Whether gallery item `a` ranks before item `b` in `row` (higher score, ties → lower index).
/// The row must be NaN-free.
#[inline]
pub(super) fn ranks_before(row: &[f32], a: usize, b: usize) -> bool {
    let (sa, sb) = (row[a], row[b]);
    sa > sb || (sa == sb && a < b)
}

/// Total order of gallery indices under the ranking rule (NaN-free rows).
#[inline]
pub(super) fn rank_cmp(row: &[f32], a: usize, b: usize) -> Ordering {
    row[b]
        .partial_cmp(&row[a])
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// Checks one score row: length `n` and no NaN.
pub(super) fn check_row(query: QueryLabel, row: &[f32], n: usize) -> Result<&[f32]> {
    if row.len() != n {
        return Err(EvalError::RowLength {
            query,
            expected: n,
            got: row.len(),
        });
    }
    if let Some(column) = row.iter().position(|s| s.is_nan()) {
        return Err(EvalError::NanScore { query, column });
    }
    Ok(row)
}

/// 0-based rank of `target` in `row` with the items of `excluded` removed (`target` must not be
/// in `excluded`): the number of other items that rank before it.
pub(super) fn target_rank(row: &[f32], target: usize, excluded: Option<usize>) -> usize {
    let st = row[target];
    let mut before = row[..target].iter().filter(|&&s| s >= st).count()
        + row[target + 1..].iter().filter(|&&s| s > st).count();
    if let Some(x) = excluded {
        if ranks_before(row, x, target) {
            before -= 1;
        }
    }
    before
}

/// Ranks an already checked row.
pub(super) fn rank_checked(row: &[f32], exclude: Option<usize>, top_k: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).filter(|&j| Some(j) != exclude).collect();
    let cmp = |a: &usize, b: &usize| rank_cmp(row, *a, *b);
    match top_k {
        Some(0) => idx.clear(),
        Some(k) if k < idx.len() => {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
            idx.sort_unstable_by(cmp);
        }
        _ => idx.sort_unstable_by(cmp),
    }
    idx
}

/// Ranks one score row (`[N]`, higher = better): gallery indices best first, ties broken by
/// gallery index ascending. `exclude` removes one index (CIRR: the reference); `top_k` keeps
/// only the first K (partial selection, `O(N + K log K)`), `None` ranks everything.
///
/// Errors: a NaN score, or `exclude` outside the row.
pub fn rank_row(scores: &[f32], exclude: Option<usize>, top_k: Option<usize>) -> Result<Vec<usize>> {
    rank_one(QueryLabel::default(), scores, scores.len(), exclude, top_k)
}

fn rank_one(
    query: QueryLabel,
    row: &[f32],
    n: usize,
    exclude: Option<usize>,
    top_k: Option<usize>,
) -> Result<Vec<usize>> {
    let row = check_row(query, row, n)?;
    if let Some(x) = exclude.filter(|&x| x >= n) {
        return Err(EvalError::IndexOutOfRange {
            query,
            index: x,
            len: n,
        });
    }
    Ok(rank_checked(row, exclude, top_k))
}

/// Ranks every row of a `[B, N]` score matrix (see [`rank_row`]). `exclude`, if given, has one
/// gallery index per row to remove from that row's ranking. All rows must have the length of the
/// first.
///
/// Errors name the row: NaN score, ragged row, excluded index out of range; and an `exclude`
/// whose length differs from `B`.
pub fn rank_rows<S: AsRef<[f32]>>(
    scores: &[S],
    exclude: Option<&[usize]>,
    top_k: Option<usize>,
) -> Result<Vec<Vec<usize>>> {
    if let Some(x) = exclude {
        check_count("excluded indices (one per score row)", scores.len(), x.len())?;
    }
    let n = scores.first().map_or(0, |r| r.as_ref().len());
    scores
        .iter()
        .enumerate()
        .map(|(i, row)| rank_one(QueryLabel::at(i), row.as_ref(), n, exclude.map(|x| x[i]), top_k))
        .collect()
}

/// Copies a `[B, N]` score tensor (any float dtype, any device) into `B` rows of `N` `f32`
/// scores, the input of the metric functions.
pub fn scores_from_tensor(scores: &Tensor) -> Result<Vec<Vec<f32>>> {
    if scores.rank() != 2 {
        return Err(EvalError::TensorShape(scores.dims().to_vec()));
    }
    Ok(scores.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Ranks every row of a `[B, N]` score tensor: [`scores_from_tensor`] then [`rank_rows`]
/// (no exclusion). Returns `B` lists of gallery indices, best first (`top_k` of them if given).
pub fn rank_from_tensor(scores: &Tensor, top_k: Option<usize>) -> Result<Vec<Vec<usize>>> {
    rank_rows(&scores_from_tensor(scores)?, None, top_k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_rank_matches_full_sort() {
        let row = [0.5f32, 0.9, 0.5, -0.0, 0.0, 0.9, 0.1];
        let full = rank_checked(&row, None, None);
        assert_eq!(full, vec![1, 5, 0, 2, 6, 3, 4]);
        for t in 0..row.len() {
            let pos = full.iter().position(|&j| j == t).unwrap();
            assert_eq!(target_rank(&row, t, None), pos);
            for x in (0..row.len()).filter(|&x| x != t) {
                let ranked = rank_checked(&row, Some(x), None);
                let pos = ranked.iter().position(|&j| j == t).unwrap();
                assert_eq!(target_rank(&row, t, Some(x)), pos, "t={t} x={x}");
            }
        }
    }
}
