//! Finding and opening BLIP-2 checkpoints: Hugging Face directories or hub repo ids
//! (`config.json`, `model.safetensors` or a sharded index, `tokenizer.json`) and LAVIS /
//! SPRC PyTorch files (`blip2_pretrained.pth`, SPRC's `.pt`), whose names are mapped onto the
//! Hugging Face ones so that one model definition serves all layouts.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::config::Blip2Config;
use crate::{EncoderError, Result};

/// The layout of a checkpoint's tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// Hugging Face `Blip2ForImageTextRetrieval` safetensors (transformers 4 or 5 layout).
    HuggingFace,
    /// LAVIS / SPRC PyTorch pickle (`visual_encoder.*`, `Qformer.bert.*`, `ln_vision`).
    Lavis,
}

/// How to load weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight dtype (f32 by default; f16/bf16 halve memory).
    pub dtype: DType,
    /// Where the weights go.
    pub device: Device,
    /// Config to use instead of the checkpoint's own (needed for LAVIS files that are not
    /// ViT-g, since they carry no config).
    pub config: Option<Blip2Config>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            config: None,
        }
    }
}

/// A resolved checkpoint: its config, weight files and (optional) tokenizer.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The model config (LAVIS: sibling `config.json` or the ViT-g default, `ln_vision` eps 1e-5).
    pub config: Blip2Config,
    /// Name layout.
    pub format: CheckpointFormat,
    /// Weight files (several for a sharded checkpoint).
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when the checkpoint has one.
    pub tokenizer: Option<PathBuf>,
    /// What the user named (directory, file or `hub:<repo>`), for error messages.
    pub location: PathBuf,
    /// Pickle key holding the state dict (LAVIS `model`, SPRC class name), if any.
    pub state_key: Option<String>,
}

/// Keys under which LAVIS and SPRC files keep their state dict.
const STATE_KEYS: [&str; 4] = [
    "model",
    "state_dict",
    "Blip2QformerCirAlignPrompt",
    "Blip2QformerCir",
];

impl Checkpoint {
    /// Resolves `spec`: a directory, a `.pth`/`.pt`/`.bin` file, a `.safetensors` file (with
    /// `config.json` beside it) or a Hugging Face repo id (`Salesforce/blip2-itm-vit-g`, read
    /// from the local hub cache).
    pub fn resolve(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_dir(path, opts);
        }
        if path.is_file() {
            return match path.extension().and_then(|e| e.to_str()) {
                Some("safetensors") => {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    let mut ck = Self::hf(dir, vec![path.to_path_buf()], opts)?;
                    ck.location = path.into();
                    Ok(ck)
                }
                _ => Self::lavis(path, opts),
            };
        }
        if looks_like_repo_id(spec) {
            return Self::from_hub(spec, opts);
        }
        Err(EncoderError::Io {
            path: path.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such checkpoint file, directory or hub repo",
            ),
        })
    }

    /// A Hugging Face directory (`config.json` + weights [+ `tokenizer.json`]).
    pub fn from_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shards_from_index(&index)?
        } else {
            let pth = ["blip2_pretrained.pth", "model.pth", "pytorch_model.bin"]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.is_file());
            return match pth {
                Some(p) => Self::lavis(&p, opts),
                None => Err(EncoderError::Io {
                    path: single,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no model.safetensors, model.safetensors.index.json or .pth weights in the directory",
                    ),
                }),
            };
        };
        Self::hf(dir, weights, opts)
    }

    fn hf(dir: &Path, weights: Vec<PathBuf>, opts: &LoadOptions) -> Result<Self> {
        let config = match &opts.config {
            Some(c) => c.clone(),
            None => Blip2Config::from_file(dir.join("config.json"))?,
        };
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        Ok(Self {
            config,
            format: CheckpointFormat::HuggingFace,
            weights,
            tokenizer,
            location: dir.into(),
            state_key: None,
        })
    }

    /// A LAVIS or SPRC PyTorch checkpoint. Its config comes from `opts`, else a `config.json`
    /// beside it, else BLIP-2's ViT-g defaults (vocab 30523); `ln_vision` gets eps 1e-5.
    pub fn lavis(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let sibling = path
            .parent()
            .map(|d| d.join("config.json"))
            .filter(|p| p.is_file());
        let mut config = match (&opts.config, sibling) {
            (Some(c), _) => c.clone(),
            (None, Some(cfg)) => Blip2Config::from_file(cfg)?,
            (None, None) => {
                let mut c = Blip2Config::default();
                c.qformer_config.vocab_size = 30523;
                c
            }
        };
        config.vision_config.ln_vision_eps.get_or_insert(1e-5);
        let state_key = find_state_key(path)?;
        let tokenizer = path
            .parent()
            .map(|d| d.join("tokenizer.json"))
            .filter(|p| p.is_file());
        Ok(Self {
            config,
            format: CheckpointFormat::Lavis,
            weights: vec![path.into()],
            tokenizer,
            location: path.into(),
            state_key,
        })
    }

    /// A repo id served from the local Hugging Face cache (`HF_HOME`); with the `hub-download`
    /// feature, missing files are downloaded.
    pub fn from_hub(repo: &str, opts: &LoadOptions) -> Result<Self> {
        let dir = hub_fetch(repo, "config.json")?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let weights = match hub_fetch(repo, "model.safetensors") {
            Ok(p) => vec![p],
            Err(single_err) => match hub_fetch(repo, "model.safetensors.index.json") {
                Ok(index) => {
                    let files = shards_from_index(&index)?;
                    files
                        .iter()
                        .map(|f| hub_fetch(repo, &f.file_name().unwrap_or_default().to_string_lossy()))
                        .collect::<Result<Vec<_>>>()?
                }
                Err(_) => return Err(single_err),
            },
        };
        let mut ck = Self::hf(&dir, weights, opts)?;
        ck.tokenizer = hub_fetch(repo, "tokenizer.json").ok();
        ck.location = PathBuf::from(format!("hub:{repo}"));
        Ok(ck)
    }

    /// The `tokenizer.json` path, or an error naming where it was looked for.
    pub fn tokenizer_path(&self) -> Result<&Path> {
        self.tokenizer.as_deref().ok_or_else(|| EncoderError::Io {
            path: self.location.join("tokenizer.json"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the checkpoint has no tokenizer.json",
            ),
        })
    }

    /// A `VarBuilder` that serves Hugging Face names whatever the file layout.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        match self.format {
            CheckpointFormat::HuggingFace => {
                for w in &self.weights {
                    if !w.is_file() {
                        return Err(EncoderError::Io {
                            path: w.clone(),
                            source: std::io::Error::new(std::io::ErrorKind::NotFound, "weight shard missing"),
                        });
                    }
                }
                mmap_safetensors(&self.weights, dtype, device).map_err(|e| self.error(e))
            }
            CheckpointFormat::Lavis => {
                let pth = candle_core::pickle::PthTensors::new(&self.weights[0], self.state_key.as_deref())
                    .map_err(|e| self.error(e))?;
                let vb = VarBuilder::from_backend(Box::new(pth), dtype, device.clone());
                Ok(vb.rename_f(hf_to_lavis))
            }
        }
    }

    /// Wraps a candle error (which names the tensor) with this checkpoint's location.
    pub fn error(&self, source: candle_core::Error) -> EncoderError {
        let path = match self.weights.as_slice() {
            [one] => one.clone(),
            _ => self.location.clone(),
        };
        EncoderError::checkpoint(path, source)
    }
}

#[allow(unsafe_code)]
fn mmap_safetensors(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<VarBuilder<'static>> {
    // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we rely on
    // them not being truncated or rewritten while the model is alive.
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
}

fn looks_like_repo_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|source| EncoderError::Io {
        path: index.into(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| EncoderError::Config {
        path: index.into(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EncoderError::Config {
            path: index.into(),
            message: "missing key `weight_map`".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| EncoderError::Config {
            path: index.into(),
            message: format!("`weight_map.{tensor}` is not a file name"),
        })?;
        let p = dir.join(file);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn find_state_key(path: &Path) -> Result<Option<String>> {
    let has_model = |key: Option<&str>| {
        candle_core::pickle::read_pth_tensor_info(path, false, key)
            .map(|infos| infos.iter().any(|t| t.name == "query_tokens"))
    };
    for key in STATE_KEYS {
        if let Ok(true) = has_model(Some(key)) {
            return Ok(Some(key.to_string()));
        }
    }
    match has_model(None) {
        Ok(true) => Ok(None),
        Ok(false) => Err(EncoderError::checkpoint(
            path,
            candle_core::Error::Msg(format!(
                "no BLIP-2 state dict found (no `query_tokens` at the top level or under any of {STATE_KEYS:?})"
            )),
        )),
        Err(e) => Err(EncoderError::checkpoint(path, e)),
    }
}

fn hub_fetch(repo: &str, file: &str) -> Result<PathBuf> {
    // `HF_HUB_CACHE` overrides `HF_HOME/hub`, as in the Python client.
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(dir.into()),
        None => hf_hub::Cache::from_env(),
    };
    if let Some(p) = cache.model(repo.to_string()).get(file) {
        return Ok(p);
    }
    hub_download(repo, file)
}

#[cfg(feature = "hub-download")]
fn hub_download(repo: &str, file: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::Api::new().map_err(|e| hub_err(repo, file, e.to_string()))?;
    api.model(repo.to_string())
        .get(file)
        .map_err(|e| hub_err(repo, file, e.to_string()))
}

#[cfg(not(feature = "hub-download"))]
fn hub_download(repo: &str, file: &str) -> Result<PathBuf> {
    Err(hub_err(
        repo,
        file,
        "not in the local hub cache; downloading needs the `hub-download` feature".into(),
    ))
}

fn hub_err(repo: &str, file: &str, message: String) -> EncoderError {
    EncoderError::HubFile {
        repo: repo.into(),
        file: file.into(),
        message,
    }
}

/// Maps a Hugging Face BLIP-2 tensor name onto its LAVIS name.
pub fn hf_to_lavis(name: &str) -> String {
    const PREFIXES: [(&str, &str); 10] = [
        (
            "vision_model.embeddings.class_embedding",
            "visual_encoder.cls_token",
        ),
        (
            "vision_model.embeddings.position_embedding",
            "visual_encoder.pos_embed",
        ),
        (
            "vision_model.embeddings.patch_embedding.",
            "visual_encoder.patch_embed.proj.",
        ),
        ("vision_model.encoder.layers.", "visual_encoder.blocks."),
        ("vision_model.post_layernorm.", "ln_vision."),
        ("embeddings.", "Qformer.bert.embeddings."),
        ("qformer.layernorm.", "Qformer.bert.embeddings.LayerNorm."),
        ("qformer.encoder.", "Qformer.bert.encoder."),
        ("vision_projection.", "vision_proj."),
        ("text_projection.", "text_proj."),
    ];
    let Some((from, to)) = PREFIXES.iter().find(|(from, _)| name.starts_with(from)) else {
        return name.to_string();
    };
    let rest = &name[from.len()..];
    let mut out = format!("{to}{rest}");
    if from.starts_with("vision_model.encoder") {
        for (a, b) in [
            (".layer_norm1.", ".norm1."),
            (".layer_norm2.", ".norm2."),
            (".self_attn.projection.", ".attn.proj."),
            (".self_attn.", ".attn."),
        ] {
            out = out.replacen(a, b, 1);
        }
    } else if from.starts_with("qformer.encoder") {
        out = out.replacen(".attention.attention.", ".attention.self.", 1);
        out = out.replacen(".crossattention.attention.", ".crossattention.self.", 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hf_to_lavis;

    #[test]
    fn maps_names() {
        let cases = [
            (
                "vision_model.embeddings.class_embedding",
                "visual_encoder.cls_token",
            ),
            (
                "vision_model.embeddings.patch_embedding.weight",
                "visual_encoder.patch_embed.proj.weight",
            ),
            (
                "vision_model.encoder.layers.3.layer_norm1.bias",
                "visual_encoder.blocks.3.norm1.bias",
            ),
            (
                "vision_model.encoder.layers.3.self_attn.q_bias",
                "visual_encoder.blocks.3.attn.q_bias",
            ),
            (
                "vision_model.encoder.layers.3.self_attn.projection.weight",
                "visual_encoder.blocks.3.attn.proj.weight",
            ),
            (
                "vision_model.encoder.layers.0.mlp.fc1.weight",
                "visual_encoder.blocks.0.mlp.fc1.weight",
            ),
            ("vision_model.post_layernorm.weight", "ln_vision.weight"),
            (
                "embeddings.word_embeddings.weight",
                "Qformer.bert.embeddings.word_embeddings.weight",
            ),
            ("qformer.layernorm.bias", "Qformer.bert.embeddings.LayerNorm.bias"),
            (
                "qformer.encoder.layer.2.attention.attention.query.weight",
                "Qformer.bert.encoder.layer.2.attention.self.query.weight",
            ),
            (
                "qformer.encoder.layer.2.crossattention.attention.key.bias",
                "Qformer.bert.encoder.layer.2.crossattention.self.key.bias",
            ),
            (
                "qformer.encoder.layer.2.crossattention.output.LayerNorm.weight",
                "Qformer.bert.encoder.layer.2.crossattention.output.LayerNorm.weight",
            ),
            (
                "qformer.encoder.layer.1.output_query.dense.weight",
                "Qformer.bert.encoder.layer.1.output_query.dense.weight",
            ),
            ("vision_projection.weight", "vision_proj.weight"),
            ("text_projection.bias", "text_proj.bias"),
            ("query_tokens", "query_tokens"),
        ];
        for (hf, lavis) in cases {
            assert_eq!(hf_to_lavis(hf), lavis, "{hf}");
        }
    }
}
