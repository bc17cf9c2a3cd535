//! A procedural composed-image-retrieval world, wholly determined by a seed.
//!
//! Scenes are 1–4 coloured shapes on a 3×3 grid over a background ([`Scene`]); images are rendered
//! with a small rasteriser ([`render`]). From them the world builds:
//! - **composed queries** (CIRR analogue): a reference scene, 1–3 atomic edits described in free
//!   text ("make the red circle blue and remove the square") and the target scene; each query has a
//!   candidate set of 6 (reference, target and 4 hard negatives that differ from the target in
//!   exactly one detail, preferably a detail the text talks about), all in the split's gallery;
//! - **atomic edit pairs** (IPr2Pr analogue): (original, instruction, edited) with one edit;
//! - **scene captions** ("a large red circle in the top left and a small blue square in the centre
//!   on a grey background") for image–text pretraining;
//! - a WordPiece **tokenizer** over the world's vocabulary ([`build_tokenizer`]).
//!
//! Splits have disjoint scene configurations: a scene belongs to the split that its key hashes to
//! ([`split_of`]), and every scene of a split's queries (reference, target, negatives) belongs to
//! that split; the IPr2Pr pairs use train scenes only. Each split is generated from its own stream
//! `(seed, split name)`, so changing one split's size does not change the others.
//!
//! [`ToyWorld::write`] writes the world in the CIRR layout and the IPr2Pr folder layout, which the
//! loaders of [`crate::cirr`] and [`crate::ipr2pr`] read back.
//!
//! ```no_run
//! use df_data::toy::{ToyConfig, ToyWorld};
//! let world = ToyWorld::generate(&ToyConfig::default().with_counts(100, 20, 20))?;
//! let written = world.write("/tmp/toy")?;
//! let val = df_data::cirr::CirrDataset::load(&written.cirr_root, df_data::cirr::CirrSplit::Val, &Default::default())?;
//! # Ok::<(), df_data::DataError>(())
//! ```

mod render;
mod scene;
mod text;
mod tokenizer;
mod write;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use render::{render, RenderOptions};
pub use scene::{cell_name, cell_phrase, Background, Colour, Edit, Object, Scene, Shape, Size, CELLS, GRID};
pub use text::{compose, instruction, refer, words};
pub use tokenizer::{build_tokenizer, vocabulary, write_tokenizer, SPECIAL_TOKENS};
pub use write::{load_scene_captions, scene_captions_path, WrittenWorld};

use crate::cirr::CirrSplit;
use crate::error::{DataError, Result};
use crate::rng::{mix64, Rng};

/// Settings of a toy world. Every field has a default; [`ToyConfig::with_counts`] sets the sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToyConfig {
    /// The seed that determines everything.
    pub seed: u64,
    /// Image side in pixels (default 64).
    pub image_size: u32,
    /// Composed queries in the train split.
    pub train: usize,
    /// Composed queries in the val split.
    pub val: usize,
    /// Composed queries in the test split.
    pub test: usize,
    /// Atomic edit pairs (IPr2Pr analogue), from train scenes.
    pub ipr2pr: usize,
    /// Fewest objects in a scene (≥ 1).
    pub min_objects: usize,
    /// Most objects in a scene (≤ 9).
    pub max_objects: usize,
    /// Most atomic edits in a composed query (≥ 1; each query has 1..=max_edits).
    pub max_edits: usize,
    /// Hard negatives per query (CIRR: 4, for candidate sets of 6).
    pub negatives: usize,
    /// Fractions of the scene space assigned to train, val and test.
    pub split_fractions: [f64; 3],
    /// Allow background-colour edits.
    pub background_edits: bool,
    /// Write test1 captions without targets, like the public CIRR release (default: keep them).
    pub hide_test_targets: bool,
    /// JPEG quality of the IPr2Pr images.
    pub jpeg_quality: u8,
    /// Object position jitter, as a fraction of a cell.
    pub jitter: f32,
    /// Colour jitter per channel.
    pub colour_jitter: u8,
}

impl Default for ToyConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            image_size: 64,
            train: 1000,
            val: 200,
            test: 200,
            ipr2pr: 1000,
            min_objects: 1,
            max_objects: 4,
            max_edits: 3,
            negatives: 4,
            split_fractions: [0.7, 0.15, 0.15],
            background_edits: true,
            hide_test_targets: false,
            jpeg_quality: 95,
            jitter: 0.08,
            colour_jitter: 12,
        }
    }
}

impl ToyConfig {
    /// Sets the number of queries per split (and as many IPr2Pr pairs as train queries).
    pub fn with_counts(mut self, train: usize, val: usize, test: usize) -> Self {
        self.train = train;
        self.val = val;
        self.test = test;
        self.ipr2pr = train;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The number of queries of `split`.
    pub fn count(&self, split: CirrSplit) -> usize {
        match split {
            CirrSplit::Train => self.train,
            CirrSplit::Val => self.val,
            CirrSplit::Test1 => self.test,
        }
    }

    /// The render settings.
    pub fn render_options(&self) -> RenderOptions {
        RenderOptions {
            size: self.image_size,
            jitter: self.jitter,
            colour_jitter: self.colour_jitter,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::InvalidConfig(m));
        if !(16..=4096).contains(&self.image_size) {
            return bad(format!("image_size {} outside 16..=4096", self.image_size));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return bad(format!("jitter {} outside [0, 0.5]", self.jitter));
        }
        if self.min_objects < 1
            || self.min_objects > self.max_objects
            || self.max_objects > usize::from(CELLS)
        {
            return bad(format!(
                "need 1 <= min_objects ({}) <= max_objects ({}) <= {CELLS}",
                self.min_objects, self.max_objects
            ));
        }
        if self.max_edits < 1 {
            return bad("max_edits must be at least 1".into());
        }
        if self.negatives > 16 {
            return bad(format!("negatives {} > 16", self.negatives));
        }
        let f = self.split_fractions;
        if f.iter().any(|x| !x.is_finite() || *x < 0.0) || f.iter().sum::<f64>() <= 0.0 {
            return bad(format!("invalid split_fractions {f:?}"));
        }
        for (split, frac) in CirrSplit::ALL.iter().zip(f) {
            if frac == 0.0 && self.count(*split) > 0 {
                return bad(format!("{split} has queries but a split fraction of 0"));
            }
        }
        if self.ipr2pr > 0 && f[0] == 0.0 {
            return bad("ipr2pr pairs need a non-zero train fraction".into());
        }
        Ok(())
    }
}

/// The split a scene belongs to: its key hashed to `[0, 1)` against the cumulative
/// `fractions` (train, val, test). Independent of the seed.
pub fn split_of(scene: &Scene, fractions: [f64; 3]) -> CirrSplit {
    let total: f64 = fractions.iter().sum();
    let u = (mix64(scene.hash64() ^ SPLIT_SALT) >> 11) as f64 / (1u64 << 53) as f64 * total;
    if u < fractions[0] {
        CirrSplit::Train
    } else if u < fractions[0] + fractions[1] {
        CirrSplit::Val
    } else {
        CirrSplit::Test1
    }
}

/// Salt of the split hash (fixed: a scene's split does not depend on the seed).
const SPLIT_SALT: u64 = 0x5eed_0f5b_1175;

/// One image of a split: a scene with its CIRR-style name and relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyImage {
    /// Image name (`train-12`, `dev-3`, `test1-7`).
    pub name: String,
    /// Path relative to the CIRR root (`./dev/dev-3.png`).
    pub rel_path: String,
    /// The scene.
    pub scene: Scene,
}

/// A hard negative of a query: the target changed by one atomic edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToyNegative {
    /// Index of the image in the split.
    pub image: usize,
    /// The edit that turns the target into this image.
    pub edit: Edit,
}

/// A composed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyQuery {
    /// Pair id (unique over the world).
    pub pair_id: u64,
    /// Index of the reference image in the split.
    pub reference: usize,
    /// Index of the target image in the split.
    pub target: usize,
    /// The atomic edits, in order, that turn the reference into the target.
    pub edits: Vec<Edit>,
    /// The modification text.
    pub caption: String,
    /// The hard negatives.
    pub negatives: Vec<ToyNegative>,
    /// The candidate set (image indices, shuffled): reference, target and negatives.
    pub members: Vec<usize>,
}

/// One split of the world.
#[derive(Debug, Clone, PartialEq)]
pub struct ToySplit {
    /// The split.
    pub split: CirrSplit,
    /// The gallery: every distinct scene used by the split's queries.
    pub images: Vec<ToyImage>,
    /// The composed queries.
    pub queries: Vec<ToyQuery>,
}

/// An atomic edit pair (IPr2Pr analogue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyEditPair {
    /// Folder name (`0000042`).
    pub folder: String,
    /// Image seed (the `<seed>` of `<seed>_0.jpg`).
    pub seed: u32,
    /// The original scene.
    pub original: Scene,
    /// The edit.
    pub edit: Edit,
    /// The instruction.
    pub instruction: String,
    /// The edited scene.
    pub edited: Scene,
}

/// A generated world.
#[derive(Debug, Clone, PartialEq)]
pub struct ToyWorld {
    /// The settings it was generated from.
    pub config: ToyConfig,
    /// Train, val and test1, in that order.
    pub splits: Vec<ToySplit>,
    /// The IPr2Pr-like edit pairs.
    pub edit_pairs: Vec<ToyEditPair>,
}

/// Attempts before giving up on a query (only reachable with extreme settings).
const MAX_ATTEMPTS: usize = 10_000;

struct Gen<'a> {
    cfg: &'a ToyConfig,
    split: CirrSplit,
    rng: Rng,
}

impl Gen<'_> {
    fn in_split(&self, s: &Scene) -> bool {
        split_of(s, self.cfg.split_fractions) == self.split
    }

    fn random_edit(&mut self, scene: &Scene, locked: &[u8], background: bool) -> Option<Edit> {
        Edit::random(
            &mut self.rng,
            scene,
            locked,
            self.cfg.min_objects,
            self.cfg.max_objects,
            background,
        )
    }

    fn scene(&mut self) -> Result<Scene> {
        for _ in 0..MAX_ATTEMPTS {
            let s = Scene::random(&mut self.rng, self.cfg.min_objects, self.cfg.max_objects);
            if self.in_split(&s) {
                return Ok(s);
            }
        }
        Err(DataError::InvalidConfig(format!(
            "could not draw a {} scene; is its split fraction tiny?",
            self.split
        )))
    }

    /// Reference → (target, edits, caption, touched cells).
    fn composed(&mut self, reference: &Scene) -> Option<(Scene, Vec<Edit>, String, Vec<u8>)> {
        let k = self.rng.range_inclusive(1, self.cfg.max_edits);
        let mut cur = reference.clone();
        let mut locked = Vec::new();
        let mut edits = Vec::with_capacity(k);
        let mut texts = Vec::with_capacity(k);
        let mut background = self.cfg.background_edits;
        for _ in 0..k {
            let mut done = false;
            for _ in 0..8 {
                let Some(edit) = self.random_edit(&cur, &locked, background) else {
                    break;
                };
                let (Some(next), Some(text)) = (
                    cur.apply(&edit),
                    instruction(&mut self.rng, &edit, reference, &cur),
                ) else {
                    continue;
                };
                match edit.touched_cell() {
                    Some(c) => locked.push(c),
                    None => background = false,
                }
                if let Some(c) = edit.source_cell() {
                    locked.push(c);
                }
                edits.push(edit);
                texts.push(text);
                cur = next;
                done = true;
                break;
            }
            if !done {
                break;
            }
        }
        if edits.is_empty() || cur == *reference || !self.in_split(&cur) {
            return None;
        }
        let caption = compose(&mut self.rng, &texts);
        Some((cur, edits, caption, locked))
    }

    /// Scenes one edit away from `target`, none equal to the reference; half of them edit a cell
    /// the query touched.
    fn negatives(&mut self, reference: &Scene, target: &Scene, touched: &[u8]) -> Option<Vec<(Scene, Edit)>> {
        let n = self.cfg.negatives;
        let untouched: Vec<u8> = (0..CELLS).filter(|c| !touched.contains(c)).collect();
        let mut out: Vec<(Scene, Edit)> = Vec::with_capacity(n);
        for attempt in 0..(n * 60) {
            if out.len() == n {
                break;
            }
            let focused = attempt % 2 == 0 && !touched.is_empty();
            let locked: &[u8] = if focused { &untouched } else { &[] };
            let Some(edit) = self.random_edit(target, locked, self.cfg.background_edits) else {
                continue;
            };
            let Some(s) = target.apply(&edit) else { continue };
            if s == *reference || s == *target || out.iter().any(|(o, _)| *o == s) || !self.in_split(&s) {
                continue;
            }
            out.push((s, edit));
        }
        (out.len() == n).then_some(out)
    }
}

fn image_name(split: CirrSplit, i: usize) -> (String, String) {
    let name = format!("{}-{i}", split.image_prefix());
    let rel = match split {
        CirrSplit::Train => format!("./train/{}/{name}.png", i / 1000),
        _ => format!("./{}/{name}.png", split.image_prefix()),
    };
    (name, rel)
}

fn generate_split(cfg: &ToyConfig, split: CirrSplit, first_pair_id: u64) -> Result<ToySplit> {
    let mut g = Gen {
        cfg,
        split,
        rng: Rng::derive_str(cfg.seed, split.name()),
    };
    let mut images: Vec<ToyImage> = Vec::new();
    let mut by_key: HashMap<u128, usize> = HashMap::new();
    let mut intern = |scene: Scene| -> usize {
        *by_key.entry(scene.key()).or_insert_with(|| {
            let (name, rel_path) = image_name(split, images.len());
            images.push(ToyImage {
                name,
                rel_path,
                scene,
            });
            images.len() - 1
        })
    };
    let mut queries = Vec::with_capacity(cfg.count(split));
    for q in 0..cfg.count(split) {
        let mut made = None;
        for _ in 0..MAX_ATTEMPTS {
            let reference = g.scene()?;
            let Some((target, edits, caption, touched)) = g.composed(&reference) else {
                continue;
            };
            let Some(negs) = g.negatives(&reference, &target, &touched) else {
                continue;
            };
            made = Some((reference, target, edits, caption, negs));
            break;
        }
        let Some((reference, target, edits, caption, negs)) = made else {
            return Err(DataError::InvalidConfig(format!(
                "could not generate {split} query {q}: too few objects or negatives for these settings"
            )));
        };
        let r = intern(reference);
        let t = intern(target);
        let negatives: Vec<ToyNegative> = negs
            .into_iter()
            .map(|(s, edit)| ToyNegative {
                image: intern(s),
                edit,
            })
            .collect();
        let mut members: Vec<usize> = [r, t]
            .into_iter()
            .chain(negatives.iter().map(|n| n.image))
            .collect();
        g.rng.shuffle(&mut members);
        queries.push(ToyQuery {
            pair_id: first_pair_id + q as u64,
            reference: r,
            target: t,
            edits,
            caption,
            negatives,
            members,
        });
    }
    Ok(ToySplit {
        split,
        images,
        queries,
    })
}

fn generate_edit_pairs(cfg: &ToyConfig) -> Result<Vec<ToyEditPair>> {
    let mut g = Gen {
        cfg,
        split: CirrSplit::Train,
        rng: Rng::derive_str(cfg.seed, "ipr2pr"),
    };
    let mut out = Vec::with_capacity(cfg.ipr2pr);
    for i in 0..cfg.ipr2pr {
        let mut made = None;
        for _ in 0..MAX_ATTEMPTS {
            let original = g.scene()?;
            let Some(edit) = g.random_edit(&original, &[], cfg.background_edits) else {
                continue;
            };
            let Some(edited) = original.apply(&edit) else {
                continue;
            };
            if !g.in_split(&edited) {
                continue;
            }
            let Some(instruction) = instruction(&mut g.rng, &edit, &original, &original) else {
                continue;
            };
            made = Some((original, edit, edited, instruction));
            break;
        }
        let Some((original, edit, edited, instruction)) = made else {
            return Err(DataError::InvalidConfig(format!(
                "could not generate edit pair {i}"
            )));
        };
        out.push(ToyEditPair {
            folder: format!("{i:07}"),
            seed: (g.rng.next_u64() % 1_000_000_000) as u32,
            original,
            edit,
            instruction,
            edited,
        });
    }
    Ok(out)
}

impl ToyWorld {
    /// Generates a world (no file is written).
    pub fn generate(cfg: &ToyConfig) -> Result<Self> {
        cfg.validate()?;
        let mut splits = Vec::with_capacity(3);
        let mut next_id = 0u64;
        for split in CirrSplit::ALL {
            let s = generate_split(cfg, split, next_id)?;
            next_id += s.queries.len() as u64;
            splits.push(s);
        }
        Ok(Self {
            config: cfg.clone(),
            splits,
            edit_pairs: generate_edit_pairs(cfg)?,
        })
    }

    /// The data of `split`.
    pub fn split(&self, split: CirrSplit) -> Option<&ToySplit> {
        self.splits.iter().find(|s| s.split == split)
    }

    /// Renders a scene with the world's settings.
    pub fn render(&self, scene: &Scene) -> image::RgbImage {
        render(scene, &self.config.render_options())
    }

    /// Every text of the world: query captions, scene captions of all gallery images, and the
    /// edit pairs' instructions and captions.
    pub fn texts(&self) -> Vec<String> {
        let mut v = Vec::new();
        for s in &self.splits {
            v.extend(s.queries.iter().map(|q| q.caption.clone()));
            v.extend(s.images.iter().map(|i| i.scene.caption()));
        }
        for p in &self.edit_pairs {
            v.push(p.instruction.clone());
            v.push(p.original.caption());
            v.push(p.edited.caption());
        }
        v
    }
}
