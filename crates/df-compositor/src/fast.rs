//! Small-batch CPU inference: the whole compositor as straight loops over cached weights.
//!
//! At batch 1 the compositor is a few matrix–vector products over about 8 MB of weights, but as
//! candle ops it is about a hundred tiny kernels whose dispatch and allocation cost more than the
//! arithmetic. When no weight tracks gradients, [`FastCompositor`] keeps one `f32` copy of the
//! weights and runs each query through plain loops (one pass over each weight matrix). It
//! computes the same function as the candle path (`tests/fast_path.rs` checks both agree).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Linear;
use df_encoders::nn::{gelu_erf, LayerNorm};
use df_encoders::{BranchOutput, FusedQuery};

use crate::extraction::{CrossAttention, ExtractionBlock};
use crate::{AdaptiveCompositor, FusionMode};

/// Batches up to this size take the fast path; larger ones amortise candle's GEMMs better.
pub(crate) const FAST_MAX_BATCH: usize = 4;

/// Row-major `f32` values of a frozen CPU tensor, or `None` when it tracks gradients or lives
/// elsewhere.
fn frozen_values(t: &Tensor) -> Result<Option<Vec<f32>>> {
    if t.track_op() || !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Ok(None);
    }
    Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
}

/// Dot product in 8 independent lanes (vectorisable).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// `y += a·x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// A linear layer `y = W x + b` with `W: [out, in]` row-major.
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    inp: usize,
}

impl Dense {
    fn new(l: &Linear) -> Result<Option<Self>> {
        let (Some(w), Some(b)) = (
            frozen_values(l.weight())?,
            l.bias().map(frozen_values).transpose()?.flatten(),
        ) else {
            return Ok(None);
        };
        Ok(Some(Self {
            w,
            b,
            inp: l.weight().dim(1)?,
        }))
    }

    fn out(&self) -> usize {
        self.b.len()
    }

    fn row(&self, n: usize) -> &[f32] {
        &self.w[n * self.inp..(n + 1) * self.inp]
    }

    /// `y = W x + b`.
    fn apply(&self, x: &[f32], y: &mut [f32]) {
        for (n, y) in y.iter_mut().enumerate() {
            *y = dot(self.row(n), x) + self.b[n];
        }
    }
}

struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(ln: &LayerNorm) -> Result<Option<Self>> {
        let (Some(g), Some(b)) = (frozen_values(ln.weight())?, frozen_values(ln.bias())?) else {
            return Ok(None);
        };
        Ok(Some(Self {
            g,
            b,
            eps: ln.eps() as f32,
        }))
    }

    /// In place, over the whole slice.
    fn apply(&self, x: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, g), b) in x.iter_mut().zip(&self.g).zip(&self.b) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// [`CrossAttention`] with the key/value projections folded onto the query, as there.
struct Attn {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    heads: usize,
    scale: f32,
}

impl Attn {
    fn new(a: &CrossAttention) -> Result<Option<Self>> {
        let parts = [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj].map(Dense::new);
        let [q, k, v, o] = parts;
        let (Some(q), Some(k), Some(v), Some(o)) = (q?, k?, v?, o?) else {
            return Ok(None);
        };
        Ok(Some(Self {
            q,
            k,
            v,
            o,
            heads: a.heads,
            scale: a.scale as f32,
        }))
    }

    /// `out += attend(g, tokens)`; `g: [P]`, `tokens: [T·P]`.
    fn add_to(&self, g: &[f32], tokens: &[f32], out: &mut [f32]) {
        let p = g.len();
        let (h, d) = (self.heads, p / self.heads);
        let t = tokens.len() / p;
        let mut q = vec![0f32; p];
        self.q.apply(g, &mut q);
        // u_h = scale · W_k,hᵀ q_h  ([H, P]); the key bias shifts all scores of a head equally.
        let mut u = vec![0f32; h * p];
        for (head, u) in u.chunks_exact_mut(p).enumerate() {
            for (j, &qj) in q.iter().enumerate().skip(head * d).take(d) {
                axpy(qj * self.scale, self.k.row(j), u);
            }
        }
        let mut ctx = vec![0f32; p];
        let mut probs = vec![0f32; t];
        let mut pooled = vec![0f32; p];
        for (head, u) in u.chunks_exact(p).enumerate() {
            for (s, x) in probs.iter_mut().zip(tokens.chunks_exact(p)) {
                *s = dot(u, x);
            }
            let max = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in probs.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            pooled.fill(0.0);
            for (s, x) in probs.iter().zip(tokens.chunks_exact(p)) {
                axpy(s / sum, x, &mut pooled);
            }
            for (j, c) in ctx.iter_mut().enumerate().skip(head * d).take(d) {
                *c = dot(self.v.row(j), &pooled) + self.v.b[j];
            }
        }
        for (n, out) in out.iter_mut().enumerate() {
            *out += dot(self.o.row(n), &ctx) + self.o.b[n];
        }
    }
}

struct Block {
    opposite: Option<Attn>,
    same: Option<Attn>,
    norm: Norm,
    ffn: Option<(Dense, Dense, Norm)>,
}

impl Block {
    fn new(b: &ExtractionBlock) -> Result<Option<Self>> {
        let attn = |a: &Option<CrossAttention>| -> Result<Option<Option<Attn>>> {
            match a {
                None => Ok(Some(None)),
                Some(a) => Ok(Attn::new(a)?.map(Some)),
            }
        };
        let (Some(opposite), Some(same), Some(norm)) =
            (attn(&b.opposite)?, attn(&b.same)?, Norm::new(&b.norm)?)
        else {
            return Ok(None);
        };
        let ffn = match &b.ffn {
            None => None,
            Some((fc1, fc2, ln)) => match (Dense::new(fc1)?, Dense::new(fc2)?, Norm::new(ln)?) {
                (Some(a), Some(b), Some(c)) => Some((a, b, c)),
                _ => return Ok(None),
            },
        };
        Ok(Some(Self {
            opposite,
            same,
            norm,
            ffn,
        }))
    }

    /// Context feature `c: [P]` of global `g: [P]` with its own and the other branch's tokens.
    fn apply(&self, g: &[f32], own: &[f32], other: &[f32]) -> Vec<f32> {
        let mut c = g.to_vec();
        if let Some(a) = &self.opposite {
            a.add_to(g, other, &mut c);
        }
        if let Some(a) = &self.same {
            a.add_to(g, own, &mut c);
        }
        self.norm.apply(&mut c);
        if let Some((fc1, fc2, norm)) = &self.ffn {
            let mut h = vec![0f32; fc1.out()];
            fc1.apply(&c, &mut h);
            h.iter_mut().for_each(|v| *v = gelu_erf(*v));
            for (n, c) in c.iter_mut().enumerate() {
                *c += dot(fc2.row(n), &h) + fc2.b[n];
            }
            norm.apply(&mut c);
        }
        c
    }
}

/// The compositor's weights as plain `f32` rows, for small inference batches on the CPU.
pub(crate) struct FastCompositor {
    di: Block,
    gm: Block,
    fc1: Dense,
    fc2: Dense,
    gate: bool,
}

impl std::fmt::Debug for FastCompositor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastCompositor")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl FastCompositor {
    /// `None` unless every weight is a frozen CPU `f32` tensor and the fusion has an MLP.
    pub(crate) fn new(c: &AdaptiveCompositor) -> Result<Option<Self>> {
        let (Some(fg), Some((fc1, fc2))) = (&c.fine_grained, &c.fusion.mlp) else {
            return Ok(None);
        };
        let gate = match c.fusion.mode {
            FusionMode::Softmax => false,
            FusionMode::Gate => true,
            FusionMode::Fixed { .. } => return Ok(None),
        };
        match (
            Block::new(&fg.di)?,
            Block::new(&fg.gm)?,
            Dense::new(fc1)?,
            Dense::new(fc2)?,
        ) {
            (Some(di), Some(gm), Some(fc1), Some(fc2)) => Ok(Some(Self {
                di,
                gm,
                fc1,
                fc2,
                gate,
            })),
            _ => Ok(None),
        }
    }

    /// The fused query, or `None` when the inputs do not fit the fast path (batch size, device,
    /// dtype, gradient tracking).
    pub(crate) fn compose(&self, di: &BranchOutput, gm: &BranchOutput) -> Result<Option<FusedQuery>> {
        let inputs = [&di.global, &di.tokens, &gm.global, &gm.tokens];
        let (b, p) = di.global.dims2()?;
        if b > FAST_MAX_BATCH
            || inputs
                .iter()
                .any(|t| t.track_op() || !t.device().is_cpu() || t.dtype() != DType::F32)
            || gm.global.dims() != [b, p]
            || di.tokens.rank() != 3
            || di.tokens.dims() != gm.tokens.dims()
            || di.tokens.dims()[..1] != [b]
            || di.tokens.dim(2)? != p
        {
            return Ok(None);
        }
        let [q_di, z_di, q_gm, z_gm] = inputs.map(|t| t.flatten_all().and_then(|t| t.to_vec1::<f32>()));
        let (q_di, z_di, q_gm, z_gm) = (q_di?, z_di?, q_gm?, z_gm?);
        let t = z_di.len() / (b * p);
        let (mut feature, mut weights) = (Vec::with_capacity(b * p), Vec::with_capacity(2 * b));
        for i in 0..b {
            let (qd, qg) = (&q_di[i * p..(i + 1) * p], &q_gm[i * p..(i + 1) * p]);
            let (zd, zg) = (
                &z_di[i * t * p..(i + 1) * t * p],
                &z_gm[i * t * p..(i + 1) * t * p],
            );
            let mut x = self.di.apply(qd, zd, zg);
            x.extend(self.gm.apply(qg, zg, zd));
            let mut hidden = vec![0f32; self.fc1.out()];
            self.fc1.apply(&x, &mut hidden);
            hidden.iter_mut().for_each(|v| *v = gelu_erf(*v));
            let mut logits = vec![0f32; self.fc2.out()];
            self.fc2.apply(&hidden, &mut logits);
            let mixed: Vec<f32> = if self.gate {
                let g: Vec<f32> = logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
                let mean = g.iter().sum::<f32>() / g.len() as f32;
                weights.extend([mean, 1.0 - mean]);
                g.iter()
                    .zip(qd)
                    .zip(qg)
                    .map(|((g, a), b)| a * g + b * (1.0 - g))
                    .collect()
            } else {
                let m = logits[0].max(logits[1]);
                let (e0, e1) = ((logits[0] - m).exp(), (logits[1] - m).exp());
                let (w0, w1) = (e0 / (e0 + e1), e1 / (e0 + e1));
                weights.extend([w0, w1]);
                qd.iter().zip(qg).map(|(a, b)| w0 * a + w1 * b).collect()
            };
            let norm = mixed.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            feature.extend(mixed.iter().map(|v| v / norm));
        }
        Ok(Some(FusedQuery {
            feature: Tensor::from_vec(feature, (b, p), &Device::Cpu)?,
            weights: Tensor::from_vec(weights, (b, 2), &Device::Cpu)?,
        }))
    }
}
