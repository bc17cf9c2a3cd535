//! Max-over-tokens for engines that index token vectors one by one.
//!
//! An approximate (or remote) engine stores each image's `Q` token vectors as separate
//! entries under the image's id and answers a query with the best *token* hits. The image
//! score `s(q, z) = max_k ⟨q, z_k⟩` is the best hit per image, so the results are reduced by
//! image id with `max`.
//!
//! **How many token hits.** With an exact engine, the `M = (k + e)·Q` best token hits (`e = 1`
//! when one image is excluded) hold the best token of every image of the exact top `k`: at most
//! `(k + e)·Q` tokens can score at least as high as the `k`-th best image's best token, since
//! each of them belongs to one of the at most `k + e` images whose maximum is that high. Images
//! seen only through weaker tokens get a score at most their true one, which is below the
//! `k`-th. So the max-reduce of `M` exact token hits *is* the exact top `k` (ties aside).
//! Approximate engines over-fetch a further factor to make up for the hits they miss.

use std::cmp::Ordering;
use std::collections::HashMap;

/// The number of token hits to fetch for `k` images of `q` tokens each: `(k + e)·q·overfetch`
/// rounded up, `e = 1` when a reference image is excluded (see the module docs for why this
/// is exact for `overfetch = 1` on an exact engine).
pub fn token_fetch_count(k: usize, q: usize, exclude: bool, overfetch: f32) -> usize {
    let base = (k + usize::from(exclude)) * q;
    ((base as f64) * f64::from(overfetch.max(1.0))).ceil() as usize
}

/// Reduces token hits `(image id, score)` to the best score per image, leaves out `exclude`,
/// and returns the `k` best images, best first (ties: lower id first). NaN scores are dropped.
pub fn max_reduce(
    hits: impl IntoIterator<Item = (u64, f32)>,
    k: usize,
    exclude: Option<u64>,
) -> Vec<(u64, f32)> {
    let mut best: HashMap<u64, f32> = HashMap::new();
    for (id, score) in hits {
        if Some(id) == exclude || score.is_nan() {
            continue;
        }
        best.entry(id).and_modify(|s| *s = s.max(score)).or_insert(score);
    }
    let mut all: Vec<(u64, f32)> = best.into_iter().collect();
    let order = |a: &(u64, f32), b: &(u64, f32)| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    };
    if all.len() > k && k > 0 {
        all.select_nth_unstable_by(k - 1, order);
        all.truncate(k);
    }
    all.truncate(k);
    all.sort_unstable_by(order);
    all
}

/// `max_k ⟨q, z_k⟩` over the `Q` token vectors `tokens` (`[Q·P]`, row-major) of one image.
#[cfg_attr(not(feature = "usearch"), allow(dead_code))]
pub(crate) fn max_dot(query: &[f32], tokens: &[f32]) -> f32 {
    tokens
        .chunks_exact(query.len().max(1))
        .map(|z| z.iter().zip(query).map(|(a, b)| a * b).sum::<f32>())
        .fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_by_image_with_max_and_orders_ties_by_id() {
        let hits = [
            (3, 0.5),
            (1, 0.9),
            (3, 0.95),
            (2, 0.9),
            (1, 0.1),
            (4, f32::NAN),
            (5, 0.2),
        ];
        assert_eq!(max_reduce(hits, 3, None), vec![(3, 0.95), (1, 0.9), (2, 0.9)]);
        assert_eq!(max_reduce(hits, 2, Some(3)), vec![(1, 0.9), (2, 0.9)]);
        assert_eq!(max_reduce(hits, 10, None).len(), 4);
        assert!(max_reduce(hits, 0, None).is_empty());
    }

    #[test]
    fn fetch_count_covers_k_images_and_the_excluded_one() {
        assert_eq!(token_fetch_count(10, 32, false, 1.0), 320);
        assert_eq!(token_fetch_count(10, 32, true, 1.0), 352);
        assert_eq!(token_fetch_count(10, 32, false, 1.5), 480);
        assert_eq!(token_fetch_count(10, 32, false, 0.5), 320);
    }

    #[test]
    fn max_dot_is_the_best_token() {
        let q = [1.0, 0.0];
        assert_eq!(max_dot(&q, &[0.1, 5.0, 0.7, 0.0, -1.0, 2.0]), 0.7);
    }
}
