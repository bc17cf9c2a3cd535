//! Stage 0: BLIP-2-style image–text contrastive pretraining of a (tiny) ViT + Q-Former, our
//! stand-in for the real BLIP-2 weights, which cannot be had here. The result is saved as a
//! Hugging Face BLIP-2 checkpoint that [`crate::DetailFusion::from_blip2`] reads.

mod scene;

use scene::SceneHeads;
pub use scene::SceneParsing;

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use df_data::toy::CELLS;
use df_encoders::{Blip2Config, Blip2Model, TextProcessor};
use df_train::losses::itc_loss;
use df_train::{Stage, StageModel, TrainError};

/// A trainable BLIP-2 stage-1 model plus its image–caption pairs.
pub struct ItcPretrainer {
    model: Blip2Model,
    varmap: VarMap,
    temp: Tensor,
    pixels: Tensor,
    captions: Vec<String>,
    text: TextProcessor,
    config: Blip2Config,
    /// Per image, the images that differ from it by a small edit (empty: no hard negatives).
    partners: Vec<Vec<usize>>,
    scene: Option<SceneHeads>,
}

impl ItcPretrainer {
    /// A randomly initialised model over `pixels: [N, 3, S, S]` and one caption per image.
    pub fn new(
        config: Blip2Config,
        pixels: Tensor,
        captions: Vec<String>,
        text: TextProcessor,
        device: &Device,
    ) -> crate::Result<Self> {
        if pixels.dim(0)? != captions.len() {
            return Err(crate::DetailFusionError::Variant(format!(
                "{} images but {} captions",
                pixels.dim(0)?,
                captions.len()
            )));
        }
        config.validate()?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Blip2Model::new(&config, vb.clone())?;
        let temp = vb.get_with_hints((), "temp", candle_nn::Init::Const(0.07))?;
        Ok(Self {
            model,
            varmap,
            temp,
            pixels,
            captions,
            text,
            config,
            partners: Vec::new(),
            scene: None,
        })
    }

    /// Adds the [design] toy scene-parsing loss ([`SceneParsing`]): `labels: [N, CELLS, 3]`
    /// u32, one row per image (see [`crate::toy::ToyData::cell_labels`]).
    pub fn with_scene_parsing(mut self, labels: Tensor, opts: &SceneParsing) -> crate::Result<Self> {
        let n = self.captions.len();
        if labels.dims() != [n, usize::from(CELLS), 3] || labels.dtype() != DType::U32 {
            return Err(crate::DetailFusionError::Variant(format!(
                "scene labels: expected u32 [{n}, {CELLS}, 3], got {:?} {:?}",
                labels.dtype(),
                labels.dims()
            )));
        }
        if !(opts.vit || opts.queries || opts.text) {
            return Err(crate::DetailFusionError::Variant(
                "scene parsing: no head enabled (vit, queries and text are all false)".into(),
            ));
        }
        self.scene = Some(SceneHeads::new(&self.config, labels, opts)?);
        Ok(self)
    }

    /// Hard negatives: `partners[i]` lists images that differ from image `i` by a small edit.
    /// Each batch of `B` images then also holds one partner per image (up to `2B` in all), so
    /// the contrastive loss must tell near-duplicates apart rather than match by colour alone.
    pub fn with_hard_negatives(mut self, partners: Vec<Vec<usize>>) -> crate::Result<Self> {
        let n = self.captions.len();
        if partners.len() != n || partners.iter().flatten().any(|&j| j >= n) {
            return Err(crate::DetailFusionError::Variant(format!(
                "hard negatives: {} partner lists (or an index past the end) for {n} images",
                partners.len()
            )));
        }
        self.partners = partners;
        Ok(self)
    }

    /// `indices` plus one partner of each (picked by position, so reproducible), without repeats.
    fn with_partners(&self, indices: &[usize]) -> Vec<usize> {
        let mut out = indices.to_vec();
        if self.partners.is_empty() {
            return out;
        }
        let mut seen: std::collections::HashSet<usize> = indices.iter().copied().collect();
        for (k, &i) in indices.iter().enumerate() {
            let ps = &self.partners[i];
            if ps.is_empty() {
                continue;
            }
            let j = ps[(k + indices[0]) % ps.len()];
            if seen.insert(j) {
                out.push(j);
            }
        }
        out
    }

    /// The model being trained.
    pub fn model(&self) -> &Blip2Model {
        &self.model
    }

    /// Writes `config.json` and `model.safetensors` in the Hugging Face layout.
    pub fn save_hf(&self, dir: &Path) -> crate::Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| crate::DetailFusionError::Io {
            path: dir.into(),
            source,
        })?;
        let json =
            serde_json::to_string_pretty(&self.config).map_err(|e| crate::DetailFusionError::Config {
                path: dir.join("config.json"),
                message: e.to_string(),
            })?;
        std::fs::write(dir.join("config.json"), json).map_err(|source| crate::DetailFusionError::Io {
            path: dir.join("config.json"),
            source,
        })?;
        let tensors: std::collections::HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
            .collect();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path)
            .map_err(|source| crate::DetailFusionError::Weights { path, source })
    }
}

impl StageModel for ItcPretrainer {
    fn trainable(&self, _stage: Stage) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(head) = &self.scene {
            let data = head.vars.data().lock().unwrap();
            v.extend(data.iter().map(|(k, x)| (k.clone(), x.clone())));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn loss(&self, _stage: Stage, indices: &[usize]) -> df_train::Result<(Tensor, Vec<(String, f32)>)> {
        let indices = &self.with_partners(indices)[..];
        let ids = Tensor::new(
            indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            self.pixels.device(),
        )?;
        let pixels = self.pixels.index_select(&ids, 0)?;
        let texts: Vec<&str> = indices.iter().map(|&i| self.captions[i].as_str()).collect();
        let tb = self
            .text
            .encode_batch(&texts, self.pixels.device())
            .map_err(|e| TrainError::Model(e.to_string()))?;
        let run = || -> df_encoders::Result<(Tensor, Tensor, Tensor)> {
            let tokens = self.model.vision_features(&pixels)?;
            let z = self.model.encoder.image_features(&tokens)?;
            let t = self.model.text_features(&tb.input_ids, &tb.attention_mask)?;
            Ok((tokens, z, t))
        };
        let (tokens, z, t) = run().map_err(|e| TrainError::Model(e.to_string()))?;
        let itc = itc_loss(&z, &t, &self.temp)?;
        let Some(head) = &self.scene else {
            return Ok((itc, vec![]));
        };
        let scene = head.loss(&ids, &tokens, &z, &t)?;
        let parts = vec![
            ("itc".to_string(), itc.to_scalar::<f32>()?),
            ("scene".to_string(), scene.to_scalar::<f32>()?),
        ];
        Ok(((itc + (scene * head.weight)?)?, parts))
    }

    fn save(&self, dir: &Path) -> df_train::Result<()> {
        self.save_hf(dir).map_err(|e| TrainError::Model(e.to_string()))
    }
}
