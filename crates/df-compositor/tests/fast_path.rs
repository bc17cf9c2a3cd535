//! The small-batch CPU fast path computes what the candle path computes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use df_compositor::{AdaptiveCompositor, CompositorConfig, FusionMode};
use df_encoders::{BranchOutput, Compositor};

fn branch(b: usize, t: usize, p: usize) -> BranchOutput {
    let dev = Device::Cpu;
    BranchOutput {
        global: Tensor::randn(0f32, 1.0, (b, p), &dev).unwrap(),
        tokens: Tensor::randn(0f32, 1.0, (b, t, p), &dev).unwrap(),
        pass1_queries: Tensor::zeros(1, DType::F32, &dev).unwrap(),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    df_encoders::nn::max_abs_diff(a, b).unwrap()
}

/// Trainable (candle path) and frozen (fast path) compositors with the same random weights.
fn pair(cfg: &CompositorConfig) -> (AdaptiveCompositor, AdaptiveCompositor) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let trainable = AdaptiveCompositor::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    // Non-trivial LayerNorm parameters and biases, so that every term is exercised.
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| {
            let t = var.as_tensor().detach();
            let t = if name.ends_with("bias") || name.contains("norm") {
                let shifted = (&t + Tensor::randn(0f32, 0.3, t.shape(), &dev).unwrap()).unwrap();
                var.set(&shifted).unwrap();
                shifted
            } else {
                t
            };
            (name.clone(), t.detach())
        })
        .collect();
    let frozen = AdaptiveCompositor::new(cfg, VarBuilder::from_tensors(tensors, DType::F32, &dev)).unwrap();
    (trainable, frozen)
}

#[test]
fn fast_path_matches_candle_path() {
    let base = CompositorConfig {
        hidden_size: 48,
        num_attention_heads: 4,
        intermediate_size: 80,
        fusion_hidden_size: 24,
        ..CompositorConfig::default()
    };
    let configs = [
        base.clone(),
        CompositorConfig {
            fusion: FusionMode::Gate,
            ..base.clone()
        },
        CompositorConfig {
            use_ffn: false,
            attend_same: false,
            ..base.clone()
        },
        CompositorConfig {
            attend_opposite: false,
            ..base.clone()
        },
    ];
    for cfg in configs {
        let (trainable, frozen) = pair(&cfg);
        for b in [1, 3, 6] {
            let (di, gm) = (branch(b, 5, 48), branch(b, 5, 48));
            let want = trainable.compose(&di, &gm).unwrap();
            assert!(want.feature.track_op());
            let got = frozen.compose(&di, &gm).unwrap();
            let (df, dw) = (
                max_diff(&got.feature, &want.feature),
                max_diff(&got.weights, &want.weights),
            );
            assert!(
                df <= 1e-5 && dw <= 1e-5,
                "{cfg:?} batch {b}: feature {df:e}, weights {dw:e}"
            );
        }
    }
}
