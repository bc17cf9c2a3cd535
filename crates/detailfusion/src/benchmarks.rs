//! Evaluation on the real benchmarks (SPEC §6): CIRR val, the CIRR test1 server files, and
//! Fashion IQ val. Every gallery image pays for the frozen ViT once; reference images are
//! looked up among them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use df_data::cirr::CirrDataset;
use df_data::fashioniq::FashionIqDataset;
use df_data::{CirSample, Gallery};
use df_encoders::TextProcessor;
use df_train::eval::{
    cirr_test_predictions, cirr_val_metrics, fiq_category_metrics, write_cirr_submission, CirrMetrics,
    CirrQuery, FiqCategoryMetrics, FiqMetrics, FiqQuery, SubmissionFiles,
};

use crate::{DetailFusion, DetailFusionError, GalleryFeatures, Result};

/// Images per ViT batch.
const BATCH: usize = 32;

fn eval_err(e: impl std::fmt::Display) -> DetailFusionError {
    DetailFusionError::Variant(format!("evaluation: {e}"))
}

/// ViT features `[T, W]` of every gallery image (decoded and preprocessed with the model's
/// image processor); a file that cannot be read is an error naming it.
pub fn gallery_vit_features(
    model: &DetailFusion,
    gallery: &Gallery,
    log: &dyn Fn(&str),
) -> Result<Vec<Tensor>> {
    let proc = &model.config().image_processor;
    let paths: Vec<&PathBuf> = gallery.iter().map(|g| &g.path).collect();
    let mut out = Vec::with_capacity(paths.len());
    for (i, chunk) in paths.chunks(BATCH).enumerate() {
        let pixels = proc.preprocess_batch(chunk, model.device())?;
        let f = model.vision_features(&pixels)?;
        for j in 0..chunk.len() {
            out.push(f.get(j)?);
        }
        if i % 20 == 0 {
            log(&format!("ViT features {}/{}", out.len(), paths.len()));
        }
    }
    Ok(out)
}

/// Gallery features from ViT features.
/// (ViT features may be in a reduced precision: they are cast to `f32` batch by batch.)
pub fn gallery_features(model: &DetailFusion, feats: &[Tensor]) -> Result<GalleryFeatures> {
    let mut parts = vec![];
    for chunk in feats.chunks(128) {
        parts.push(model.encode_image_embeds(&Tensor::stack(chunk, 0)?.to_dtype(DType::F32)?)?);
    }
    let tokens = Tensor::cat(&parts.iter().map(|g| &g.tokens).collect::<Vec<_>>(), 0)?;
    let gm = parts
        .iter()
        .map(|g| g.gm_tokens.clone())
        .collect::<Option<Vec<_>>>();
    let gm_tokens = gm.map(|v| Tensor::cat(&v, 0)).transpose()?;
    Ok(GalleryFeatures { tokens, gm_tokens })
}

/// Scores `[B][N]` of every sample against the gallery.
pub fn sample_scores(
    model: &DetailFusion,
    text: &TextProcessor,
    samples: &[CirSample],
    gallery: &Gallery,
    vit: &[Tensor],
    features: &GalleryFeatures,
) -> Result<Vec<Vec<f32>>> {
    let mut scores = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(64) {
        let refs = chunk
            .iter()
            .map(|s| {
                let i = gallery.position(&s.reference).ok_or_else(|| {
                    eval_err(format!(
                        "pair {}: reference `{}` is not in the gallery",
                        s.pair_id, s.reference
                    ))
                })?;
                Ok(&vit[i])
            })
            .collect::<Result<Vec<_>>>()?;
        let texts: Vec<String> = chunk.iter().map(|s| s.query_text()).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tb = text.encode_batch(&texts, model.device())?;
        let refs = Tensor::stack(&refs, 0)?.to_dtype(DType::F32)?;
        let q = model.encode_query_embeds(&refs, &tb.input_ids, &tb.attention_mask)?;
        scores.extend(model.score(&q, features)?.to_vec2::<f32>()?);
    }
    Ok(scores)
}

/// The CIRR queries of `samples` (for the metric functions of [`df_train::eval`]).
pub fn cirr_queries(samples: &[CirSample]) -> Vec<CirrQuery> {
    samples
        .iter()
        .map(|s| CirrQuery {
            pair_id: s.pair_id as i64,
            reference: s.reference.clone(),
            target: s.target.clone(),
            members: s
                .candidates
                .as_ref()
                .map(|c| c.members.clone())
                .unwrap_or_default(),
        })
        .collect()
}

fn scores_for(
    model: &DetailFusion,
    text: &TextProcessor,
    samples: &[CirSample],
    gallery: &Gallery,
    log: &dyn Fn(&str),
) -> Result<Vec<Vec<f32>>> {
    let vit = gallery_vit_features(model, gallery, log)?;
    let features = gallery_features(model, &vit)?;
    sample_scores(model, text, samples, gallery, &vit, &features)
}

/// CIRR val metrics from precomputed ViT features of `data.gallery` (in gallery order).
pub fn evaluate_cirr_features(
    model: &DetailFusion,
    text: &TextProcessor,
    data: &CirrDataset,
    vit: &[Tensor],
) -> Result<CirrMetrics> {
    let features = gallery_features(model, vit)?;
    let scores = sample_scores(model, text, &data.samples, &data.gallery, vit, &features)?;
    let names: Vec<&str> = data.gallery.names().collect();
    cirr_val_metrics(&cirr_queries(&data.samples), &names, &scores).map_err(eval_err)
}

/// Fashion IQ val metrics from precomputed ViT features of each category's gallery.
pub fn evaluate_fashioniq_features(
    model: &DetailFusion,
    text: &TextProcessor,
    categories: &[FashionIqDataset],
    vit: &[Vec<Tensor>],
) -> Result<FiqMetrics> {
    let mut per = Vec::<FiqCategoryMetrics>::new();
    for (data, vit) in categories.iter().zip(vit) {
        let features = gallery_features(model, vit)?;
        let scores = sample_scores(model, text, &data.samples, &data.gallery, vit, &features)?;
        per.push(fiq_metrics(data, &scores)?);
    }
    FiqMetrics::from_categories(per).map_err(eval_err)
}

fn fiq_metrics(data: &FashionIqDataset, scores: &[Vec<f32>]) -> Result<FiqCategoryMetrics> {
    let names: Vec<&str> = data.gallery.names().collect();
    let queries: Vec<FiqQuery> = data
        .samples
        .iter()
        .map(|s| FiqQuery {
            candidate: s.reference.clone(),
            target: s.target.clone().unwrap_or_default(),
        })
        .collect();
    fiq_category_metrics(data.category.name(), &queries, &names, scores).map_err(eval_err)
}

/// CIRR val: Recall@{1,5,10,50}, Recall_subset@{1,2,3}, Avg (reference removed).
pub fn evaluate_cirr(
    model: &DetailFusion,
    text: &TextProcessor,
    data: &CirrDataset,
    log: &dyn Fn(&str),
) -> Result<CirrMetrics> {
    let scores = scores_for(model, text, &data.samples, &data.gallery, log)?;
    let names: Vec<&str> = data.gallery.names().collect();
    cirr_val_metrics(&cirr_queries(&data.samples), &names, &scores).map_err(eval_err)
}

/// CIRR test1: writes both evaluation-server files into `dir`.
pub fn cirr_submission(
    model: &DetailFusion,
    text: &TextProcessor,
    data: &CirrDataset,
    dir: &Path,
    name: &str,
    log: &dyn Fn(&str),
) -> Result<SubmissionFiles> {
    let scores = scores_for(model, text, &data.samples, &data.gallery, log)?;
    let names: Vec<&str> = data.gallery.names().collect();
    let preds = cirr_test_predictions(&cirr_queries(&data.samples), &names, &scores).map_err(eval_err)?;
    write_cirr_submission(dir, name, &preds).map_err(eval_err)
}

/// Fashion IQ val for the given categories: R@10, R@50 each, their means and Avg.
pub fn evaluate_fashioniq(
    model: &DetailFusion,
    text: &TextProcessor,
    categories: &[FashionIqDataset],
    log: &dyn Fn(&str),
) -> Result<FiqMetrics> {
    let mut per = Vec::<FiqCategoryMetrics>::new();
    for data in categories {
        let scores = scores_for(model, text, &data.samples, &data.gallery, log)?;
        per.push(fiq_metrics(data, &scores)?);
    }
    FiqMetrics::from_categories(per).map_err(eval_err)
}
