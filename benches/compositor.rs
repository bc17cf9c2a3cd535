//! Throughput of DetailFusion's Adaptive Feature Compositor (`df_compositor::AdaptiveCompositor`)
//! at the paper's sizes: `P` = 256, 8 heads, FFN 1024, fusion hidden 256, softmax fusion, and
//! 32 fine-grained tokens per branch (`CompositorConfig::default()`).
//!
//! - `compositor/forward/b{1,32,256}`: inference. The weights are created in a `VarMap` and then
//!   detached into a plain `VarBuilder`, so nothing tracks gradients and the fused LayerNorm /
//!   softmax kernels run.
//! - `compositor/fwd_bwd/b{1,32,256}`: one training step of stage 3 without the optimizer:
//!   forward with `Var` weights, `loss = Σ fused ⊙ R` (`R` a fixed random `[B, P]` tensor),
//!   `loss.backward()`.
//!
//! Inputs (the frozen branch outputs of stage 3): L2-normalised random globals `[B, 256]` and
//! random tokens `[B, 32, 256]` for each branch. Throughput is reported in queries (elements)
//! per second.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench --bench compositor` (or `tools/bench_compositor.sh`,
//! which also times the PyTorch reference `tools/bench_compositor_torch.py`).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use df_compositor::{AdaptiveCompositor, CompositorConfig};
use df_encoders::{BranchOutput, Compositor};

/// Fine-grained tokens per branch (the 32 Q-Former queries).
const TOKENS: usize = 32;
/// Batch sizes.
const BATCHES: [usize; 3] = [1, 32, 256];

/// A branch output with random contents: unit-norm global `[B, P]`, tokens `[B, T, P]`, and a
/// dummy `pass1_queries` (the compositor does not read it).
fn branch(b: usize, p: usize, dev: &Device) -> anyhow::Result<BranchOutput> {
    let global = Tensor::randn(0f32, 1.0, (b, p), dev)?;
    let norm = global.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(BranchOutput {
        global: global.broadcast_div(&norm)?,
        tokens: Tensor::randn(0f32, 1.0, (b, TOKENS, p), dev)?,
        pass1_queries: Tensor::zeros(1, DType::F32, dev)?,
    })
}

/// Compositor weights by name.
type Weights = HashMap<String, Tensor>;

/// The compositor with `Var` weights (trainable), the same weights detached (inference), and
/// the detached weights by name.
fn compositors(
    cfg: &CompositorConfig,
    dev: &Device,
) -> anyhow::Result<(AdaptiveCompositor, AdaptiveCompositor, Weights)> {
    let varmap = VarMap::new();
    let trainable = AdaptiveCompositor::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    assert!(tensors.values().all(|t| !t.track_op()));
    let frozen = AdaptiveCompositor::new(cfg, VarBuilder::from_tensors(tensors.clone(), DType::F32, dev))?;
    Ok((trainable, frozen, tensors))
}

/// Measurement time and sampling mode for a batch size.
fn timing(batch: usize) -> (Duration, SamplingMode) {
    if batch >= 256 {
        (Duration::from_secs(3), SamplingMode::Flat)
    } else {
        (Duration::from_secs(2), SamplingMode::Auto)
    }
}

fn bench_compositor(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = CompositorConfig::default();
    let p = cfg.hidden_size;
    let (trainable, frozen, weights) = compositors(&cfg, &dev).expect("random compositor");
    let absorbed = std::env::var_os("DF_BENCH_ABSORBED")
        .is_some()
        .then(|| absorbed::Compositor::new(&cfg, &weights).expect("absorbed prototype"));

    let mut group = c.benchmark_group("compositor");
    group.sample_size(10).warm_up_time(Duration::from_millis(500));
    for batch in BATCHES {
        let di = branch(batch, p, &dev).expect("DI branch");
        let gm = branch(batch, p, &dev).expect("GM branch");
        let (time, mode) = timing(batch);
        group
            .measurement_time(time)
            .sampling_mode(mode)
            .throughput(Throughput::Elements(batch as u64));

        let out = frozen.compose(&di, &gm).expect("compose");
        assert_eq!(out.feature.dims(), [batch, p]);
        assert_eq!(out.weights.dims(), [batch, 2]);
        assert!(!out.feature.track_op(), "inference path tracks gradients");
        group.bench_with_input(
            BenchmarkId::new("forward", format!("b{batch}")),
            &(&di, &gm),
            |b, (di, gm)| {
                b.iter(|| black_box(frozen.compose(black_box(di), black_box(gm)).expect("compose")))
            },
        );
        if let Some(proto) = &absorbed {
            let diff = (proto.forward(&di, &gm).expect("absorbed") - &out.feature)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert!(
                diff < 1e-4,
                "absorbed prototype differs from the compositor by {diff}"
            );
            group.bench_with_input(
                BenchmarkId::new("forward_absorbed", format!("b{batch}")),
                &(&di, &gm),
                |b, (di, gm)| {
                    b.iter(|| black_box(proto.forward(black_box(di), black_box(gm)).expect("absorbed")))
                },
            );
        }

        let r = Tensor::randn(0f32, 1.0, (batch, p), &dev).expect("R");
        let step = || -> candle_core::Result<candle_core::backprop::GradStore> {
            let fused = trainable
                .compose(&di, &gm)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (fused.feature * &r)?.sum_all()?.backward()
        };
        let grads = step().expect("backward");
        assert!(trainable.compose(&di, &gm).expect("compose").feature.track_op());
        assert!(grads.get_ids().count() > 0, "no gradients");
        group.bench_function(BenchmarkId::new("fwd_bwd", format!("b{batch}")), |b| {
            b.iter(|| black_box(step().expect("backward")))
        });
    }
    group.finish();
}

/// A prototype, not the crate's code: the same inference forward with the single-query
/// attention's key and value projections folded onto the query side (exact up to rounding).
///
/// With one query per attention, `q'·(W_k x_t + b_k)` per head is `(W_kᵀ q'_h)·x_t` plus a
/// constant that softmax drops, and `Σ_t p_t (W_v x_t + b_v)` is `W_v (Σ_t p_t x_t) + b_v`: the
/// `T × P × P` projections of the tokens become `P × P` work per query (≈ 10× fewer FLOPs at
/// `T` = 32). Enabled with `DF_BENCH_ABSORBED=1` as `compositor/forward_absorbed/b*`.
mod absorbed {
    use candle_core::{Module, Result, Tensor};
    use candle_nn::Linear;
    use df_compositor::CompositorConfig;
    use df_encoders::nn::{l2_normalize, softmax_last_dim};
    use df_encoders::BranchOutput;

    use super::Weights;

    fn linear(w: &Weights, name: &str) -> Result<Linear> {
        let get = |s: &str| {
            w.get(&format!("{name}.{s}"))
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("no {name}.{s}")))
        };
        Ok(Linear::new(get("weight")?, Some(get("bias")?)))
    }

    struct Attention {
        q_proj: Linear,
        /// `W_k` as `[H, d, P]`.
        wk: Tensor,
        /// `W_vᵀ` per head, `[H, P, d]`.
        wv_t: Tensor,
        bv: Tensor,
        out_proj: Linear,
        heads: usize,
        scale: f64,
    }

    impl Attention {
        fn new(w: &Weights, name: &str, p: usize, heads: usize) -> Result<Self> {
            let d = p / heads;
            let wk = w[&format!("{name}.k_proj.weight")].reshape((heads, d, p))?;
            let wv_t = w[&format!("{name}.v_proj.weight")]
                .reshape((heads, d, p))?
                .transpose(1, 2)?
                .contiguous()?;
            Ok(Self {
                q_proj: linear(w, &format!("{name}.q_proj"))?,
                wk,
                wv_t,
                bv: w[&format!("{name}.v_proj.bias")].clone(),
                out_proj: linear(w, &format!("{name}.out_proj"))?,
                heads,
                scale: (d as f64).powf(-0.5),
            })
        }

        /// `query: [B, P]`, `tokens: [B, T, P]`, `tokens_t: [B, P, T]` → `[B, P]`.
        fn forward(&self, query: &Tensor, tokens: &Tensor, tokens_t: &Tensor) -> Result<Tensor> {
            let (b, p) = query.dims2()?;
            let (h, d) = (self.heads, p / self.heads);
            let q = self
                .q_proj
                .forward(query)?
                .reshape((b, h, d))?
                .transpose(0, 1)?
                .contiguous()?; // [H, B, d]
            let u = (q.matmul(&self.wk)?.transpose(0, 1)?.contiguous()? * self.scale)?; // [B, H, P]
            let probs = softmax_last_dim(&u.matmul(tokens_t)?)?; // [B, H, T]
            let pooled = probs.matmul(tokens)?.transpose(0, 1)?.contiguous()?; // [H, B, P]
            let ctx = pooled.matmul(&self.wv_t)?.transpose(0, 1)?.reshape((b, p))?; // [B, P]
            self.out_proj.forward(&ctx.broadcast_add(&self.bv)?)
        }
    }

    struct Block {
        opposite: Attention,
        same: Attention,
        norm: (Tensor, Tensor),
        fc1: Linear,
        fc2: Linear,
        ffn_norm: (Tensor, Tensor),
    }

    pub struct Compositor {
        di: Block,
        gm: Block,
        fc1: Linear,
        fc2: Linear,
        eps: f32,
    }

    impl Compositor {
        pub fn new(cfg: &CompositorConfig, w: &Weights) -> Result<Self> {
            let (p, h) = (cfg.hidden_size, cfg.num_attention_heads);
            let ln = |n: &str| -> (Tensor, Tensor) {
                (w[&format!("{n}.weight")].clone(), w[&format!("{n}.bias")].clone())
            };
            let block = |b: &str| -> Result<Block> {
                let n = format!("fine_grained.{b}");
                Ok(Block {
                    opposite: Attention::new(w, &format!("{n}.opposite"), p, h)?,
                    same: Attention::new(w, &format!("{n}.same"), p, h)?,
                    norm: ln(&format!("{n}.norm")),
                    fc1: linear(w, &format!("{n}.ffn.fc1"))?,
                    fc2: linear(w, &format!("{n}.ffn.fc2"))?,
                    ffn_norm: ln(&format!("{n}.ffn_norm")),
                })
            };
            Ok(Self {
                di: block("di")?,
                gm: block("gm")?,
                fc1: linear(w, "fusion.mlp.fc1")?,
                fc2: linear(w, "fusion.mlp.fc2")?,
                eps: cfg.layer_norm_eps as f32,
            })
        }

        fn block(
            &self,
            blk: &Block,
            q: &Tensor,
            own: (&Tensor, &Tensor),
            other: (&Tensor, &Tensor),
        ) -> Result<Tensor> {
            let x =
                ((q + blk.opposite.forward(q, other.0, other.1)?)? + blk.same.forward(q, own.0, own.1)?)?;
            let c = candle_nn::ops::layer_norm(&x, &blk.norm.0, &blk.norm.1, self.eps)?;
            let hdn = blk.fc2.forward(&blk.fc1.forward(&c)?.gelu_erf()?)?;
            candle_nn::ops::layer_norm(&(c + hdn)?, &blk.ffn_norm.0, &blk.ffn_norm.1, self.eps)
        }

        /// The fused feature `[B, P]`.
        pub fn forward(&self, di: &BranchOutput, gm: &BranchOutput) -> Result<Tensor> {
            let t_di = (&di.tokens, &di.tokens.transpose(1, 2)?);
            let t_gm = (&gm.tokens, &gm.tokens.transpose(1, 2)?);
            let c_di = self.block(&self.di, &di.global, t_di, t_gm)?;
            let c_gm = self.block(&self.gm, &gm.global, t_gm, t_di)?;
            let logits = self
                .fc2
                .forward(&self.fc1.forward(&Tensor::cat(&[&c_di, &c_gm], 1)?)?.gelu_erf()?)?;
            let a = softmax_last_dim(&logits)?;
            let mixed = (di.global.broadcast_mul(&a.narrow(1, 0, 1)?)?
                + gm.global.broadcast_mul(&a.narrow(1, 1, 1)?)?)?;
            l2_normalize(&mixed)
        }
    }
}

criterion_group!(benches, bench_compositor);
criterion_main!(benches);
