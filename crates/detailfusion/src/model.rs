//! The DetailFusion model: frozen ViT, DI and GM branches, the compositor and the gallery
//! encoder, assembled from a config and initialised from BLIP-2 / SPRC checkpoints or from
//! a saved model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use df_compositor::AdaptiveCompositor;
use df_di_branch::DiBranch;
use df_encoders::cir::max_token_scores;
use df_encoders::{
    BranchOutput, Checkpoint, Compositor, GalleryEncoder, HybridEncoder, LoadOptions, QueryBranch,
    VisionModel,
};
use df_gm_branch::GmBranch;

use crate::config::{DetailFusionConfig, GalleryMode, Variant};
use crate::init::{InitBackend, NameMap, RecordingBackend, Source};
use crate::{DetailFusionError, Result};

/// Weight file and config file names of a saved model.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// See [`WEIGHTS_FILE`].
pub const CONFIG_FILE: &str = "config.json";

/// Gallery features of a batch of images.
#[derive(Debug, Clone)]
pub struct GalleryFeatures {
    /// Per-token features of the gallery space `[N, Q, P]` (DI's, or GM's for a GM-only model).
    pub tokens: Tensor,
    /// GM's own gallery features `[N, Q, P]` under [`GalleryMode::PerBranch`].
    pub gm_tokens: Option<Tensor>,
}

/// Encoded composed queries.
#[derive(Debug, Clone)]
pub struct QueryFeatures {
    /// The fused query feature `[B, P]`.
    pub feature: Tensor,
    /// Fusion weights `[B, 2]` as `[α_DI, α_GM]` (one-hot for single-branch models).
    pub weights: Tensor,
    /// DI branch output, when the model has one.
    pub di: Option<BranchOutput>,
    /// GM branch output, when the model has one.
    pub gm: Option<BranchOutput>,
}

/// DetailFusion. Parameter names: `vision_model.*` (frozen), `di.*`, `gm.*`, `gm_gallery.*`,
/// `compositor.*`, `temp`.
pub struct DetailFusion {
    config: DetailFusionConfig,
    vision: VisionModel,
    vision_tensors: HashMap<String, Tensor>,
    di: Option<DiBranch>,
    gm: Option<GmBranch>,
    gm_gallery: Option<HybridEncoder>,
    compositor: Option<AdaptiveCompositor>,
    temp: Tensor,
    varmap: VarMap,
    device: Device,
}

/// Where a new model's weights come from.
#[derive(Default)]
pub struct InitSources {
    /// Frozen ViT weights (rooted at the checkpoint top, read under `vision_model.`).
    pub vision: Option<VarBuilder<'static>>,
    /// Sources for trainable parameters, first match wins.
    pub params: Vec<Source>,
    /// Refuse to initialise parameters that no source has.
    pub strict: bool,
}

impl DetailFusion {
    /// Builds a model from `sources` (parameters absent from them get their initialisers).
    pub fn build(
        config: DetailFusionConfig,
        sources: InitSources,
        device: &Device,
    ) -> candle_core::Result<Self> {
        config
            .blip2
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let record = Arc::new(Mutex::new(HashMap::new()));
        let vision_backend = RecordingBackend {
            inner: sources.vision,
            record: record.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(vision_backend), DType::F32, device.clone());
        let vision = VisionModel::new(&config.blip2.vision_config, vb.pp("vision_model"))?;
        let vision_tensors = std::mem::take(&mut *record.lock().unwrap());

        let varmap = VarMap::new();
        let backend = InitBackend {
            varmap: varmap.clone(),
            sources: sources.params,
            strict: sources.strict,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let b2 = &config.blip2;
        let di = config
            .has_di()
            .then(|| DiBranch::new(b2, vb.pp("di")))
            .transpose()?;
        let gm = config
            .has_gm()
            .then(|| GmBranch::new(b2, vb.pp("gm")))
            .transpose()?;
        let full = config.variant == Variant::Full;
        let gm_gallery = (full && config.gallery == GalleryMode::PerBranch)
            .then(|| HybridEncoder::new(b2, vb.pp("gm_gallery")))
            .transpose()?;
        let compositor = full
            .then(|| AdaptiveCompositor::new(&config.compositor, vb.pp("compositor")))
            .transpose()?;
        let temp = vb.get_with_hints((), "temp", candle_nn::Init::Const(0.07))?;
        Ok(Self {
            config,
            vision,
            vision_tensors,
            di,
            gm,
            gm_gallery,
            compositor,
            temp,
            varmap,
            device: device.clone(),
        })
    }

    /// A randomly initialised model.
    pub fn new(config: DetailFusionConfig, device: &Device) -> Result<Self> {
        Ok(Self::build(config, InitSources::default(), device)?)
    }

    /// Initialises both branches and the gallery encoder from one BLIP-2 checkpoint (any
    /// layout [`Checkpoint::resolve`] reads). Branch token projections start from
    /// `text_projection`; GM's prompts and the compositor start fresh.
    pub fn from_blip2(spec: &str, config: Option<DetailFusionConfig>, device: &Device) -> Result<Self> {
        let opts = LoadOptions {
            device: device.clone(),
            config: config.as_ref().map(|c| c.blip2.clone()),
            ..Default::default()
        };
        let ck = Checkpoint::resolve(spec, &opts)?;
        let config = config.unwrap_or_else(|| DetailFusionConfig::from_blip2(ck.config.clone()));
        let vb = ck.var_builder(DType::F32, device)?;
        let sources = InitSources {
            vision: Some(vb.clone()),
            params: vec![Source {
                vb,
                map: blip2_names(&["di.", "gm.", "gm_gallery."]),
            }],
            strict: false,
        };
        Self::build(config, sources, device).map_err(|e| ck.error(e).into())
    }

    /// Replaces the GM branch's weights with an SPRC checkpoint's (`.pt` with the
    /// `Blip2QformerCirAlignPrompt` key, or any BLIP-2 layout), keeping everything else.
    pub fn load_gm_from_sprc(&mut self, spec: &str) -> Result<()> {
        if self.gm.is_none() {
            return Err(DetailFusionError::Variant("this model has no GM branch".into()));
        }
        let opts = LoadOptions {
            device: self.device.clone(),
            config: Some(self.config.blip2.clone()),
            ..Default::default()
        };
        let ck = Checkpoint::resolve(spec, &opts)?;
        let vb = ck.var_builder(DType::F32, &self.device)?;
        let map = blip2_names(&["gm."]);
        let mut data = self.varmap.data().lock().unwrap();
        for (name, var) in data.iter_mut().filter(|(n, _)| n.starts_with("gm.")) {
            let Some(theirs) = map(name) else { continue };
            if vb.contains_tensor(&theirs) {
                let t = vb.get(var.shape().clone(), &theirs).map_err(|e| ck.error(e))?;
                var.set(&t.to_dtype(var.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Loads a model saved with [`DetailFusion::save`] (`config.json` + `model.safetensors`).
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| DetailFusionError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: DetailFusionConfig =
            serde_json::from_str(&text).map_err(|e| DetailFusionError::Config {
                path: cfg_path.clone(),
                message: e.to_string(),
            })?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors =
            candle_core::safetensors::load(&weights, device).map_err(|e| DetailFusionError::Weights {
                path: weights.clone(),
                source: e,
            })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let sources = InitSources {
            vision: Some(vb.clone()),
            params: vec![Source {
                vb,
                map: Box::new(|n: &str| Some(n.to_string())),
            }],
            strict: true,
        };
        Self::build(config, sources, device).map_err(|source| DetailFusionError::Weights {
            path: weights,
            source,
        })
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (each atomically: a temporary
    /// file renamed into place).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| DetailFusionError::Io {
            path: dir.into(),
            source,
        })?;
        let json = serde_json::to_string_pretty(&self.config).map_err(|e| DetailFusionError::Config {
            path: dir.join(CONFIG_FILE),
            message: e.to_string(),
        })?;
        atomic_write(&dir.join(CONFIG_FILE), |tmp| {
            std::fs::write(tmp, json.as_bytes()).map_err(|e| candle_core::Error::Msg(e.to_string()))
        })?;
        let tensors = self.named_tensors();
        atomic_write(&dir.join(WEIGHTS_FILE), |tmp| {
            candle_core::safetensors::save(&tensors, tmp)
        })
    }

    /// Every tensor of the model by checkpoint name (frozen ViT included).
    pub fn named_tensors(&self) -> HashMap<String, Tensor> {
        let mut all = self.vision_tensors.clone();
        for (k, v) in self.varmap.data().lock().unwrap().iter() {
            all.insert(k.clone(), v.as_detached_tensor());
        }
        all
    }

    /// The trainable variables whose names start with any of `prefixes` (`"di."`,
    /// `"compositor."`, `"temp"`, …), sorted by name.
    pub fn vars(&self, prefixes: &[&str]) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> = self
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The variable store.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The config.
    pub fn config(&self) -> &DetailFusionConfig {
        &self.config
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The DI branch.
    pub fn di(&self) -> Option<&DiBranch> {
        self.di.as_ref()
    }

    /// The GM branch.
    pub fn gm(&self) -> Option<&GmBranch> {
        self.gm.as_ref()
    }

    /// The compositor (full model only).
    pub fn compositor(&self) -> Option<&AdaptiveCompositor> {
        self.compositor.as_ref()
    }

    /// Temperature of the fused query (scalar).
    pub fn temp(&self) -> &Tensor {
        &self.temp
    }

    /// The frozen ViT.
    pub fn vision(&self) -> &VisionModel {
        &self.vision
    }

    /// `[B, 3, S, S]` pixels → ViT features `[B, N, W]` (frozen, no gradient).
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.vision.forward(pixel_values)?.detach())
    }

    /// Gallery features from ViT features `[N, T, W]`.
    pub fn encode_image_embeds(&self, image: &Tensor) -> Result<GalleryFeatures> {
        let tokens = match (&self.di, &self.gm) {
            (Some(di), _) => di.encode_gallery(image)?,
            (None, Some(gm)) => gm.encode_gallery(image)?,
            (None, None) => return Err(DetailFusionError::Variant("model has no branch".into())),
        };
        let gm_tokens = self
            .gm_gallery
            .as_ref()
            .map(|g| g.image_features(image))
            .transpose()?;
        Ok(GalleryFeatures { tokens, gm_tokens })
    }

    /// Gallery features of `[N, 3, S, S]` pixels: `[N, Q, P]`.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<GalleryFeatures> {
        self.encode_image_embeds(&self.vision_features(pixel_values)?)
    }

    /// Composed queries from reference ViT features `[B, T, W]` and text `[B, L]`.
    pub fn encode_query_embeds(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        mask: &Tensor,
    ) -> Result<QueryFeatures> {
        let di = self
            .di
            .as_ref()
            .map(|b| b.encode_query(image, input_ids, mask))
            .transpose()?;
        let gm = self
            .gm
            .as_ref()
            .map(|b| b.encode_query(image, input_ids, mask))
            .transpose()?;
        self.fuse(di, gm)
    }

    /// Composed queries from reference pixels `[B, 3, S, S]` and text `[B, L]`.
    pub fn encode_queries(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        mask: &Tensor,
    ) -> Result<QueryFeatures> {
        self.encode_query_embeds(&self.vision_features(pixel_values)?, input_ids, mask)
    }

    /// Fuses branch outputs (e.g. cached ones in stage 3).
    pub fn fuse(&self, di: Option<BranchOutput>, gm: Option<BranchOutput>) -> Result<QueryFeatures> {
        let one_hot = |b: usize, first: bool| -> Result<Tensor> {
            let row: [f32; 2] = if first { [1.0, 0.0] } else { [0.0, 1.0] };
            Ok(Tensor::new(&row, &self.device)?.unsqueeze(0)?.repeat((b, 1))?)
        };
        let (feature, weights) = match (&di, &gm, &self.compositor) {
            (Some(d), Some(g), Some(c)) => {
                let fused = c.compose(d, g)?;
                (fused.feature, fused.weights)
            }
            (Some(d), None, _) => (d.global.clone(), one_hot(d.global.dim(0)?, true)?),
            (None, Some(g), _) => (g.global.clone(), one_hot(g.global.dim(0)?, false)?),
            _ => return Err(DetailFusionError::Variant("inconsistent branch outputs".into())),
        };
        Ok(QueryFeatures {
            feature,
            weights,
            di,
            gm,
        })
    }

    /// Scores `[B, N]` of queries against a gallery (max over image tokens; per-branch
    /// galleries are combined with the fusion weights).
    pub fn score(&self, queries: &QueryFeatures, gallery: &GalleryFeatures) -> Result<Tensor> {
        match (&gallery.gm_tokens, &queries.di, &queries.gm) {
            (Some(gm_tokens), Some(di), Some(gm)) => {
                let s_di = max_token_scores(&di.global, &gallery.tokens)?;
                let s_gm = max_token_scores(&gm.global, gm_tokens)?;
                let w = &queries.weights;
                Ok((s_di.broadcast_mul(&w.narrow(1, 0, 1)?)? + s_gm.broadcast_mul(&w.narrow(1, 1, 1)?)?)?)
            }
            _ => Ok(max_token_scores(&queries.feature, &gallery.tokens)?),
        }
    }

    /// Identity of the gallery encoder, as 16 hex digits: FNV-1a 64 over the config JSON, all
    /// bytes of the gallery encoder's `query_tokens` and `vision_projection.*` (DI's, or GM's
    /// for a GM-only model, plus `gm_gallery.*` under [`GalleryMode::PerBranch`]), and the names,
    /// shapes and 64 evenly spaced values of every other tensor the gallery features depend on
    /// (`vision_model.*` and the gallery encoders' Q-Formers). Two models whose gallery
    /// features differ have different fingerprints (a gallery index records it to refuse
    /// queries from another model); query-side-only weights (`text_projection`,
    /// `token_projection`, prompts, temperatures, the compositor) do not enter it.
    pub fn fingerprint(&self) -> String {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        fn feed(h: &mut u64, bytes: &[u8]) {
            for &b in bytes {
                *h = (*h ^ u64::from(b)).wrapping_mul(PRIME);
            }
        }
        fn values(t: &Tensor, all: bool) -> candle_core::Result<Vec<f32>> {
            let flat = t.flatten_all()?;
            let n = flat.elem_count();
            let flat = if all || n <= 64 {
                flat
            } else {
                let idx: Vec<u32> = (0..64).map(|i| (i * n / 64) as u32).collect();
                flat.index_select(&Tensor::new(idx.as_slice(), flat.device())?, 0)?
            };
            flat.to_dtype(DType::F32)?.to_vec1::<f32>()
        }
        let mut h = OFFSET;
        feed(&mut h, b"detailfusion-fingerprint-1\0");
        feed(
            &mut h,
            serde_json::to_string(&self.config).unwrap_or_default().as_bytes(),
        );
        let mut prefixes = vec!["vision_model."];
        prefixes.push(if self.di.is_some() { "di." } else { "gm." });
        if self.gm_gallery.is_some() {
            prefixes.push("gm_gallery.");
        }
        let query_only = [
            "text_projection",
            "token_projection",
            "prompt",
            "temp",
            "word_embeddings",
        ];
        let mut tensors: Vec<(String, Tensor)> = self
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
            .filter(|(n, _)| !query_only.iter().any(|q| n.contains(q)))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in &tensors {
            let all = name.ends_with("query_tokens") || name.contains("vision_projection");
            feed(&mut h, name.as_bytes());
            feed(&mut h, &[0]);
            for d in t.dims() {
                feed(&mut h, &(*d as u64).to_le_bytes());
            }
            match values(t, all) {
                Ok(v) => v.iter().for_each(|x| feed(&mut h, &x.to_le_bytes())),
                Err(e) => feed(&mut h, e.to_string().as_bytes()),
            }
        }
        format!("{h:016x}")
    }
}

/// Maps `prefix + name` onto BLIP-2 names: the hybrid encoder's own names, `token_projection`
/// from `text_projection`, `temp` from `temp`, and the top-level `temp` too.
fn blip2_names(prefixes: &[&str]) -> NameMap {
    let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    Box::new(move |name: &str| {
        if name == "temp" {
            return Some("temp".into());
        }
        let rest = prefixes.iter().find_map(|p| name.strip_prefix(p.as_str()))?;
        Some(match rest.strip_prefix("token_projection.") {
            Some(param) => format!("text_projection.{param}"),
            None => rest.to_string(),
        })
    })
}

/// Writes `path` through a temporary file beside it and a rename, so readers never see half a file.
pub(crate) fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> candle_core::Result<()>) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension(format!("tmp{}", std::process::id()));
    write(&tmp).map_err(|e| DetailFusionError::Io {
        path: tmp.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::rename(&tmp, path).map_err(|source| DetailFusionError::Io {
        path: path.into(),
        source,
    })
}
