//! A tiny anti-aliased rasteriser for scenes.

use image::{Rgb, RgbImage};

use crate::rng::Rng;

use super::scene::{Object, Scene, Shape, Size, GRID};

/// Rendering settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// Image side in pixels.
    pub size: u32,
    /// Maximum jitter of an object's centre, as a fraction of a cell (deterministic per scene).
    pub jitter: f32,
    /// Maximum colour jitter per channel (deterministic per scene).
    pub colour_jitter: u8,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            size: 64,
            jitter: 0.08,
            colour_jitter: 12,
        }
    }
}

fn inside(shape: Shape, dx: f32, dy: f32, r: f32) -> bool {
    match shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
        Shape::Diamond => dx.abs() + dy.abs() <= 1.15 * r,
        Shape::Triangle => {
            // Apex at the top (-r), base at +0.8 r, half-width r at the base.
            let t = (dy + r) / (1.8 * r);
            (0.0..=1.0).contains(&t) && dx.abs() <= t * r
        }
        Shape::Cross => {
            let w = 0.34 * r;
            (dx.abs() <= w && dy.abs() <= r) || (dy.abs() <= w && dx.abs() <= r)
        }
    }
}

fn jittered(rng: &mut Rng, c: [u8; 3], amount: u8) -> [u8; 3] {
    let a = i32::from(amount);
    c.map(|v| {
        let d = rng.below((2 * a + 1) as usize) as i32 - a;
        (i32::from(v) + d).clamp(0, 255) as u8
    })
}

/// Renders a scene. The result depends only on the scene and the options: the same scene always
/// gives the same pixels (its jitter is seeded by the scene's key).
pub fn render(scene: &Scene, opts: &RenderOptions) -> RgbImage {
    let size = opts.size.max(8);
    let mut rng = Rng::derive(scene.hash64(), &[u64::from(size)]);
    let bg = jittered(&mut rng, scene.background.rgb(), opts.colour_jitter / 2);
    let mut img = RgbImage::from_pixel(size, size, Rgb(bg));
    let cell = size as f32 / f32::from(GRID);
    for o in &scene.objects {
        draw(&mut img, o, cell, opts, &mut rng);
    }
    img
}

fn draw(img: &mut RgbImage, o: &Object, cell: f32, opts: &RenderOptions, rng: &mut Rng) {
    let (row, col) = (f32::from(o.cell / GRID), f32::from(o.cell % GRID));
    let j = |rng: &mut Rng| (rng.f64() as f32 * 2.0 - 1.0) * opts.jitter * cell;
    let cx = (col + 0.5) * cell + j(rng);
    let cy = (row + 0.5) * cell + j(rng);
    let r = match o.size {
        Size::Large => 0.40 * cell,
        Size::Small => 0.22 * cell,
    };
    let colour = jittered(rng, o.colour.rgb(), opts.colour_jitter);
    let (w, h) = img.dimensions();
    let x0 = (cx - 1.2 * r).floor().max(0.0) as u32;
    let y0 = (cy - 1.2 * r).floor().max(0.0) as u32;
    let x1 = ((cx + 1.2 * r).ceil() as u32).min(w);
    let y1 = ((cy + 1.2 * r).ceil() as u32).min(h);
    // 4×4 supersampling for the coverage of each pixel.
    const SS: u32 = 4;
    for y in y0..y1 {
        for x in x0..x1 {
            let mut hits = 0u32;
            for sy in 0..SS {
                for sx in 0..SS {
                    let px = x as f32 + (sx as f32 + 0.5) / SS as f32;
                    let py = y as f32 + (sy as f32 + 0.5) / SS as f32;
                    if inside(o.shape, px - cx, py - cy, r) {
                        hits += 1;
                    }
                }
            }
            if hits == 0 {
                continue;
            }
            let a = hits as f32 / (SS * SS) as f32;
            let p = img.get_pixel_mut(x, y);
            for (p, c) in p.0.iter_mut().zip(colour) {
                *p = (f32::from(*p) * (1.0 - a) + f32::from(c) * a).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::scene::{Background, Colour};

    #[test]
    fn renders_deterministically_and_visibly() {
        let s = Scene::new(
            Background::Grey,
            vec![Object {
                cell: 4,
                shape: Shape::Circle,
                colour: Colour::Red,
                size: Size::Large,
            }],
        );
        let opts = RenderOptions::default();
        let a = render(&s, &opts);
        assert_eq!(a, render(&s, &opts));
        assert_eq!(a.dimensions(), (64, 64));
        let centre = a.get_pixel(32, 32).0;
        assert!(centre[0] > 180 && centre[1] < 90, "{centre:?}");
        let corner = a.get_pixel(2, 2).0;
        assert!(corner.iter().all(|&v| (100..=160).contains(&v)), "{corner:?}");
        // Different shapes give different pixels.
        let mut s2 = s.clone();
        s2.objects[0].shape = Shape::Square;
        assert_ne!(render(&s2, &opts), a);
    }
}
