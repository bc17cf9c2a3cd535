//! Composed image retrieval: a reference image plus a modification text, against a gallery.
//!
//! ```sh
//! # the demo: the shipped toy model, a generated gallery, a few queries, contact sheets
//! cargo run --release --example retrieve
//! # your own images
//! cargo run --release --example retrieve -- --model weights/demo --gallery photos/ \
//!     --image photos/cat.png --text "make it black" -k 10 --out results.png
//! # the same gallery in an approximate (usearch) or a Milvus index
//! cargo run --release --features usearch --example retrieve -- ... --index usearch:photos.usearch
//! cargo run --release --features milvus --example retrieve -- ... --index milvus://127.0.0.1:19530/photos
//! # search an existing index (any backend) directly; --root is where its images are
//! cargo run --release --example retrieve -- --gallery photos.safetensors --image ... --text ...
//! ```

mod sheet;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use detailfusion::data::cirr::CirrSplit;
use detailfusion::data::toy::{ToyConfig, ToyWorld};
use detailfusion::index::{
    create_index, open_index, open_or_create_index, BackendOptions, FeatureDType, GalleryIndex, Hit,
    IndexInfo, IndexOptions, IndexUri, SearchOptions,
};
use detailfusion::{DetailFusion, TextProcessor};
use image::RgbImage;

#[derive(Parser, Debug)]
#[command(about = "Composed image retrieval with DetailFusion")]
struct Args {
    /// A saved DetailFusion model directory, or a BLIP-2 checkpoint (directory, hub id, .pth).
    #[arg(long)]
    model: Option<String>,
    /// A folder of images, or an existing index: a flat index file (`.safetensors`),
    /// `usearch:<path>` or `milvus://host:port/collection`.
    #[arg(long)]
    gallery: Option<PathBuf>,
    /// Where to keep the index of a gallery folder: a path (flat), `usearch:<path>` or
    /// `milvus://host:port/collection` (default: a flat file in --cache-dir). New images in the
    /// folder are encoded and added on each run.
    #[arg(long)]
    index: Option<String>,
    /// The folder the names in an index given as --gallery are relative to (for the contact
    /// sheets; default: the index file's folder, or `.` for Milvus).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The reference image.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The modification text.
    #[arg(long)]
    text: Option<String>,
    /// Results per query.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Write the results: `.png` (contact sheet) or `.json`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the demo keeps its gallery, index and pictures.
    #[arg(long, default_value = "target/detailfusion-demo")]
    cache_dir: PathBuf,
    /// Demo queries to run.
    #[arg(long, default_value_t = 4)]
    demo_queries: usize,
}

fn demo_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/demo")
}

/// A saved DetailFusion model, or a BLIP-2 checkpoint turned into one (zero-shot).
fn load_model(spec: &str) -> Result<(DetailFusion, TextProcessor, bool)> {
    let dir = Path::new(spec);
    let saved = dir.join(detailfusion::CONFIG_FILE);
    let is_detailfusion = std::fs::read_to_string(&saved)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("blip2").is_some());
    let device = Device::Cpu;
    let (model, tokenizer) = if is_detailfusion {
        (DetailFusion::load(dir, &device)?, dir.join("tokenizer.json"))
    } else {
        let ck = detailfusion::Checkpoint::resolve(spec, &Default::default())?;
        let tok = ck.tokenizer_path()?.to_path_buf();
        (DetailFusion::from_blip2(spec, None, &device)?, tok)
    };
    let text = TextProcessor::from_file(&tokenizer)?.with_max_txt_len(model.config().max_txt_len)?;
    Ok((model, text, !is_detailfusion))
}

/// Opens the index of `gallery` (a folder, indexed into `index` or a cached flat file, or an
/// index location itself) and returns it with the folder its names are relative to.
fn open_gallery(
    model: &DetailFusion,
    gallery: &Path,
    index: Option<&str>,
    root: Option<&Path>,
    cache: &Path,
) -> Result<(Box<dyn GalleryIndex>, PathBuf)> {
    let opts = BackendOptions::default();
    if !gallery.is_dir() {
        let uri = gallery.to_string_lossy();
        let index = open_index(&uri, &opts)?;
        index.check_model(model)?;
        let root = match (root, IndexUri::parse(&uri)?) {
            (Some(r), _) => r.to_path_buf(),
            (None, IndexUri::Flat(p) | IndexUri::Usearch(p)) => {
                p.parent().unwrap_or(Path::new(".")).to_path_buf()
            }
            (None, IndexUri::Milvus { .. }) => PathBuf::from("."),
        };
        return Ok((index, root));
    }
    let info = IndexInfo::for_model(model, FeatureDType::F32);
    let (uri, cached) = match index {
        Some(u) => (u.to_string(), false),
        None => {
            std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
            let file = cache.join(format!("index-{}.safetensors", model.fingerprint()));
            (file.to_string_lossy().into_owned(), true)
        }
    };
    let mut index = match open_or_create_index(&uri, info.clone(), &opts) {
        Ok(index) => index,
        Err(e) if cached => {
            // A damaged cache is rebuilt.
            eprintln!("rebuilding the cached index ({e})");
            std::fs::remove_file(&uri).with_context(|| format!("removing {uri}"))?;
            create_index(&uri, info, &opts)?
        }
        Err(e) => return Err(e.into()),
    };
    // Encode only the images the index does not hold yet.
    let report = index.add_folder(model, gallery, &IndexOptions::default())?;
    for f in &report.failed {
        eprintln!("skipped {}: {}", f.path.display(), f.message);
    }
    if index.is_empty() {
        bail!("gallery {}: no images found", gallery.display());
    }
    if !report.indexed.is_empty() {
        index.persist()?;
        eprintln!("{} index of {} images at {uri}", index.backend(), index.len());
    }
    Ok((index, gallery.to_path_buf()))
}

struct Query {
    image: PathBuf,
    text: String,
    exclude: Option<String>,
    target: Option<String>,
}

fn run_queries(
    model: &DetailFusion,
    text: &TextProcessor,
    index: &dyn GalleryIndex,
    queries: &[Query],
    k: usize,
) -> Result<Vec<(Vec<Hit>, [f32; 2])>> {
    // Query images are decoded here so that a broken one is named before any work.
    let proc = &model.config().image_processor;
    let pixels: Vec<Tensor> = queries
        .iter()
        .map(|q| proc.preprocess_path(&q.image))
        .collect::<std::result::Result<_, _>>()?;
    let pixels = Tensor::stack(&pixels, 0)?;
    let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
    let tb = text.encode_batch(&texts, model.device())?;
    let q = model.encode_queries(&pixels, &tb.input_ids, &tb.attention_mask)?;
    let opts = SearchOptions::top(k).excluding(queries.iter().map(|q| q.exclude.clone()));
    let hits = index.search(model, &q, &opts)?;
    let weights: Vec<Vec<f32>> = q.weights.to_vec2()?;
    Ok(hits
        .into_iter()
        .zip(weights)
        .map(|(h, w)| (h, [w[0], w[1]]))
        .collect())
}

fn print_results(q: &Query, hits: &[Hit], w: [f32; 2]) {
    println!("\nquery: {}  +  \"{}\"", q.image.display(), q.text);
    println!("fusion weights: DI {:.3}  GM {:.3}", w[0], w[1]);
    for (i, h) in hits.iter().enumerate() {
        let mark = if q.target.as_deref() == Some(h.name.as_str()) {
            "  <- target"
        } else {
            ""
        };
        println!("  {:>2}. {:<28} {:.4}{mark}", i + 1, h.name, h.score);
    }
    if let Some(t) = &q.target {
        if !hits.iter().any(|h| &h.name == t) {
            println!("  (target {t} not in the top {})", hits.len());
        }
    }
}

fn load_rgb(path: &Path, size: u32) -> Result<RgbImage> {
    let img = detailfusion::encoders::image_processing::open_image(path)?.to_rgb8();
    Ok(image::imageops::resize(
        &img,
        size,
        size,
        image::imageops::FilterType::Triangle,
    ))
}

fn write_sheet(q: &Query, hits: &[Hit], w: [f32; 2], root: &Path, out: &Path) -> Result<()> {
    let tile = 128;
    let reference = load_rgb(&q.image, tile)?;
    let images: Vec<RgbImage> = hits
        .iter()
        .take(5)
        .map(|h| load_rgb(&root.join(&h.name), tile))
        .collect::<Result<_>>()?;
    let tiles: Vec<sheet::Tile> = hits
        .iter()
        .zip(&images)
        .enumerate()
        .map(|(i, (h, img))| sheet::Tile {
            image: img,
            caption: format!("#{} {:.3}", i + 1, h.score),
            correct: q.target.as_deref() == Some(h.name.as_str()),
        })
        .collect();
    let footer = format!("DI {:.2} / GM {:.2}", w[0], w[1]);
    sheet::contact_sheet(&reference, &q.text, &footer, &tiles)
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn write_json(q: &Query, hits: &[Hit], w: [f32; 2], out: &Path) -> Result<()> {
    let json = serde_json::json!({
        "image": q.image, "text": q.text, "fusion_weights": {"di": w[0], "gm": w[1]},
        "results": hits.iter().map(|h| serde_json::json!({"name": h.name, "score": h.score})).collect::<Vec<_>>(),
    });
    std::fs::write(out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", out.display()))
}

/// The demo gallery: the test split of the toy world the demo model was trained on, written
/// as PNGs once.
fn demo_gallery(cache: &Path, n_queries: usize) -> Result<(PathBuf, Vec<Query>)> {
    let preset_path = demo_model_dir().join("toy_preset.json");
    let preset: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&preset_path)
            .with_context(|| format!("reading {}", preset_path.display()))?,
    )?;
    let world_cfg: ToyConfig = serde_json::from_value(preset["world"].clone())?;
    let world = ToyWorld::generate(&world_cfg)?;
    let split = world
        .split(CirrSplit::Test1)
        .context("the toy world has no test split")?;
    let dir = cache.join("gallery");
    std::fs::create_dir_all(&dir)?;
    for img in &split.images {
        let path = dir.join(format!("{}.png", img.name));
        if !path.exists() {
            world
                .render(&img.scene)
                .save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    // Queries spread over the split, deterministic.
    let step = (split.queries.len() / n_queries.max(1)).max(1);
    let queries = split
        .queries
        .iter()
        .step_by(step)
        .take(n_queries)
        .map(|q| {
            let name = |i: usize| format!("{}.png", split.images[i].name);
            Query {
                image: dir.join(name(q.reference)),
                text: q.caption.clone(),
                exclude: Some(name(q.reference)),
                target: Some(name(q.target)),
            }
        })
        .collect();
    Ok((dir, queries))
}

fn main() -> Result<()> {
    // Candle allocates per op; glibc would otherwise return and re-fault that memory each step.
    detailfusion::keep_freed_memory();
    let args = Args::parse();
    let started = std::time::Instant::now();
    let spec = args
        .model
        .clone()
        .unwrap_or_else(|| demo_model_dir().to_string_lossy().into_owned());
    let (model, text, zero_shot) = load_model(&spec)?;
    if zero_shot {
        println!(
            "note: {spec} is a BLIP-2 checkpoint: zero-shot SPRC-style retrieval, the fusion is untrained"
        );
    }
    let (gallery, queries) = match (&args.gallery, &args.image, &args.text) {
        (None, None, None) => {
            if args.model.is_some() {
                bail!("the demo gallery belongs to the demo model; give --gallery, --image and --text");
            }
            if let Ok(m) = std::fs::read_to_string(demo_model_dir().join("metrics.json")) {
                let m: serde_json::Value = serde_json::from_str(&m)?;
                println!(
                    "demo model on its toy test split: R@1 {:.1}  R@5 {:.1}  R@10 {:.1}  Rsubset@1 {:.1}",
                    m["recall_at1"].as_f64().unwrap_or(f64::NAN),
                    m["recall_at5"].as_f64().unwrap_or(f64::NAN),
                    m["recall_at10"].as_f64().unwrap_or(f64::NAN),
                    m["recall_subset_at1"].as_f64().unwrap_or(f64::NAN),
                );
            }
            demo_gallery(&args.cache_dir, args.demo_queries)?
        }
        (Some(g), Some(image), Some(t)) => {
            if !image.is_file() {
                bail!("--image {}: no such file", image.display());
            }
            let q = Query {
                image: image.clone(),
                text: t.clone(),
                exclude: None,
                target: None,
            };
            (g.clone(), vec![q])
        }
        _ => bail!("give all of --gallery, --image and --text, or none of them for the demo"),
    };
    let (index, root) = open_gallery(
        &model,
        &gallery,
        args.index.as_deref(),
        args.root.as_deref(),
        &args.cache_dir,
    )?;
    let mut queries = queries;
    for q in &mut queries {
        // Leave the reference out of its own results when it is in the gallery.
        if q.exclude.is_none() {
            q.exclude = q
                .image
                .strip_prefix(&root)
                .ok()
                .map(|p| p.to_string_lossy().replace('\\', "/"));
        }
    }
    let results = run_queries(&model, &text, index.as_ref(), &queries, args.k)?;
    for (i, (q, (hits, w))) in queries.iter().zip(&results).enumerate() {
        print_results(q, hits, *w);
        let out = match &args.out {
            Some(o) => o.clone(),
            None => args.cache_dir.join(format!("query-{i}.png")),
        };
        if out.extension().is_some_and(|e| e == "json") {
            write_json(q, hits, *w, &out)?;
        } else {
            write_sheet(q, hits, *w, &root, &out)?;
        }
        println!("  -> {}", out.display());
    }
    let known: Vec<bool> = queries
        .iter()
        .zip(&results)
        .filter_map(|(q, (hits, _))| q.target.as_ref().map(|t| hits.iter().any(|h| &h.name == t)))
        .collect();
    if !known.is_empty() {
        // Four queries are a small sample: the split's R@10 above is the measure.
        let found = known.iter().filter(|&&f| f).count();
        println!(
            "\ntarget in the top {} for {found} of {} queries",
            args.k,
            known.len()
        );
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
