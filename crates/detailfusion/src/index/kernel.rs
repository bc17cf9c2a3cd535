//! Search kernels: max-over-tokens scores by a streaming scan (small batches, memory-bound) or
//! by blocked GEMM (large batches, compute-bound), partial top-k selection, and IEEE
//! half-precision conversion.

use std::cmp::Ordering;

use candle_core::{Device, Storage, Tensor};

use super::error::{IndexError, Result};

/// Batches of at least this many queries are scored by GEMM (candle's multithreaded matmul on a
/// cached `f32` tensor); smaller ones by the streaming scan over the (mapped) rows.
pub const GEMM_MIN_BATCH: usize = 5;

/// Gallery rows (token vectors) per GEMM block: the `[B, rows]` similarity block stays in cache.
const GEMM_BLOCK_ELEMS: usize = 1 << 19;

/// Below this many gallery bytes per extra thread, a scan stays on one thread.
const MIN_BYTES_PER_THREAD: usize = 1 << 20;

/// Gallery token vectors, `[N·Q, P]` row-major, as stored.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::F32(s) => s.len(),
            Rows::F16(s) => s.len(),
        }
    }

    fn bytes_per_value(&self) -> usize {
        match self {
            Rows::F32(_) => 4,
            Rows::F16(_) => 2,
        }
    }
}

/// The number of worker threads to use: `requested`, or the machine's parallelism.
pub(crate) fn thread_count(requested: Option<usize>) -> usize {
    requested
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1)
}

// ---------------------------------------------------------------------------------------------
// Dot products.

/// `M` dot products of one gallery row with `M` queries, reading the row once; `L`
/// accumulator lanes per query (16 for one query: four SSE registers, enough independent add
/// chains; 8 for several, to keep all accumulators in registers).
///
/// Written for the auto-vectoriser: fixed-size lane loops over `&[f32; L]` chunks become packed
/// multiplies and adds across the lanes. The accumulators pass through `black_box` before the
/// horizontal sums, which keeps the SLP vectoriser from fusing the reduction into the loop
/// (it would otherwise vectorise across queries with shuffles, or at half width).
#[inline(always)]
fn dots<const M: usize, const L: usize>(row: &[f32], qs: &[&[f32]; M]) -> [f32; M] {
    let p = row.len();
    for q in qs {
        assert!(q.len() == p);
    }
    let mut acc = [[0f32; L]; M];
    let mut chunks = row.chunks_exact(L);
    for (c, r) in chunks.by_ref().enumerate() {
        let r: &[f32; L] = r.try_into().unwrap_or(&[0.0; L]);
        for m in 0..M {
            let qv: &[f32; L] = qs[m][c * L..c * L + L].try_into().unwrap_or(&[0.0; L]);
            for l in 0..L {
                acc[m][l] += r[l] * qv[l];
            }
        }
    }
    let acc = std::hint::black_box(acc);
    let tail = chunks.remainder();
    let j = p - tail.len();
    let mut out = [0f32; M];
    for m in 0..M {
        let mut s: f32 = acc[m].iter().sum();
        for (t, r) in tail.iter().enumerate() {
            s += r * qs[m][j + t];
        }
        out[m] = s;
    }
    out
}

/// Max-over-tokens scores of one image (`tokens: [Q, P]`) for `M` queries, into `best`.
#[inline(always)]
fn image_scores<const M: usize>(tokens: &[f32], p: usize, qs: &[&[f32]; M], best: &mut [f32]) {
    let mut b = [f32::NEG_INFINITY; M];
    for row in tokens.chunks_exact(p) {
        let d = if M == 1 {
            let d1 = dots::<1, 16>(row, &[qs[0]]);
            let mut d = [0f32; M];
            d[0] = d1[0];
            d
        } else {
            dots::<M, 8>(row, qs)
        };
        for m in 0..M {
            if d[m] > b[m] {
                b[m] = d[m];
            }
        }
    }
    best[..M].copy_from_slice(&b);
}

/// Scores of a contiguous run of images for all `b` queries (`queries: [b, P]`), image-major
/// `out: [n, b]`.
fn scan_images(tokens: &[f32], q: usize, p: usize, queries: &[f32], b: usize, out: &mut [f32]) {
    let per_image = q * p;
    let qrow = |i: usize| &queries[i * p..(i + 1) * p];
    for (img, o) in tokens.chunks_exact(per_image).zip(out.chunks_exact_mut(b)) {
        let mut j = 0;
        while j < b {
            match b - j {
                1 => image_scores::<1>(img, p, &[qrow(j)], &mut o[j..]),
                2 => image_scores::<2>(img, p, &[qrow(j), qrow(j + 1)], &mut o[j..]),
                3 => image_scores::<3>(img, p, &[qrow(j), qrow(j + 1), qrow(j + 2)], &mut o[j..]),
                _ => image_scores::<4>(
                    img,
                    p,
                    &[qrow(j), qrow(j + 1), qrow(j + 2), qrow(j + 3)],
                    &mut o[j..],
                ),
            }
            j += 4;
        }
    }
}

/// `2^112`: scales binary16 bits moved into an `f32`'s place (`bits << 13`) to their value.
const F16_SCALE: f32 = f32::from_bits(0x7780_0000);

/// Queries this large would overflow once scaled by [`F16_SCALE`].
const F16_FAST_MAX_QUERY: f32 = 1.0e4;

/// The scaled widening of [`scan_images_f16`], as bits.
#[inline(always)]
fn widen_scaled(h: u16) -> f32 {
    let h = u32::from(h);
    f32::from_bits(((h & 0x7fff) << 13) | ((h & 0x8000) << 16))
}

/// `dots::<1, 16>` of a half-precision row (scaled widening) with a scaled query: the same
/// accumulation order, so the same result as widening into a buffer first.
#[inline(always)]
fn dot_f16_scaled(row: &[u16], q: &[f32]) -> f32 {
    const L: usize = 16;
    assert!(q.len() == row.len());
    let mut acc = [0f32; L];
    let mut chunks = row.chunks_exact(L);
    for (r, qv) in chunks.by_ref().zip(q.chunks_exact(L)) {
        let r: &[u16; L] = r.try_into().unwrap_or(&[0; L]);
        let qv: &[f32; L] = qv.try_into().unwrap_or(&[0.0; L]);
        for l in 0..L {
            acc[l] += widen_scaled(r[l]) * qv[l];
        }
    }
    let acc = std::hint::black_box(acc);
    let tail = chunks.remainder();
    let j = row.len() - tail.len();
    let mut s: f32 = acc.iter().sum();
    for (t, r) in tail.iter().enumerate() {
        s += widen_scaled(*r) * q[j + t];
    }
    s
}

/// Like [`scan_images`] over half-precision rows, widening one image at a time.
///
/// The widening only moves the bits into place (`f32::from_bits(bits << 13)`, the value
/// scaled by `2^-112`); the queries carry the `2^112` instead. Each product, and so each score,
/// is bit-identical to scoring the exactly widened values, for every finite half (stores hold
/// only finite values); queries beyond ±1e4 take the exact widening.
fn scan_images_f16(tokens: &[u16], q: usize, p: usize, queries: &[f32], b: usize, out: &mut [f32]) {
    let per_image = q * p;
    let mut buf = vec![0f32; per_image];
    let fast = queries.iter().all(|x| x.abs() <= F16_FAST_MAX_QUERY);
    let scaled: Vec<f32>;
    let queries = if fast {
        scaled = queries.iter().map(|x| x * F16_SCALE).collect();
        &scaled[..]
    } else {
        queries
    };
    if fast && b == 1 {
        // One query: widen inside the dot product (no buffer round trip).
        for (img, o) in tokens.chunks_exact(per_image).zip(out.iter_mut()) {
            *o = img
                .chunks_exact(p)
                .map(|row| dot_f16_scaled(row, queries))
                .fold(f32::NEG_INFINITY, |a, d| if d > a { d } else { a });
        }
        return;
    }
    for (img, o) in tokens.chunks_exact(per_image).zip(out.chunks_exact_mut(b)) {
        if fast {
            for (d, &h) in buf.iter_mut().zip(img) {
                *d = widen_scaled(h);
            }
        } else {
            for (d, &h) in buf.iter_mut().zip(img) {
                *d = f16_to_f32(h);
            }
        }
        scan_images(&buf, q, p, queries, b, o);
    }
}

/// Max-over-tokens scores `[b, n]` by streaming the rows once, splitting the images over
/// `threads` threads.
pub(crate) fn scan_scores(
    rows: Rows<'_>,
    q: usize,
    p: usize,
    queries: &[f32],
    b: usize,
    threads: usize,
) -> Vec<f32> {
    let per_image = q * p;
    let n = rows.len() / per_image;
    let mut image_major = vec![0f32; n * b];
    let bytes = rows.len() * rows.bytes_per_value();
    let threads = threads.min(bytes / MIN_BYTES_PER_THREAD).clamp(1, n.max(1));
    let run = |lo: usize, hi: usize, out: &mut [f32]| match rows {
        Rows::F32(s) => scan_images(&s[lo * per_image..hi * per_image], q, p, queries, b, out),
        Rows::F16(s) => scan_images_f16(&s[lo * per_image..hi * per_image], q, p, queries, b, out),
    };
    if threads <= 1 {
        run(0, n, &mut image_major);
    } else {
        let per_thread = n.div_ceil(threads);
        std::thread::scope(|scope| {
            let mut parts = image_major.chunks_mut(per_thread * b).enumerate();
            // Keep the first part for this thread.
            let first = parts.next();
            for (t, out) in parts {
                let lo = t * per_thread;
                let hi = (lo + per_thread).min(n);
                let run = &run;
                scope.spawn(move || run(lo, hi, out));
            }
            if let Some((_, out)) = first {
                run(0, per_thread.min(n), out);
            }
        });
    }
    transpose(&image_major, n, b)
}

/// Max-over-tokens scores `[b, n]` by blocked GEMM on `gallery: [N·Q, P]` (`f32`, CPU):
/// each block of gallery rows times the queries' transpose gives `[rows, b]`, reduced over
/// each image's `Q` consecutive rows by an element-wise max.
pub(crate) fn gemm_scores(gallery: &Tensor, q: usize, queries: &[f32], b: usize) -> Result<Vec<f32>> {
    let (rows, p) = gallery.dims2()?;
    let n = rows / q;
    let mut qt = vec![0f32; p * b];
    for (j, row) in queries.chunks_exact(p).enumerate() {
        for (i, v) in row.iter().enumerate() {
            qt[i * b + j] = *v;
        }
    }
    let qt = Tensor::from_vec(qt, (p, b), &Device::Cpu)?;
    let block_images = (GEMM_BLOCK_ELEMS / (b * q)).max(1);
    let mut image_major = vec![0f32; n * b];
    let mut i0 = 0;
    while i0 < n {
        let c = block_images.min(n - i0);
        let sims = gallery.narrow(0, i0 * q, c * q)?.matmul(&qt)?; // [c·q, b]
        tensor_slice(&sims, |s| {
            let out = &mut image_major[i0 * b..(i0 + c) * b];
            for (o, img) in out.chunks_exact_mut(b).zip(s.chunks_exact(q * b)) {
                o.copy_from_slice(&img[..b]);
                for row in img.chunks_exact(b).skip(1) {
                    for (x, y) in o.iter_mut().zip(row) {
                        *x = x.max(*y);
                    }
                }
            }
        })?;
        i0 += c;
    }
    Ok(transpose(&image_major, n, b))
}

/// `[n, b]` → `[b, n]`.
fn transpose(m: &[f32], n: usize, b: usize) -> Vec<f32> {
    if b == 1 {
        return m.to_vec();
    }
    let mut out = vec![0f32; n * b];
    for (i, row) in m.chunks_exact(b).enumerate() {
        for (j, s) in row.iter().enumerate() {
            out[j * n + i] = *s;
        }
    }
    out
}

/// Runs `f` on the values of a contiguous `f32` CPU tensor.
pub(crate) fn tensor_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if !t.is_contiguous() {
        return Err(IndexError::input("tensor", "not contiguous"));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(IndexError::input("tensor", "index features live on the CPU"));
    };
    let all: &[f32] = cpu.as_slice()?;
    let start = layout.start_offset();
    Ok(f(&all[start..start + t.elem_count()]))
}

// ---------------------------------------------------------------------------------------------
// Top-k.

#[inline]
fn key(s: f32) -> f32 {
    if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s
    }
}

/// The `k` best images of one score row: higher score first, ties to the lower index (NaN
/// scores rank last); `exclude` is left out. Partial selection, then a sort of the `k` kept.
pub(crate) fn top_k(scores: &[f32], k: usize, exclude: Option<usize>) -> Vec<(usize, f32)> {
    let mut idx: Vec<u32> = (0..scores.len() as u32)
        .filter(|&i| Some(i as usize) != exclude)
        .collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &u32, b: &u32| -> Ordering {
        let (sa, sb) = (key(scores[*a as usize]), key(scores[*b as usize]));
        sb.partial_cmp(&sa).unwrap_or(Ordering::Equal).then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx.into_iter()
        .map(|i| (i as usize, scores[i as usize]))
        .collect()
}

/// [`top_k`] of every row of `scores: [b, n]`, the rows split over `threads` threads.
pub(crate) fn top_k_rows(
    scores: &[f32],
    n: usize,
    k: usize,
    exclude: &[Option<usize>],
    threads: usize,
) -> Vec<Vec<(usize, f32)>> {
    let b = scores.len().checked_div(n).unwrap_or(0);
    let ex = |j: usize| exclude.get(j).copied().flatten();
    let threads = threads.min(b).min((b * n) / 8192).max(1);
    if threads <= 1 {
        return (0..b)
            .map(|j| top_k(&scores[j * n..(j + 1) * n], k, ex(j)))
            .collect();
    }
    let per = b.div_ceil(threads);
    let mut out: Vec<Vec<(usize, f32)>> = vec![Vec::new(); b];
    std::thread::scope(|scope| {
        for (t, part) in out.chunks_mut(per).enumerate() {
            let ex = &ex;
            scope.spawn(move || {
                for (i, o) in part.iter_mut().enumerate() {
                    let j = t * per + i;
                    *o = top_k(&scores[j * n..(j + 1) * n], k, ex(j));
                }
            });
        }
    });
    out
}

// ---------------------------------------------------------------------------------------------
// IEEE 754 binary16.

/// `f32` → binary16 bits, rounding to nearest even (overflow to infinity, NaN kept quiet).
pub fn f32_to_f16(value: f32) -> u16 {
    let x = value.to_bits();
    let sign = (x >> 16) & 0x8000;
    let exp = (x >> 23) & 0xff;
    let man = x & 0x007f_ffff;
    if exp == 0xff {
        let nan = if man == 0 { 0 } else { 0x0200 | (man >> 13) };
        return (sign | 0x7c00 | nan) as u16;
    }
    let e = exp as i32 - 127 + 15;
    if e >= 0x1f {
        return (sign | 0x7c00) as u16;
    }
    if e <= 0 {
        // Subnormal half (or zero).
        if e < -10 {
            return sign as u16;
        }
        let man = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half_man = man >> shift;
        let round = 1u32 << (shift - 1);
        let rest = man & ((round << 1) - 1);
        let up = rest > round || (rest == round && (half_man & 1) == 1);
        return (sign | (half_man + u32::from(up))) as u16;
    }
    let half = sign | ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    let up = rest > 0x1000 || (rest == 0x1000 && (half & 1) == 1);
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    (half + u32::from(up)) as u16
}

/// binary16 bits → `f32` (exact). Branch-free apart from a select, so loops over it vectorise.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // Exponent and mantissa moved into place and rescaled by 2^112: exact for normals and
    // subnormals (the product of an f32 subnormal and a power of two is exact here).
    let scaled = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let inf_nan = 0x7f80_0000 | ((em & 0x03ff) << 13);
    f32::from_bits(sign | if em >= 0x7c00 { inf_nan } else { scaled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_f16_to_f32(h: u16) -> f32 {
        let sign = if h & 0x8000 != 0 { -1.0f64 } else { 1.0 };
        let e = i32::from((h >> 10) & 0x1f);
        let m = f64::from(h & 0x3ff);
        let v = match e {
            0 => m * 2f64.powi(-24),
            0x1f if m == 0.0 => f64::INFINITY,
            0x1f => f64::NAN,
            _ => (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        };
        (sign * v) as f32
    }

    #[test]
    fn f16_conversions_round_trip_every_half() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            let r = reference_f16_to_f32(h);
            if r.is_nan() {
                assert!(f.is_nan(), "{h:#x}");
                continue;
            }
            assert_eq!(f.to_bits(), r.to_bits(), "{h:#x}");
            assert_eq!(f32_to_f16(f), h, "{h:#x}");
        }
    }

    #[test]
    fn f32_to_f16_rounds_to_nearest_even() {
        let next = |h: u16| f16_to_f32(h + 1);
        for h in [0x0001u16, 0x0155, 0x03fe, 0x0400, 0x3c00, 0x3c01, 0x7bfe] {
            let (a, b) = (f16_to_f32(h), next(h));
            let mid = ((f64::from(a) + f64::from(b)) / 2.0) as f32;
            let want = if h & 1 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16(mid), want, "{h:#x}");
            assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() + 1)), h + 1);
            assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() - 1)), h);
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(1e-10), 0);
        assert_eq!(f32_to_f16(f32::NAN) & 0x7e00, 0x7e00);
    }

    #[test]
    fn top_k_orders_by_score_then_index() {
        let s = [0.5, 0.9, 0.5, f32::NAN, 0.9, -1.0];
        assert_eq!(top_k(&s, 3, None), vec![(1, 0.9), (4, 0.9), (0, 0.5)]);
        assert_eq!(top_k(&s, 3, Some(1)), vec![(4, 0.9), (0, 0.5), (2, 0.5)]);
        let all: Vec<usize> = top_k(&s, 10, None).into_iter().map(|h| h.0).collect();
        assert_eq!(all, vec![1, 4, 0, 2, 5, 3]);
        assert!(top_k(&s, 0, None).is_empty());
    }

    #[test]
    fn scan_matches_naive_for_every_batch_shape() {
        let (n, q, p) = (37, 3, 21);
        let mut state = 1u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let gallery: Vec<f32> = (0..n * q * p).map(|_| rnd()).collect();
        let half: Vec<u16> = gallery.iter().map(|&x| f32_to_f16(x)).collect();
        let halved: Vec<f32> = half.iter().map(|&h| f16_to_f32(h)).collect();
        for b in 1..=9 {
            let queries: Vec<f32> = (0..b * p).map(|_| rnd()).collect();
            let naive = |g: &[f32]| -> Vec<f32> {
                let mut out = vec![0f32; b * n];
                for j in 0..b {
                    for i in 0..n {
                        out[j * n + i] = (0..q)
                            .map(|k| {
                                let row = &g[(i * q + k) * p..(i * q + k + 1) * p];
                                row.iter()
                                    .zip(&queries[j * p..(j + 1) * p])
                                    .map(|(a, b)| a * b)
                                    .sum::<f32>()
                            })
                            .fold(f32::NEG_INFINITY, f32::max);
                    }
                }
                out
            };
            let want = naive(&gallery);
            for threads in [1, 2, 3] {
                let got = scan_scores(Rows::F32(&gallery), q, p, &queries, b, threads);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "b={b}: {g} vs {w}");
                }
            }
            let got = scan_scores(Rows::F16(&half), q, p, &queries, b, 2);
            for (g, w) in got.iter().zip(&naive(&halved)) {
                assert!((g - w).abs() < 1e-5);
            }
            // The scaled widening gives exactly the scores of the exactly widened values,
            // and so does the exact path taken for huge queries.
            let exact = scan_scores(Rows::F32(&halved), q, p, &queries, b, 2);
            assert_eq!(got, exact);
            let huge: Vec<f32> = queries.iter().map(|x| x * 1e5).collect();
            let got = scan_scores(Rows::F16(&half), q, p, &huge, b, 1);
            assert_eq!(got, scan_scores(Rows::F32(&halved), q, p, &huge, b, 1));
            let t = Tensor::from_slice(&gallery, (n * q, p), &Device::Cpu).unwrap();
            let got = gemm_scores(&t, q, &queries, b).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5);
            }
        }
    }
}
