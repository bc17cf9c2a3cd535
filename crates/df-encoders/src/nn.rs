//! Small building blocks shared by the ViT and the Q-Former.
//!
//! candle's fused LayerNorm and softmax kernels have no backward pass, so each block here picks
//! the fused kernel only when no gradient can flow through its inputs (frozen towers, inference)
//! and the differentiable composition of basic ops otherwise.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::{Activation, Linear, VarBuilder};

/// LayerNorm over the last dimension, differentiable when its inputs track gradients.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of width `size` under `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    /// The scale `[size]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift `[size]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The variance epsilon.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if needs_grad(&[xs, &self.weight, &self.bias]) {
            candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
        } else {
            candle_nn::ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// True when any tensor is a variable or depends on one.
pub fn needs_grad(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// Softmax over the last dimension, differentiable when the input tracks gradients.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// Scaled dot-product attention.
///
/// `q: [B, h, Sq, d]`, `k, v: [B, h, Sk, d]`, `mask`: additive, broadcastable to `[B, h, Sq, Sk]`.
/// Returns `[B, Sq, h·d]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let probs = scaled_masked_softmax(&q.matmul(&k.t()?)?, scale, mask)?;
    let (b, h, sq, d) = q.dims4()?;
    probs.matmul(v)?.transpose(1, 2)?.reshape((b, sq, h * d))
}

/// `softmax(scores · scale + mask)` over the last dimension; `mask` broadcastable to `scores`.
///
/// At inference on the CPU (f32, `scores: [B, h, Sq, Sk]`, `mask: [B, 1, 1, Sk]`) this is
/// one fused pass with a vectorisable `exp`; otherwise the composition of candle ops.
pub fn scaled_masked_softmax(scores: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let fused = scores.device().is_cpu()
        && scores.dtype() == DType::F32
        && scores.rank() == 4
        && !scores.track_op()
        && mask.is_none_or(|m| {
            !m.track_op()
                && m.dtype() == DType::F32
                && m.rank() == 4
                && m.dims()[1..3] == [1, 1]
                && m.dim(0).ok() == scores.dim(0).ok()
                && m.dim(3).ok() == scores.dim(3).ok()
        });
    if !fused {
        let scores = (scores * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        return softmax_last_dim(&scores);
    }
    let op = MaskedSoftmax { scale: scale as f32 };
    match mask {
        Some(m) => scores.contiguous()?.apply_op2_no_bwd(&m.contiguous()?, &op),
        None => {
            let (b, _, _, sk) = scores.dims4()?;
            let zeros = Tensor::zeros((b, 1, 1, sk), DType::F32, scores.device())?;
            scores.contiguous()?.apply_op2_no_bwd(&zeros, &op)
        }
    }
}

/// Fused `softmax(x · scale + mask)` over the last dimension of `[B, h, Sq, Sk]` with a
/// `[B, 1, 1, Sk]` additive mask.
#[derive(Debug, Clone, Copy)]
struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "df-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "scores")?;
        let mask = contiguous_f32(s2, l2, "mask")?;
        let (_, h, sq, sk) = l1.shape().dims4()?;
        let per_item = h * sq * sk;
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, sk, PAR_MIN_COSTLY, |offset, dst| {
            for (r, d) in dst.chunks_exact_mut(sk).enumerate() {
                let start = offset + r * sk;
                let m = &mask[(start / per_item) * sk..][..sk];
                let src = &x[start..start + sk];
                for ((d, &s), &m) in d.iter_mut().zip(src).zip(m) {
                    *d = s * self.scale + m;
                }
                let max = lanes_max(d);
                for d in d.iter_mut() {
                    *d = exp_f32(*d - max);
                }
                let inv = 1.0 / lanes_sum(d);
                for d in d.iter_mut() {
                    *d *= inv;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Maximum of a slice (−∞ when empty), in 8 independent lanes so that it vectorises.
#[inline(always)]
fn lanes_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(rest) {
        m = if x > m { x } else { m };
    }
    m
}

/// Sum of a slice in 8 independent lanes.
#[inline(always)]
fn lanes_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().chain(rest).sum()
}

/// `exp(x)` for `x ≤ 0` (softmax after subtracting the max), vectorisable: Cephes' `expf`
/// range reduction and polynomial (about 1 ulp); 0 below -87.3.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = if x > -87.3 { x } else { -87.3 };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2ⁿ from the integer bits of `t`.
    let pow2 = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    if x > -87.3 {
        e * pow2
    } else {
        0.0
    }
}

/// Splits `[B, S, h·d]` into heads `[B, h, S, d]` (contiguous).
pub fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, w) = xs.dims3()?;
    xs.reshape((b, s, heads, w / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Splits `[B, S, n·h·d]` (`n` stacked projections) into `n` tensors of heads
/// `[B, h, S, d]`, each contiguous (one copy each).
pub fn split_heads_stacked(xs: &Tensor, n: usize, heads: usize) -> Result<Vec<Tensor>> {
    let (b, s, w) = xs.dims3()?;
    let all = xs.reshape((b, s, n, heads, w / (n * heads)))?;
    (0..n)
        .map(|i| all.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous())
        .collect()
}

/// Stacks linear layers that read the same input into one (`[W₁; W₂; …]`, biases likewise)
/// and returns it with views of the parts into its storage, or `None` when a weight tracks
/// gradients (a trainable `Var` must stay its own tensor), a bias is missing or the parts
/// differ in input width or dtype.
pub fn stack_linears(parts: &[&Linear]) -> Result<Option<(Linear, Vec<Linear>)>> {
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let (k, dtype) = (first.weight().dim(1)?, first.weight().dtype());
    let ok = parts.iter().all(|l| {
        !l.weight().track_op()
            && l.weight().dim(1).ok() == Some(k)
            && l.weight().dtype() == dtype
            && l.bias().is_some_and(|b| !b.track_op() && b.dtype() == dtype)
    });
    if !ok {
        return Ok(None);
    }
    let weights: Vec<&Tensor> = parts.iter().map(|l| l.weight()).collect();
    let biases: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias()).collect();
    let (w, b) = (Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?);
    let mut views = Vec::with_capacity(parts.len());
    let mut start = 0;
    for part in parts {
        let n = part.weight().dim(0)?;
        views.push(Linear::new(w.narrow(0, start, n)?, Some(b.narrow(0, start, n)?)));
        start += n;
    }
    Ok(Some((Linear::new(w, Some(b)), views)))
}

/// The largest absolute elementwise difference `max |a − b|` of two tensors of one shape, in
/// `f32` (for parity checks against a reference implementation).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("max_abs_diff: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar()
}

/// Turns a `[B, S]` 0/1 mask (any dtype) into the additive `[B, 1, 1, S]` mask BERT uses
/// (`0` kept, `-10000` masked).
pub fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((1.0 - m)? * -10000.0)?.to_dtype(dtype)?.reshape((b, 1, 1, s))
}

/// L2-normalises the last dimension (as `torch.nn.functional.normalize`, eps 1e-12).
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    xs.broadcast_div(&norm)
}

// ------------------------------------------------------------------------------------------------
// Fused linear epilogues (inference, CPU, f32).
//
// `candle_nn::Linear` adds its bias in a separate elementwise pass, and the activation and the
// residual add are more passes. On the CPU, elementwise ops over 64K elements or more are handed
// to candle's barrier thread pool, whose worker then spins for a while and competes with the
// GEMM threads that run next (on a 2-core machine this slowed the Q-Former by about 30%). The
// epilogue below does `act(x·Wᵀ + b) [+ residual]` in one pass on our own threads.

/// Elements from which an elementwise pass is split over threads, by cost per element:
/// spawning costs tens of microseconds, a GELU about a nanosecond per element and a bias
/// add a tenth of that.
const PAR_MIN_CHEAP: usize = 1 << 20;
const PAR_MIN_COSTLY: usize = 1 << 16;

/// Rows up to which a linear layer runs as `W·xᵀ` (transposed output), which the GEMM kernel
/// handles about 15-35% faster than `x·Wᵀ` for few rows.
const TRANSPOSED_GEMM_MAX_ROWS: usize = 128;

/// `z = act(y + bias) (+ residual)` for a logical `[m, n]` matrix `y`, bias along `n`.
///
/// `y` is either row-major (`[m, n]`, `transposed: false`) or given as the row-major `[n, m]`
/// storage of `yᵀ` (`transposed: true`). The output is row-major `[m, n]`, or `[n, m]` (`zᵀ`)
/// when `keep_transposed` (then no residual).
#[derive(Debug, Clone, Copy)]
struct Epilogue {
    gelu: bool,
    transposed: bool,
    keep_transposed: bool,
}

impl Epilogue {
    #[inline(always)]
    fn act(&self, v: f32) -> f32 {
        if self.gelu {
            gelu_erf(v)
        } else {
            v
        }
    }

    fn run(&self, y: &[f32], bias: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
        let n = bias.len();
        let m = y.len() / n.max(1);
        let mut out = vec![0f32; y.len()];
        let min_len = if self.gelu { PAR_MIN_COSTLY } else { PAR_MIN_CHEAP };
        if !self.transposed {
            par_rows(&mut out, n, min_len, |offset, dst| {
                let src = &y[offset..offset + dst.len()];
                for (d, s) in dst.chunks_exact_mut(n).zip(src.chunks_exact(n)) {
                    if self.gelu {
                        for ((d, &s), &b) in d.iter_mut().zip(s).zip(bias) {
                            *d = gelu_erf(s + b);
                        }
                    } else {
                        for ((d, &s), &b) in d.iter_mut().zip(s).zip(bias) {
                            *d = s + b;
                        }
                    }
                }
                if let Some(r) = residual {
                    let len = dst.len();
                    for (d, &r) in dst.iter_mut().zip(&r[offset..offset + len]) {
                        *d += r;
                    }
                }
            });
        } else if self.keep_transposed {
            par_rows(&mut out, m, min_len, |offset, dst| {
                let src = &y[offset..offset + dst.len()];
                let j0 = offset / m.max(1);
                for ((d, s), &b) in dst.chunks_exact_mut(m).zip(src.chunks_exact(m)).zip(&bias[j0..]) {
                    if self.gelu {
                        for (d, &s) in d.iter_mut().zip(s) {
                            *d = gelu_erf(s + b);
                        }
                    } else {
                        for (d, &s) in d.iter_mut().zip(s) {
                            *d = s + b;
                        }
                    }
                }
            });
        } else {
            // Tiled transpose: out[i, j] = act(y[j * m + i] + b[j]) (+ r[i, j]).
            const T: usize = 16;
            par_rows(&mut out, n, min_len, |offset, dst| {
                let i0 = offset / n;
                let rows = dst.len() / n;
                for ib in (0..rows).step_by(T) {
                    let ie = (ib + T).min(rows);
                    for jb in (0..n).step_by(T) {
                        let je = (jb + T).min(n);
                        for i in ib..ie {
                            let d = &mut dst[i * n..(i + 1) * n];
                            for j in jb..je {
                                d[j] = self.act(y[j * m + i0 + i] + bias[j]);
                            }
                        }
                    }
                }
                if let Some(r) = residual {
                    let len = dst.len();
                    for (d, &r) in dst.iter_mut().zip(&r[offset..offset + len]) {
                        *d += r;
                    }
                }
            });
        }
        out
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("epilogue: {what} must be contiguous f32"),
    }
}

impl CustomOp2 for Epilogue {
    fn name(&self) -> &'static str {
        "df-linear-epilogue"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "input")?;
        let b = contiguous_f32(s2, l2, "bias")?;
        let (r, c) = l1.shape().dims2()?;
        let shape = if self.transposed == self.keep_transposed {
            (r, c)
        } else {
            (c, r)
        };
        Ok((CpuStorage::F32(self.run(y, b, None)), shape.into()))
    }
}

impl CustomOp3 for Epilogue {
    fn name(&self) -> &'static str {
        "df-linear-epilogue-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "input")?;
        let b = contiguous_f32(s2, l2, "bias")?;
        let r = contiguous_f32(s3, l3, "residual")?;
        let (r0, c0) = l1.shape().dims2()?;
        let shape = if self.transposed { (c0, r0) } else { (r0, c0) };
        Ok((CpuStorage::F32(self.run(y, b, Some(r))), shape.into()))
    }
}

/// Splits `out` into whole rows of `row` elements over the candle thread count and calls
/// `f(offset, chunk)` for each (on the calling thread below `min_len` elements).
fn par_rows(out: &mut [f32], row: usize, min_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = candle_core::utils::get_num_threads().max(1);
    if threads == 1 || out.len() < min_len || row == 0 {
        return f(0, out);
    }
    let rows = out.len() / row;
    let per = rows.div_ceil(threads) * row;
    std::thread::scope(|scope| {
        let mut chunks = out.chunks_mut(per).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(i * per, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}

/// `x·Φ(x)` with a rational `erf` approximation (Eigen's `generic_fast_erf_float`, error a
/// few ulp), which vectorises where `libm::erff` does not.
#[inline(always)]
pub fn gelu_erf(v: f32) -> f32 {
    let x = (v * std::f32::consts::FRAC_1_SQRT_2).clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_474e-2;
    0.5 * v * (1.0 + p / q)
}

/// True when `linear` applied to `xs` (and `residual`) can take the fused CPU inference path.
fn fusable(
    linear: &Linear,
    xs: &Tensor,
    act: Option<Activation>,
    residual: Option<&Tensor>,
    out_dims: &[usize],
) -> bool {
    let w = linear.weight();
    matches!(act, None | Some(Activation::Gelu))
        && xs.device().is_cpu()
        && xs.dtype() == DType::F32
        && w.dtype() == DType::F32
        && !needs_grad(&[xs, w])
        && linear
            .bias()
            .is_some_and(|b| !b.track_op() && b.dtype() == DType::F32)
        && residual.is_none_or(|r| !r.track_op() && r.dtype() == DType::F32 && r.dims() == out_dims)
}

/// `act(x·Wᵀ + b) (+ residual)` for a `Linear`, fused into one pass after the GEMM on the CPU
/// at inference (f32, no gradient tracking, a bias, activation `None` or exact GELU); the plain
/// composition of ops otherwise.
pub fn linear_epilogue(
    linear: &Linear,
    xs: &Tensor,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let w = linear.weight();
    let dims = xs.dims();
    let Some((&k, lead)) = dims.split_last() else {
        return linear.forward(xs);
    };
    let out_dims: Vec<usize> = lead.iter().copied().chain([w.dim(0)?]).collect();
    if !fusable(linear, xs, act, residual, &out_dims) {
        let mut ys = linear.forward(xs)?;
        if let Some(act) = act {
            ys = ys.apply(&act)?;
        }
        return match residual {
            Some(r) => ys + r,
            None => Ok(ys),
        };
    }
    let bias = linear.bias().expect("checked by fusable");
    let m: usize = lead.iter().product();
    let x2 = xs.reshape((m, k))?;
    let transposed = m <= TRANSPOSED_GEMM_MAX_ROWS;
    let ys = if transposed {
        w.matmul(&x2.t()?)?
    } else {
        x2.contiguous()?.matmul(&w.t()?)?
    };
    let op = Epilogue {
        gelu: act.is_some(),
        transposed,
        keep_transposed: false,
    };
    let ys = match residual {
        Some(r) => ys.apply_op3_no_bwd(bias, &r.contiguous()?, &op)?,
        None => ys.apply_op2_no_bwd(bias, &op)?,
    };
    ys.reshape(out_dims)
}

/// BERT/ViT feed-forward `fc2(act(fc1(x))) + residual`, fused as [`linear_epilogue`] does; for
/// few rows the hidden activations stay transposed between the two GEMMs.
pub fn feed_forward(
    fc1: &Linear,
    fc2: &Linear,
    act: Activation,
    xs: &Tensor,
    residual: &Tensor,
) -> Result<Tensor> {
    let dims = xs.dims();
    let Some((&k, lead)) = dims.split_last() else {
        return fc2.forward(&fc1.forward(xs)?.apply(&act)?)? + residual;
    };
    let m: usize = lead.iter().product();
    let hidden: Vec<usize> = lead.iter().copied().chain([fc1.weight().dim(0)?]).collect();
    let out_dims: Vec<usize> = lead.iter().copied().chain([fc2.weight().dim(0)?]).collect();
    if m > TRANSPOSED_GEMM_MAX_ROWS
        || !fusable(fc1, xs, Some(act), None, &hidden)
        || !fusable(fc2, xs, None, Some(residual), &out_dims)
    {
        let h = linear_epilogue(fc1, xs, Some(act), None)?;
        return linear_epilogue(fc2, &h, None, Some(residual));
    }
    let (b1, b2) = (fc1.bias().expect("fusable"), fc2.bias().expect("fusable"));
    let h_t = fc1.weight().matmul(&xs.reshape((m, k))?.t()?)?.apply_op2_no_bwd(
        b1,
        &Epilogue {
            gelu: true,
            transposed: true,
            keep_transposed: true,
        },
    )?;
    let o_t = fc2.weight().matmul(&h_t)?;
    o_t.apply_op3_no_bwd(
        b2,
        &residual.contiguous()?,
        &Epilogue {
            gelu: false,
            transposed: true,
            keep_transposed: false,
        },
    )?
    .reshape(out_dims)
}
