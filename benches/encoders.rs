//! Inference benchmarks of the df-encoders towers at BLIP-2 sizes, with random weights.
//!
//! - `qformer/image_mode/b{1,32}`: the full Q-Former (hidden 768, 12 layers, 32 queries)
//!   cross-attending `[B, 257, 1408]` image features (`HybridEncoder::image_features`);
//! - `qformer/composed_query/b{1,32}`: the SPRC two-pass composed query with texts padded to 32
//!   tokens (6 to 32 real tokens; 26 at batch 1) over the same image features
//!   (`HybridEncoder::composed_query`);
//! - `qformer/composed_query_nopad/b{1,32}`: the same with every text 32 real tokens long, so
//!   that skipping padding cannot help;
//! - `vit_g_depth{N}/b{1,8}`: the vision transformer at ViT-g width (1408, 16 heads, MLP 6144)
//!   with `N` blocks instead of 39, on `[B, 3, 224, 224]` pixels (`VisionModel::forward`).
//!
//! Weights are created in a `VarMap` and then detached into a plain `VarBuilder`, so the
//! towers run their inference path (fused LayerNorm/softmax, no gradient tracking).
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench --bench encoders` (or `tools/bench_encoders.sh`, which
//! also times the PyTorch reference). Filters work as usual: `cargo bench --bench encoders --
//! composed`. `DF_BENCH_VIT_DEPTH` sets `N` (default 4).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use df_encoders::{Blip2Config, HybridEncoder, VisionConfig, VisionModel};

/// Text length of the composed-query benchmarks.
const TEXT_LEN: usize = 32;
/// Image tokens of ViT-g/14 at 224 px.
const IMAGE_TOKENS: usize = 257;

/// Builds a model with random weights in a `VarMap`, then rebuilds it from detached copies of
/// those tensors (same storage) so that no weight is a `Var`.
fn frozen<T>(
    dev: &Device,
    build: impl Fn(VarBuilder<'static>) -> candle_core::Result<T>,
) -> anyhow::Result<T> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    assert!(tensors.values().all(|t| !t.track_op()));
    Ok(build(VarBuilder::from_tensors(tensors, DType::F32, dev))?)
}

/// `[B, L]` random word ids (`[CLS]`-like 101 first, 0 after the end) and the 0/1 mask.
/// Lengths are `(20 + 7i) % (L - 5) + 6`, from 6 to `L` over the batch (26 for item 0), or all
/// `L` with `full`. `tools/bench_encoders_torch.py` builds the same.
fn text(b: usize, l: usize, full: bool, dev: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let mut ids = vec![0u32; b * l];
    let mut mask = vec![0u32; b * l];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..b {
        let len = if full { l } else { (20 + 7 * i) % (l - 5) + 6 };
        for j in 0..len.min(l) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ids[i * l + j] = if j == 0 {
                101
            } else {
                1000 + ((state >> 33) % 29000) as u32
            };
            mask[i * l + j] = 1;
        }
    }
    Ok((
        Tensor::from_vec(ids, (b, l), dev)?,
        Tensor::from_vec(mask, (b, l), dev)?,
    ))
}

/// Measurement time and sampling mode for a batch size: every iteration takes 50 ms or more,
/// so all samples run the same number of iterations (one each at the larger batches).
fn timing(batch: usize) -> (Duration, SamplingMode) {
    let secs = if batch == 1 { 5 } else { 1 };
    (Duration::from_secs(secs), SamplingMode::Flat)
}

fn bench_qformer(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = Blip2Config::default();
    let encoder = frozen(&dev, |vb| HybridEncoder::new(&cfg, vb)).expect("random Q-Former");
    assert!(!encoder.query_tokens().track_op());
    let width = cfg.qformer_config.encoder_hidden_size;

    let mut group = c.benchmark_group("qformer");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for batch in [1usize, 32] {
        let image = Tensor::randn(0f32, 1.0, (batch, IMAGE_TOKENS, width), &dev).expect("image");
        let (ids, mask) = text(batch, TEXT_LEN, false, &dev).expect("text");
        let (ids_full, mask_full) = text(batch, TEXT_LEN, true, &dev).expect("text");
        let (time, mode) = timing(batch);
        group
            .measurement_time(time)
            .sampling_mode(mode)
            .throughput(Throughput::Elements(batch as u64));

        let out = encoder.image_features(&image).expect("image mode");
        assert_eq!(
            out.dims(),
            [batch, cfg.num_query_tokens, cfg.image_text_hidden_size]
        );
        assert!(!out.track_op());
        group.bench_with_input(
            BenchmarkId::new("image_mode", format!("b{batch}")),
            &image,
            |b, image| b.iter(|| black_box(encoder.image_features(black_box(image)).expect("image mode"))),
        );

        let out = encoder
            .composed_query(&image, &ids, &mask)
            .expect("composed query");
        assert_eq!(out.feature.dims(), [batch, cfg.image_text_hidden_size]);
        assert!(!out.feature.track_op());
        for (name, ids, mask) in [
            ("composed_query", &ids, &mask),
            ("composed_query_nopad", &ids_full, &mask_full),
        ] {
            group.bench_with_input(
                BenchmarkId::new(name, format!("b{batch}")),
                &(&image, ids, mask),
                |b, (image, ids, mask)| {
                    b.iter(|| {
                        black_box(
                            encoder
                                .composed_query(black_box(image), black_box(ids), black_box(mask))
                                .expect("composed query"),
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_vit(c: &mut Criterion) {
    let depth: usize = std::env::var("DF_BENCH_VIT_DEPTH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dev = Device::Cpu;
    let cfg = VisionConfig {
        num_hidden_layers: depth,
        ..VisionConfig::default()
    };
    let vit = frozen(&dev, |vb| VisionModel::new(&cfg, vb)).expect("random ViT");

    let mut group = c.benchmark_group(format!("vit_g_depth{depth}"));
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for batch in [1usize, 8] {
        let pixels =
            Tensor::randn(0f32, 1.0, (batch, 3, cfg.image_size, cfg.image_size), &dev).expect("pixels");
        let (time, mode) = timing(batch);
        group
            .measurement_time(time)
            .sampling_mode(mode)
            .throughput(Throughput::Elements(batch as u64));
        let out = vit.forward(&pixels).expect("vit");
        assert_eq!(out.dims(), [batch, IMAGE_TOKENS, cfg.hidden_size]);
        assert!(!out.track_op());
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("b{batch}")),
            &pixels,
            |b, pixels| b.iter(|| black_box(vit.forward(black_box(pixels)).expect("vit"))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_qformer, bench_vit);
criterion_main!(benches);
