//! The optimiser and schedules against PyTorch's (`torch.optim.AdamW`, `OneCycleLR`),
//! values computed with torch 1.13.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use df_train::optim::{clip_grad_norm, AdamW, GradAccumulator, OptimizerConfig, Schedule};

#[test]
fn adamw_matches_pytorch() {
    let var = Var::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap();
    let cfg = OptimizerConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
    for g in [[0.1f32, -0.2, 0.3], [0.05, 0.4, -0.1], [1.0, 0.0, -2.0]] {
        let grads = HashMap::from([("w".to_string(), Tensor::new(&g, &Device::Cpu).unwrap())]);
        opt.step(&grads, 1e-2).unwrap();
    }
    let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
    let want = [0.472_834_05f32, -0.994_995, 1.988_770_1];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn state_round_trip_resumes_exactly() {
    let dev = Device::Cpu;
    let run = |split: bool| -> Vec<f32> {
        let var = Var::new(&[0.3f32, -0.7], &dev).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], OptimizerConfig::default()).unwrap();
        for i in 0..4 {
            if split && i == 2 {
                let state = opt.state().unwrap();
                let snapshot = var.as_tensor().copy().unwrap();
                let fresh = Var::from_tensor(&snapshot).unwrap();
                let mut resumed =
                    AdamW::new(vec![("w".into(), fresh.clone())], OptimizerConfig::default()).unwrap();
                resumed.load_state(&state).unwrap();
                assert_eq!(resumed.steps(), 2);
                for j in 2..4 {
                    let g = Tensor::new(&[j as f32 * 0.1, -0.2], &dev).unwrap();
                    resumed
                        .step(&HashMap::from([("w".to_string(), g)]), 1e-3)
                        .unwrap();
                }
                return fresh.as_tensor().to_vec1().unwrap();
            }
            let g = Tensor::new(&[i as f32 * 0.1, -0.2], &dev).unwrap();
            opt.step(&HashMap::from([("w".to_string(), g)]), 1e-3).unwrap();
        }
        var.as_tensor().to_vec1().unwrap()
    };
    assert_eq!(run(false), run(true));
    let opt = AdamW::new(vec![], OptimizerConfig::default()).unwrap();
    let mut other = AdamW::new(
        vec![("x".into(), Var::new(&[1f32], &dev).unwrap())],
        OptimizerConfig::default(),
    )
    .unwrap();
    let err = other.load_state(&opt.state().unwrap()).unwrap_err().to_string();
    assert!(err.contains("m.x"), "{err}");
}

#[test]
fn one_cycle_matches_pytorch() {
    let want = [
        3.999_999_999_999_999_6e-5,
        0.000_131_671_842_700_025_2,
        0.000_371_671_842_700_025_3,
        0.000_668_328_157_299_974_7,
        0.000_908_328_157_299_974_7,
        0.001,
        0.000_987_464_006_235_087_5,
        0.000_950_484_632_013_473_6,
        0.000_890_916_177_571_049_9,
        0.000_811_745_653_949_763,
        0.000_716_943_001_791_300_8,
        0.000_611_262_021_936_289_2,
        0.000_500_001_999_999_999_9,
        0.000_388_741_978_063_710_76,
        0.000_283_060_998_208_699_2,
        0.000_188_258_346_050_236_98,
        0.000_109_087_822_428_950_02,
        4.951_936_798_652_628_6e-5,
        1.253_999_376_491_255_4e-5,
        4e-9,
    ];
    let s = Schedule::OneCycle {
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
    };
    for (step, w) in want.iter().enumerate() {
        let got = s.lr(1e-3, step, 20);
        assert!((got - w).abs() < 1e-12, "step {step}: {got} vs {w}");
    }
    let c = Schedule::CosineWarmup { warmup_steps: 4 };
    assert!((c.lr(1.0, 0, 10) - 0.25).abs() < 1e-12);
    assert!((c.lr(1.0, 3, 10) - 1.0).abs() < 1e-12);
    assert!(c.lr(1.0, 9, 10) < c.lr(1.0, 5, 10));
}

#[test]
fn clipping_and_accumulation() {
    let dev = Device::Cpu;
    let mut grads = HashMap::from([
        ("a".to_string(), Tensor::new(&[3f32, 0.0], &dev).unwrap()),
        ("b".to_string(), Tensor::new(&[4f32], &dev).unwrap()),
    ]);
    let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-9);
    let a: Vec<f32> = grads["a"].to_vec1().unwrap();
    assert!((a[0] - 0.6).abs() < 1e-6);
    let mut acc = GradAccumulator::default();
    acc.add(HashMap::from([(
        "a".to_string(),
        Tensor::new(&[1f32], &dev).unwrap(),
    )]))
    .unwrap();
    acc.add(HashMap::from([(
        "a".to_string(),
        Tensor::new(&[3f32], &dev).unwrap(),
    )]))
    .unwrap();
    assert_eq!(acc.count(), 2);
    let mean = acc.take_mean().unwrap();
    assert_eq!(mean["a"].to_vec1::<f32>().unwrap(), vec![2.0]);
    assert_eq!(acc.count(), 0);
}
