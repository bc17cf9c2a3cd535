//! Gradient parity with a PyTorch twin of DetailFusion's trainable parts
//! (`tools/gen_model_fixtures.py`): losses, fused features and the gradient of every trainable
//! parameter for stage 1 (hard negatives), stage 2 (γ-weighted joint loss) and stage 3
//! (compositor) match to 1e-4 relative.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use detailfusion::compositor::CompositorConfig;
use detailfusion::train::losses::{contrastive_loss, hard_negative_contrastive_loss, Stage2Inputs};
use detailfusion::train::{LossConfig, Stage2Losses};
use detailfusion::{Blip2Config, DetailFusion, DetailFusionConfig, InitSources, Source};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(name), &Device::Cpu).unwrap()
}

fn model() -> DetailFusion {
    let dev = Device::Cpu;
    let mut cfg = DetailFusionConfig::from_blip2(Blip2Config::from_file(dir().join("config.json")).unwrap());
    let text = std::fs::read_to_string(dir().join("compositor_config.json")).unwrap();
    cfg.compositor = serde_json::from_str::<CompositorConfig>(&text).unwrap();
    let vb = VarBuilder::from_tensors(load("weights.safetensors"), DType::F32, &dev);
    let sources = InitSources {
        vision: None,
        params: vec![Source {
            vb,
            map: Box::new(|n: &str| Some(n.to_string())),
        }],
        strict: true,
    };
    DetailFusion::build(cfg, sources, &dev).unwrap()
}

/// max |a − b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let scale: f32 = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    detailfusion::encoders::nn::max_abs_diff(a, b).unwrap() / scale.max(1e-6)
}

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let r = rel(got, want);
    assert!(r <= 1e-4, "{name}: relative max diff {r:e}");
}

fn abs_max(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Gradients that are zero analytically (attention key biases: softmax ignores a constant
/// per row) are rounding noise on both sides; they are compared against the stage's largest
/// gradient instead of their own.
fn check_grad(name: &str, got: &Tensor, want: &Tensor, stage_max: f32) {
    if abs_max(want) < 1e-6 * stage_max {
        let noise = abs_max(got) / stage_max;
        assert!(
            noise <= 1e-4,
            "{name}: analytically zero, got {noise:e} of the largest gradient"
        );
    } else {
        check(name, got, want);
    }
}

fn stage_max(stage: &str, expected: &HashMap<String, Tensor>) -> f32 {
    let prefix = format!("{stage}.");
    expected
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, t)| abs_max(t))
        .fold(0.0, f32::max)
}

fn check_grads(
    model: &DetailFusion,
    grads: &GradStore,
    prefixes: &[&str],
    stage: &str,
    expected: &HashMap<String, Tensor>,
) {
    let top = stage_max(stage, expected);
    let vars = model.vars(prefixes);
    assert!(!vars.is_empty());
    let mut n = 0;
    for (name, var) in vars {
        let want = expected
            .get(&format!("{stage}.{name}"))
            .unwrap_or_else(|| panic!("reference has no {stage}.{name}"));
        let got = match grads.get(var.as_tensor()) {
            Some(g) => g.clone(),
            None => var.as_tensor().zeros_like().unwrap(),
        };
        check_grad(&format!("{stage}.{name}"), &got, want, top);
        n += 1;
    }
    let in_reference = expected
        .keys()
        .filter(|k| k.starts_with(&format!("{stage}.")))
        .count();
    assert_eq!(
        n, in_reference,
        "{stage}: parameter count differs from the reference"
    );
}

struct Run {
    model: DetailFusion,
    x: HashMap<String, Tensor>,
    e: HashMap<String, Tensor>,
}

fn setup() -> Run {
    Run {
        model: model(),
        x: load("inputs.safetensors"),
        e: load("expected.safetensors"),
    }
}

#[test]
fn stage1_hard_negative_loss_and_gradients() {
    let Run { model, x, e } = setup();
    let (ids, mask) = (&x["input_ids"], &x["attention_mask"]);
    let q = model.encode_query_embeds(&x["ref_image"], ids, mask).unwrap();
    let z = model.encode_image_embeds(&x["target_image"]).unwrap().tokens;
    let z_ref = model.encode_image_embeds(&x["ref_image"]).unwrap().tokens;
    check("z", &z, &e["z"]);
    check("z_ref", &z_ref, &e["z_ref"]);
    let di = q.di.as_ref().unwrap();
    check("q_di", &di.global, &e["q_di"]);
    check("tokens_di", &di.tokens, &e["tokens_di"]);
    let loss = hard_negative_contrastive_loss(&di.global, &z, &z_ref, model.di().unwrap().temp()).unwrap();
    check("loss1", &loss, &e["loss1"]);
    let grads = loss.backward().unwrap();
    check_grads(&model, &grads, &["di."], "grad1", &e);
}

#[test]
fn stage2_gamma_weighted_loss_and_gradients() {
    let Run { model, x, e } = setup();
    let (ids, mask) = (&x["input_ids"], &x["attention_mask"]);
    let q = model.encode_query_embeds(&x["ref_image"], ids, mask).unwrap();
    let z = model.encode_image_embeds(&x["target_image"]).unwrap().tokens;
    let (gm, di) = (model.gm().unwrap(), model.di().unwrap());
    let text_only = gm.text_only_features(ids, mask).unwrap();
    check("text_only", &text_only, &e["text_only"]);
    let (qd, qg) = (q.di.as_ref().unwrap(), q.gm.as_ref().unwrap());
    check("q_gm", &qg.global, &e["q_gm"]);
    check("pass1_gm", &qg.pass1_queries, &e["pass1_gm"]);
    let cfg = LossConfig {
        gamma: 0.5,
        text_only_weight: 0.4,
        align_weight: 0.4,
        ..Default::default()
    };
    let l = Stage2Losses::compute(
        Stage2Inputs {
            q_gm: &qg.global,
            q_di: &qd.global,
            text_only: &text_only,
            gm_pass1: &qg.pass1_queries,
            prompt_tokens: gm.prompt_tokens(),
            targets: &z,
            targets_gm: &z,
            temp_gm: gm.temp(),
            temp_di: di.temp(),
        },
        &cfg,
    )
    .unwrap();
    check("loss2_gm", &l.gm, &e["loss2_gm"]);
    check("loss2_di", &l.di, &e["loss2_di"]);
    check("loss2_text_only", &l.text_only, &e["loss2_text_only"]);
    check("loss2_align", &l.align, &e["loss2_align"]);
    check("loss2", &l.total, &e["loss2"]);
    let grads = l.total.backward().unwrap();
    check_grads(&model, &grads, &["di.", "gm."], "grad2", &e);
}

#[test]
fn stage3_compositor_fused_feature_loss_and_gradients() {
    let Run { model, x, e } = setup();
    let (ids, mask) = (&x["input_ids"], &x["attention_mask"]);
    let q = model.encode_query_embeds(&x["ref_image"], ids, mask).unwrap();
    let z = model
        .encode_image_embeds(&x["target_image"])
        .unwrap()
        .tokens
        .detach();
    let (d, g) = (q.di.as_ref().unwrap().detach(), q.gm.as_ref().unwrap().detach());
    let (c_di, c_gm) = model.compositor().unwrap().context(&d, &g).unwrap().unwrap();
    check("c_di", &c_di, &e["c_di"]);
    check("c_gm", &c_gm, &e["c_gm"]);
    let fused = model.fuse(Some(d), Some(g)).unwrap();
    check("fused", &fused.feature, &e["fused"]);
    check("alpha", &fused.weights, &e["alpha"]);
    let loss = contrastive_loss(&fused.feature, &z, model.temp()).unwrap();
    check("loss3", &loss, &e["loss3"]);
    let grads = loss.backward().unwrap();
    let mut vars = model.vars(&["compositor."]);
    vars.extend(model.vars(&["temp"]));
    let top = stage_max("grad3", &e);
    for (name, var) in &vars {
        let got = grads
            .get(var.as_tensor())
            .cloned()
            .unwrap_or_else(|| var.as_tensor().zeros_like().unwrap());
        check_grad(&format!("grad3.{name}"), &got, &e[&format!("grad3.{name}")], top);
    }
    assert_eq!(vars.len(), e.keys().filter(|k| k.starts_with("grad3.")).count());
    // Nothing upstream of the compositor received a gradient.
    for (name, var) in model.vars(&["di.", "gm."]) {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "{name} got a stage-3 gradient"
        );
    }
}
