//! Writing a toy world to disk (CIRR and IPr2Pr layouts, scene captions, tokenizer).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use super::{render, Scene, ToySplit, ToyWorld};
use crate::cirr::CirrSplit;
use crate::error::{DataError, Entry, Result};
use crate::ipr2pr::{Prompt, PROMPT_FILE};
use crate::json::{kind, read_json_object, resolve};

/// Where [`ToyWorld::write`] put things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenWorld {
    /// The output directory.
    pub root: PathBuf,
    /// The CIRR-layout root (`<root>/cirr`): pass it to [`crate::cirr::CirrDataset::load`].
    pub cirr_root: PathBuf,
    /// The IPr2Pr-layout root (`<root>/ipr2pr`): pass it to [`crate::ipr2pr::Ipr2prDataset::load`].
    pub ipr2pr_root: PathBuf,
    /// `<root>/tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `<root>/world.json` (settings and counts).
    pub summary: PathBuf,
    /// Every CIRR-layout image written (train, val, test1 galleries in order).
    pub cirr_images: Vec<PathBuf>,
    /// Number of IPr2Pr images written.
    pub ipr2pr_images: usize,
}

impl WrittenWorld {
    /// The CIRR-layout image paths.
    pub fn image_paths(&self) -> Vec<PathBuf> {
        self.cirr_images.clone()
    }
}

/// `captions/scene.rc2.{split}.json` under a CIRR root: image name → scene caption.
pub fn scene_captions_path(cirr_root: &Path, split: CirrSplit) -> PathBuf {
    cirr_root
        .join("captions")
        .join(format!("scene.rc2.{}.json", split.name()))
}

/// Reads the scene captions (image name, caption) of a split of a written toy world, in file order.
pub fn load_scene_captions(cirr_root: impl AsRef<Path>, split: CirrSplit) -> Result<Vec<(String, String)>> {
    let path = scene_captions_path(cirr_root.as_ref(), split);
    read_json_object(&path)?
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(DataError::MalformedEntry {
                path: path.clone(),
                entry: Entry::Key(k),
                reason: format!("expected a caption string, found {}", kind(&other)),
            }),
        })
        .collect()
}

/// Serialises (key, value) pairs as a JSON object in the given order.
struct Ordered<'a, V>(&'a [(String, V)]);

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct CapOut<'a> {
    pairid: u64,
    reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_hard: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_soft: Option<BTreeMap<&'a str, f32>>,
    caption: &'a str,
    img_set: ImgSetOut<'a>,
}

#[derive(Serialize)]
struct ImgSetOut<'a> {
    id: u64,
    members: Vec<&'a str>,
    reference_rank: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_rank: Option<usize>,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let f = File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut w = BufWriter::new(f);
    serde_json::to_writer_pretty(&mut w, value).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    w.write_all(b"\n").map_err(|e| DataError::io(path, e))?;
    w.flush().map_err(|e| DataError::io(path, e))
}

#[derive(Clone, Copy)]
enum Format {
    Png,
    Jpeg(u8),
}

struct ImageJob<'a> {
    path: PathBuf,
    scene: &'a Scene,
    format: Format,
}

fn encode(job: &ImageJob<'_>, opts: &super::RenderOptions) -> Result<()> {
    let img = render(job.scene, opts);
    let f = File::create(&job.path).map_err(|e| DataError::io(&job.path, e))?;
    let mut w = BufWriter::new(f);
    let (wd, ht) = img.dimensions();
    let res = match job.format {
        Format::Png => PngEncoder::new_with_quality(&mut w, CompressionType::Fast, FilterType::Adaptive)
            .write_image(img.as_raw(), wd, ht, ExtendedColorType::Rgb8),
        Format::Jpeg(q) => JpegEncoder::new_with_quality(&mut w, q).write_image(
            img.as_raw(),
            wd,
            ht,
            ExtendedColorType::Rgb8,
        ),
    };
    res.map_err(|e| DataError::ImageWrite {
        path: job.path.clone(),
        source: Box::new(e),
    })?;
    w.flush().map_err(|e| DataError::io(&job.path, e))
}

/// Renders and writes images on all cores.
fn write_images(jobs: &[ImageJob<'_>], opts: &super::RenderOptions) -> Result<()> {
    let mut dirs: Vec<&Path> = jobs.iter().filter_map(|j| j.path.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
    }
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, 8);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> Result<()> {
                    for job in jobs.iter().skip(t).step_by(threads) {
                        encode(job, opts)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut first = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(DataError::InvalidConfig("an image writer thread panicked".into())));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

impl ToyWorld {
    /// Writes the world under `out` (which must be empty or absent):
    /// - `cirr/captions/cap.rc2.{train,val,test1}.json`, `cirr/image_splits/split.rc2.{..}.json`,
    ///   images `cirr/train/<n>/train-<i>.png`, `cirr/dev/dev-<i>.png`, `cirr/test1/test1-<i>.png`;
    /// - `cirr/captions/scene.rc2.{split}.json`: image name → scene caption;
    /// - `ipr2pr/<folder>/prompt.json` with `<seed>_0.jpg` / `<seed>_1.jpg`;
    /// - `tokenizer.json` and `world.json` (settings and counts).
    pub fn write(&self, out: impl AsRef<Path>) -> Result<WrittenWorld> {
        let root = out.as_ref().to_path_buf();
        if root.exists() {
            let mut rd = std::fs::read_dir(&root).map_err(|e| DataError::io(&root, e))?;
            if rd.next().is_some() {
                return Err(DataError::InvalidConfig(format!(
                    "output directory {} is not empty",
                    root.display()
                )));
            }
        }
        let cirr_root = root.join("cirr");
        let ipr2pr_root = root.join("ipr2pr");
        let mut jobs = Vec::new();
        let mut cirr_images = Vec::new();
        for split in &self.splits {
            self.write_split_annotations(&cirr_root, split)?;
            for img in &split.images {
                let path = resolve(&cirr_root, &img.rel_path);
                cirr_images.push(path.clone());
                jobs.push(ImageJob {
                    path,
                    scene: &img.scene,
                    format: Format::Png,
                });
            }
        }
        let jpeg = Format::Jpeg(self.config.jpeg_quality.clamp(1, 100));
        for p in &self.edit_pairs {
            let dir = ipr2pr_root.join(&p.folder);
            let prompt = Prompt {
                input: p.original.caption(),
                edit: p.instruction.clone(),
                output: p.edited.caption(),
            };
            write_json(&dir.join(PROMPT_FILE), &prompt)?;
            jobs.push(ImageJob {
                path: dir.join(format!("{}_0.jpg", p.seed)),
                scene: &p.original,
                format: jpeg,
            });
            jobs.push(ImageJob {
                path: dir.join(format!("{}_1.jpg", p.seed)),
                scene: &p.edited,
                format: jpeg,
            });
        }
        write_images(&jobs, &self.config.render_options())?;
        let tokenizer = root.join("tokenizer.json");
        super::write_tokenizer(&tokenizer)?;
        let summary = root.join("world.json");
        let counts: BTreeMap<&str, Value> = self
            .splits
            .iter()
            .map(|s| {
                (
                    s.split.name(),
                    serde_json::json!({"queries": s.queries.len(), "images": s.images.len()}),
                )
            })
            .collect();
        write_json(
            &summary,
            &serde_json::json!({
                "generator": "df-data toy world",
                "config": self.config,
                "cirr": counts,
                "ipr2pr": self.edit_pairs.len(),
                "vocabulary_size": super::vocabulary().len(),
            }),
        )?;
        Ok(WrittenWorld {
            root,
            cirr_root,
            ipr2pr_root,
            tokenizer,
            summary,
            cirr_images,
            ipr2pr_images: 2 * self.edit_pairs.len(),
        })
    }

    fn write_split_annotations(&self, cirr_root: &Path, split: &ToySplit) -> Result<()> {
        let hide = self.config.hide_test_targets && split.split == CirrSplit::Test1;
        let name = |i: usize| split.images.get(i).map_or("", |im| im.name.as_str());
        let captions: Vec<CapOut<'_>> = split
            .queries
            .iter()
            .map(|q| {
                let pos = |i: usize| q.members.iter().position(|m| *m == i).unwrap_or(0);
                CapOut {
                    pairid: q.pair_id,
                    reference: name(q.reference),
                    target_hard: (!hide).then(|| name(q.target)),
                    target_soft: (!hide).then(|| BTreeMap::from([(name(q.target), 1.0)])),
                    caption: &q.caption,
                    img_set: ImgSetOut {
                        id: q.pair_id,
                        members: q.members.iter().map(|m| name(*m)).collect(),
                        reference_rank: pos(q.reference),
                        target_rank: (!hide).then(|| pos(q.target)),
                    },
                }
            })
            .collect();
        write_json(&split.split.captions_path(cirr_root), &captions)?;
        let paths: Vec<(String, &str)> = split
            .images
            .iter()
            .map(|i| (i.name.clone(), i.rel_path.as_str()))
            .collect();
        write_json(&split.split.split_path(cirr_root), &Ordered(&paths))?;
        let scene_caps: Vec<(String, String)> = split
            .images
            .iter()
            .map(|i| (i.name.clone(), i.scene.caption()))
            .collect();
        write_json(
            &scene_captions_path(cirr_root, split.split),
            &Ordered(&scene_caps),
        )
    }
}
