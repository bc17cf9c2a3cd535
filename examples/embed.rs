//! Feature extraction with a BLIP-2 / SPRC checkpoint.
//!
//! ```sh
//! cargo run --release --example embed -- --model <dir|hub-id|.pth> --image <path> \
//!     --text "<text>" --out <file.safetensors>
//! ```
//!
//! Writes f32 tensors `image_embeds` `[Q, P]` (normalised image-mode features), `text_embeds`
//! `[P]` (normalised text features of the text alone) and `query_embeds` `[P]` (normalised
//! SPRC two-pass composed feature of image and text).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use detailfusion::encoders::{Blip2Model, ImageProcessor, LoadOptions, TextProcessor};

#[derive(Parser, Debug)]
#[command(about = "Extract BLIP-2 image, text and SPRC composed-query features")]
struct Args {
    /// Checkpoint: Hugging Face directory, hub repo id, or LAVIS/SPRC `.pth`/`.pt` file.
    #[arg(long)]
    model: String,
    /// Reference image (any format the `image` crate decodes).
    #[arg(long)]
    image: PathBuf,
    /// Modification text.
    #[arg(long)]
    text: String,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// tokenizer.json, when the checkpoint has none beside it.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

fn main() -> Result<()> {
    // Candle allocates per op; glibc would otherwise return and re-fault that memory each step.
    detailfusion::keep_freed_memory();
    let args = Args::parse();
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => anyhow::bail!("--dtype must be f32, f16 or bf16, not `{other}`"),
    };
    let device = Device::Cpu;
    let opts = LoadOptions {
        dtype,
        device: device.clone(),
        config: None,
    };
    let (model, ck) = Blip2Model::load(&args.model, &opts)?;
    let tokenizer = match &args.tokenizer {
        Some(p) => p.clone(),
        None => ck.tokenizer_path()?.to_path_buf(),
    };
    let text_proc = TextProcessor::from_file(&tokenizer)?;
    let image_proc = ImageProcessor::new(model.config().vision_config.image_size);

    let pixels = image_proc
        .preprocess_path(&args.image)?
        .unsqueeze(0)?
        .to_dtype(dtype)?;
    let text = text_proc.encode(&args.text, &device)?;
    let vision = model.vision_features(&pixels)?;
    let image_embeds = model.encoder.image_features(&vision)?.squeeze(0)?;
    let text_embeds = model
        .text_features(&text.input_ids, &text.attention_mask)?
        .squeeze(0)?;
    let query = model
        .encoder
        .composed_query(&vision, &text.input_ids, &text.attention_mask)?;
    let query_embeds = query.feature.squeeze(0)?;

    let tensors: HashMap<String, candle_core::Tensor> = [
        ("image_embeds", image_embeds),
        ("text_embeds", text_embeds),
        ("query_embeds", query_embeds),
    ]
    .into_iter()
    .map(|(k, v)| Ok((k.to_string(), v.to_dtype(DType::F32)?)))
    .collect::<Result<_>>()?;
    candle_core::safetensors::save(&tensors, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} (image_embeds {:?}, text_embeds {:?}, query_embeds {:?})",
        args.out.display(),
        tensors["image_embeds"].dims(),
        tensors["text_embeds"].dims(),
        tensors["query_embeds"].dims()
    );
    Ok(())
}
