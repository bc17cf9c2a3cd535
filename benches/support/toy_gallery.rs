//! A large toy gallery encoded by the shipped demo model, with the toy test split's composed
//! queries: real model features for the approximate-search benchmark.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use detailfusion::data::cirr::CirrSplit;
use detailfusion::data::toy::{Scene, ToyWorld};
use detailfusion::data::Rng;
use detailfusion::encoders::ImageProcessor;
use detailfusion::toy::{ToyData, ToyPreset};
use detailfusion::DetailFusion;

/// Gallery features `[n, q, p]` flattened, with their names and the composed queries `[b, p]`.
pub struct ToyGallery {
    pub names: Vec<String>,
    pub values: Vec<f32>,
    pub q: usize,
    pub p: usize,
    pub queries: Tensor,
}

/// The demo world's test split (its images and its 300 queries) plus random scenes of the
/// same world up to `images` gallery images, all encoded by the demo model.
pub fn toy_gallery(images: usize, demo: &Path) -> ToyGallery {
    let dev = Device::Cpu;
    let t = Instant::now();
    let model = DetailFusion::load(demo, &dev).unwrap();
    let preset: ToyPreset =
        serde_json::from_str(&std::fs::read_to_string(demo.join("toy_preset.json")).unwrap()).unwrap();
    let data = ToyData::generate_splits(&preset.world, &[CirrSplit::Test1], false, &dev).unwrap();
    let split = data.world.split(CirrSplit::Test1).unwrap();

    // Composed queries: each test query's reference image and modification text.
    let mut queries = Vec::new();
    for chunk in split.queries.chunks(64) {
        let rows: Vec<usize> = chunk
            .iter()
            .map(|q| data.row(&split.images[q.reference].scene))
            .collect();
        let refs = data.pixels(&rows).unwrap();
        let texts: Vec<&str> = chunk.iter().map(|q| q.caption.as_str()).collect();
        let tb = data.text.encode_batch(&texts, &dev).unwrap();
        let qf = model
            .encode_queries(&refs, &tb.input_ids, &tb.attention_mask)
            .unwrap();
        queries.push(qf.feature);
    }
    let queries = Tensor::cat(&queries, 0).unwrap();

    // Gallery: the split's images first, then distractor scenes drawn like the world's.
    let world: &ToyWorld = &data.world;
    let mut scenes: Vec<Scene> = split.images.iter().map(|i| i.scene.clone()).collect();
    let mut rng = Rng::new(0xD157_AC70);
    let (lo, hi) = (preset.world.min_objects, preset.world.max_objects);
    while scenes.len() < images {
        scenes.push(Scene::random(&mut rng, lo, hi));
    }
    scenes.truncate(images.max(split.images.len()));
    let proc = ImageProcessor::new(preset.world.image_size as usize);
    let s = preset.world.image_size as usize;
    let (mut names, mut values) = (Vec::with_capacity(scenes.len()), Vec::new());
    let (mut q, mut p) = (0, 0);
    for (c, chunk) in scenes.chunks(512).enumerate() {
        let mut px = Vec::with_capacity(chunk.len() * proc.values_per_image());
        for scene in chunk {
            px.extend(proc.preprocess_rgb_to_vec(&world.render(scene)).unwrap());
        }
        let px = Tensor::from_vec(px, (chunk.len(), 3, s, s), &dev).unwrap();
        let tokens = model.encode_images(&px).unwrap().tokens;
        (q, p) = (tokens.dim(1).unwrap(), tokens.dim(2).unwrap());
        values.extend(tokens.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        names.extend((0..chunk.len()).map(|i| format!("toy{:06}.png", c * 512 + i)));
    }
    eprintln!(
        "toy gallery: {} images ({} token vectors of {p}) and {} queries encoded in {:.1} s",
        names.len(),
        names.len() * q,
        queries.dim(0).unwrap(),
        t.elapsed().as_secs_f64()
    );
    ToyGallery {
        names,
        values,
        q,
        p,
        queries,
    }
}
