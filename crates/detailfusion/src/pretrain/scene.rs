//! [design] Toy stage 0 only: dense scene parsing as an auxiliary loss. Linear heads predict
//! each grid cell's shape, colour and size (or "empty") from the ViT's cell-averaged patch
//! tokens, from the image's projected query tokens and from the caption's projected text
//! feature. With contrastive captions alone, a tiny from-scratch BLIP-2 matches scenes by colour
//! and background and ignores shapes and positions, which pretrained BLIP-2 models do see.
//! The heads are not part of the saved checkpoint.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use df_data::toy::{Colour, Shape, Size, CELLS, GRID};
use df_encoders::Blip2Config;
use serde::{Deserialize, Serialize};

/// Classes per cell label: shape, colour and size, each with "empty" as class 0.
const CELL_CLASSES: [usize; 3] = [Shape::ALL.len() + 1, Colour::ALL.len() + 1, Size::ALL.len() + 1];
const PER_CELL: usize = CELL_CLASSES[0] + CELL_CLASSES[1] + CELL_CLASSES[2];
const N_CELLS: usize = CELLS as usize;

/// [design] Which features stage 0's scene-parsing loss reads, and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SceneParsing {
    /// Weight of the loss next to the contrastive one (0: off).
    pub weight: f64,
    /// The ViT's patch tokens `[N, W]`, averaged per grid cell.
    pub vit: bool,
    /// The image's projected query tokens `[Q, P]`, read together.
    pub queries: bool,
    /// The caption's projected text feature `[P]`.
    pub text: bool,
}

impl Default for SceneParsing {
    fn default() -> Self {
        Self {
            weight: 0.0,
            vit: true,
            queries: true,
            text: true,
        }
    }
}

/// The heads, their labels and their variables.
pub(super) struct SceneHeads {
    /// Cell-averaging weights `[CELLS, N]` over the patch tokens.
    pool: Tensor,
    vit: Option<Linear>,
    queries: Option<Linear>,
    text: Option<Linear>,
    /// `[N_img, CELLS, 3]` u32 class labels (see [`df_data::toy::Scene::cell_labels`]).
    labels: Tensor,
    pub(super) weight: f64,
    pub(super) vars: VarMap,
}

/// `[CELLS, side²]`: each cell averages the patches whose centres fall inside it.
fn cell_pool(image_size: usize, patch: usize, device: &candle_core::Device) -> Result<Tensor> {
    let side = image_size / patch;
    let cell_px = image_size as f64 / f64::from(GRID);
    let cell_of = |i: usize| (((i as f64 + 0.5) * patch as f64 / cell_px) as usize).min(GRID as usize - 1);
    let mut pool = vec![0f32; N_CELLS * side * side];
    for p in 0..side * side {
        let cell = cell_of(p / side) * GRID as usize + cell_of(p % side);
        pool[cell * side * side + p] = 1.0;
    }
    for row in pool.chunks_mut(side * side) {
        let n = row.iter().sum::<f32>().max(1.0);
        row.iter_mut().for_each(|x| *x /= n);
    }
    Tensor::from_vec(pool, (N_CELLS, side * side), device)
}

/// Mean cross-entropy of the three labels over `logits: [M, PER_CELL]`, `labels: [M, 3]`.
fn cell_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let mut total = Tensor::zeros((), DType::F32, logits.device())?;
    let mut offset = 0;
    for (k, &classes) in CELL_CLASSES.iter().enumerate() {
        let l = logits.narrow(1, offset, classes)?.contiguous()?;
        let t = labels.narrow(1, k, 1)?.squeeze(1)?.contiguous()?;
        total = (total + candle_nn::loss::cross_entropy(&l, &t)?)?;
        offset += classes;
    }
    total / CELL_CLASSES.len() as f64
}

impl SceneHeads {
    pub(super) fn new(config: &Blip2Config, labels: Tensor, opts: &SceneParsing) -> Result<Self> {
        let v = &config.vision_config;
        let device = labels.device().clone();
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &device);
        let p = config.image_text_hidden_size;
        let q = config.num_query_tokens;
        let head = |on: bool, input: usize, out: usize, name: &str| -> Result<Option<Linear>> {
            on.then(|| candle_nn::linear(input, out, vb.pp(name))).transpose()
        };
        Ok(Self {
            pool: cell_pool(v.image_size, v.patch_size, &device)?,
            vit: head(opts.vit, v.hidden_size, PER_CELL, "scene_vit")?,
            queries: head(opts.queries, q * p, N_CELLS * PER_CELL, "scene_queries")?,
            text: head(opts.text, p, N_CELLS * PER_CELL, "scene_text")?,
            labels,
            weight: opts.weight,
            vars,
        })
    }

    /// The mean over the enabled heads, for images `ids` with ViT tokens `[B, 1 + N, W]`,
    /// projected query tokens `[B, Q, P]` and text features `[B, P]`.
    pub(super) fn loss(&self, ids: &Tensor, vit: &Tensor, queries: &Tensor, text: &Tensor) -> Result<Tensor> {
        let b = ids.dim(0)?;
        let labels = self.labels.index_select(ids, 0)?.reshape((b * N_CELLS, 3))?;
        let mut losses = vec![];
        if let Some(head) = &self.vit {
            let n1 = vit.dim(1)?;
            let patches = vit.narrow(1, 1, n1 - 1)?.contiguous()?;
            let pooled = self.pool.broadcast_matmul(&patches)?; // [B, CELLS, W]
            losses.push(cell_loss(
                &head.forward(&pooled)?.reshape((b * N_CELLS, ()))?,
                &labels,
            )?);
        }
        for (head, x) in [
            (&self.queries, queries.flatten_from(1)?),
            (&self.text, text.clone()),
        ] {
            if let Some(head) = head {
                losses.push(cell_loss(
                    &head.forward(&x)?.reshape((b * N_CELLS, ()))?,
                    &labels,
                )?);
            }
        }
        let n = losses.len().max(1) as f64;
        Tensor::stack(&losses, 0)?.sum_all()? / n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_averages_its_own_patches() {
        let pool = cell_pool(64, 8, &candle_core::Device::Cpu).unwrap();
        let rows = pool.to_vec2::<f32>().unwrap();
        // Patch centres 4, 12, ..., 60 px fall 3, 2 and 3 to a 21.3-px cell per side.
        let counts: Vec<usize> = rows
            .iter()
            .map(|r| r.iter().filter(|&&x| x > 0.0).count())
            .collect();
        assert_eq!(counts, [9, 6, 9, 6, 4, 6, 9, 6, 9]);
        for r in &rows {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // Patch (row 4, col 4) sits in the centre cell.
        assert!(rows[4][4 * 8 + 4] > 0.0 && rows[0][4 * 8 + 4] == 0.0);
    }
}
