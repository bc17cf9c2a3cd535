//! Image preprocessing of the BLIP-2 encoders (SPEC §2, "image processor").
//!
//! The pipeline is the one SPRC (and CLIP4Cir before it) applies to every image, reference and target:
//!
//! 1. **TargetPad** (ratio 1.25): when `max(w, h) / min(w, h) ≥ ratio`, the image is padded with black,
//!    centred, by `int((max(w, h) / ratio − side) / 2)` pixels on both ends of each side shorter than
//!    `max(w, h) / ratio`;
//! 2. **Resize** so that the short side is `S` (bicubic, Keys `a = −0.5`, anti-aliased like Pillow),
//!    the long side becoming `int(S · long / short)` as torchvision computes it; an image whose size
//!    would not change is left untouched;
//! 3. **CenterCrop** `S × S` with torchvision's rounding (`top = round((h − S) / 2)`, ties to even);
//! 4. RGB, `[0, 1]`, normalised with the CLIP mean and standard deviation.
//!
//! The output of one image is a `[3, S, S]` `f32` tensor (channels first), a batch is `[B, 3, S, S]`.
//!
//! Differences from the Python reference (Pillow + torchvision): images are converted to 8-bit RGB at
//! decode time, before padding and resizing (Pillow resizes `RGBA` premultiplied and `P` images with
//! nearest-neighbour, and would only drop the alpha channel afterwards); the resampling runs in `f32`
//! instead of Pillow's fixed point, so a resized pixel can differ by one level (JPEG decoders may
//! differ by a few levels as well). Images that need no resampling are bit-exact.

use std::borrow::Cow;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{EncoderError, Result};

/// CLIP / BLIP-2 per-channel mean (RGB) used by [`ImageProcessor::default`]. The literals are the
/// reference's decimal values; rounded to `f32` they equal torch's `float32` mean / std.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP / BLIP-2 per-channel standard deviation (RGB) used by [`ImageProcessor::default`].
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// Default output side `S` (BLIP-2 ViT-g/14 at 224 × 224).
pub const DEFAULT_IMAGE_SIZE: usize = 224;
/// Default TargetPad ratio (SPRC).
pub const DEFAULT_TARGET_PAD_RATIO: f32 = 1.25;
/// Largest image, in pixels, that TargetPad may create; a larger one is refused with
/// [`EncoderError::Image`] (or [`EncoderError::Input`] for in-memory images) instead of
/// exhausting memory. 2^28 pixels = 768 MiB of RGB.
pub const MAX_PADDED_PIXELS: u64 = 1 << 28;

fn default_target_pad_ratio() -> Option<f32> {
    Some(DEFAULT_TARGET_PAD_RATIO)
}

/// The SPRC / BLIP-2 image processor: TargetPad → bicubic resize of the short side → centre crop →
/// normalise. Produces `[3, S, S]` per image and `[B, 3, S, S]` per batch, `f32`, channels first,
/// RGB, with `S = image_size` (224 by default).
///
/// Deserialisable from JSON; missing fields take the defaults (`image_size` 224,
/// `target_pad_ratio` 1.25, CLIP mean / std). `"target_pad_ratio": null` disables TargetPad.
///
/// ```
/// use df_encoders::ImageProcessor;
/// let p: ImageProcessor = serde_json::from_str(r#"{"image_size": 364}"#).unwrap();
/// assert_eq!(p.image_size, 364);
/// assert_eq!(p.target_pad_ratio, Some(1.25));
/// let img = image::DynamicImage::new_rgb8(500, 300);
/// let t = p.preprocess(&img).unwrap();
/// assert_eq!(t.dims(), &[3, 364, 364]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageProcessor {
    /// Output side `S`: tensors are `[3, S, S]` / `[B, 3, S, S]`.
    pub image_size: usize,
    /// TargetPad ratio; `None` skips TargetPad (plain BLIP-2 resize + centre crop).
    pub target_pad_ratio: Option<f32>,
    /// Per-channel mean (RGB) subtracted after scaling to `[0, 1]`.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (RGB) divided by after subtracting the mean.
    pub image_std: [f32; 3],
}

impl Default for ImageProcessor {
    fn default() -> Self {
        Self::new(DEFAULT_IMAGE_SIZE)
    }
}

/// Opens an image file and decodes it, the format being guessed from the file's content (the
/// extension is only a fallback). Any format the `image` crate was built with (PNG, JPEG, WebP, BMP,
/// GIF, TIFF) is accepted.
///
/// Errors: [`EncoderError::Io`] when the file cannot be opened or read, [`EncoderError::Image`] when
/// it cannot be decoded; both name the file.
pub fn open_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let io_err = |source| EncoderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = ImageReader::open(path)
        .map_err(io_err)?
        .with_guessed_format()
        .map_err(io_err)?;
    if reader.format().is_none() {
        return Err(image_err(path, "unrecognised image format"));
    }
    reader.decode().map_err(|e| image_err(path, e))
}

fn image_err(path: &Path, message: impl ToString) -> EncoderError {
    EncoderError::Image {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn input_err(name: &str, message: impl ToString) -> EncoderError {
    EncoderError::Input {
        name: name.to_string(),
        message: message.to_string(),
    }
}

/// Re-labels an error about an in-memory image with the file it came from.
fn with_path(path: &Path, err: EncoderError) -> EncoderError {
    match err {
        EncoderError::Input { message, .. } => image_err(path, message),
        other => other,
    }
}

fn as_rgb8(img: &DynamicImage) -> Cow<'_, RgbImage> {
    match img {
        DynamicImage::ImageRgb8(rgb) => Cow::Borrowed(rgb),
        other => Cow::Owned(other.to_rgb8()),
    }
}

impl ImageProcessor {
    /// A processor with output side `image_size` (`[3, image_size, image_size]`), TargetPad 1.25 and
    /// the CLIP mean / std.
    pub fn new(image_size: usize) -> Self {
        Self {
            image_size,
            target_pad_ratio: default_target_pad_ratio(),
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// Builder: sets (or with `None` disables) the TargetPad ratio.
    pub fn with_target_pad_ratio(mut self, ratio: Option<f32>) -> Self {
        self.target_pad_ratio = ratio;
        self
    }

    /// Checks the configuration: `image_size > 0`, a finite positive ratio, finite mean and a finite
    /// non-zero std. Called by every preprocessing method.
    pub fn validate(&self) -> Result<()> {
        if self.image_size == 0 || self.image_size > u32::MAX as usize {
            return Err(EncoderError::InvalidConfig {
                key: "image_size".into(),
                message: format!("must be in 1..=2^32-1, got {}", self.image_size),
            });
        }
        if let Some(r) = self.target_pad_ratio {
            if !(r.is_finite() && r > 0.0) {
                return Err(EncoderError::InvalidConfig {
                    key: "target_pad_ratio".into(),
                    message: format!("must be finite and > 0, got {r}"),
                });
            }
        }
        if self.image_mean.iter().any(|m| !m.is_finite()) {
            return Err(EncoderError::InvalidConfig {
                key: "image_mean".into(),
                message: format!("must be finite, got {:?}", self.image_mean),
            });
        }
        if self.image_std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(EncoderError::InvalidConfig {
                key: "image_std".into(),
                message: format!("must be finite and non-zero, got {:?}", self.image_std),
            });
        }
        Ok(())
    }

    /// Number of `f32` values of one preprocessed image: `3 · S · S`.
    pub fn values_per_image(&self) -> usize {
        3 * self.image_size * self.image_size
    }

    /// The TargetPad ratio as the `f64` a Python config would hold (`1.3f32` becomes `1.3`, not
    /// `1.2999999523`), so that the integer padding amounts agree with the reference.
    fn ratio_f64(&self) -> Option<f64> {
        self.target_pad_ratio
            .map(|r| r.to_string().parse::<f64>().unwrap_or(f64::from(r)))
    }

    /// TargetPad amounts `(horizontal, vertical)` for a `width × height` image: the number of black
    /// pixels added on *each* of the left/right and top/bottom ends, or `None` when TargetPad is
    /// disabled or the aspect ratio is below the target ratio (image unchanged).
    ///
    /// Follows the reference exactly: `hp = max(int((max(w, h) / ratio − w) / 2), 0)`, likewise
    /// `vp` with `h` (so at most the short side is padded). E.g. `300 × 100` at 1.25 → `(0, 70)`.
    pub fn target_pad_amounts(&self, width: u32, height: u32) -> Option<(u32, u32)> {
        let ratio = self.ratio_f64()?;
        if width == 0 || height == 0 {
            return None;
        }
        let (w, h) = (f64::from(width), f64::from(height));
        let (max, min) = (w.max(h), w.min(h));
        if max / min < ratio {
            return None;
        }
        let scaled = max / ratio;
        // `as` truncates toward zero like Python's int() and saturates (negative → 0, huge → u32::MAX).
        let hp = ((scaled - w) / 2.0) as u32;
        let vp = ((scaled - h) / 2.0) as u32;
        Some((hp, vp))
    }

    /// Applies TargetPad: returns the image unchanged (borrowed) or a copy centred on a black canvas
    /// of `(w + 2·hp) × (h + 2·vp)`.
    ///
    /// Errors with [`EncoderError::Input`] when the padded image would exceed [`MAX_PADDED_PIXELS`].
    pub fn target_pad<'a>(&self, img: &'a RgbImage) -> Result<Cow<'a, RgbImage>> {
        let (w, h) = img.dimensions();
        let (hp, vp) = match self.target_pad_amounts(w, h) {
            Some((0, 0)) | None => return Ok(Cow::Borrowed(img)),
            Some(p) => p,
        };
        let nw = u64::from(w) + 2 * u64::from(hp);
        let nh = u64::from(h) + 2 * u64::from(vp);
        if nw.saturating_mul(nh) > MAX_PADDED_PIXELS || nw > u64::from(u32::MAX) {
            return Err(input_err(
                "image",
                format!("{w}x{h} image would be padded to {nw}x{nh}, more than {MAX_PADDED_PIXELS} pixels"),
            ));
        }
        let (nw, nh) = (nw as usize, nh as usize);
        let mut out = vec![0u8; nw * nh * 3];
        let src = img.as_raw();
        let row_len = w as usize * 3;
        for y in 0..h as usize {
            let dst = ((y + vp as usize) * nw + hp as usize) * 3;
            out[dst..dst + row_len].copy_from_slice(&src[y * row_len..(y + 1) * row_len]);
        }
        let padded = RgbImage::from_raw(nw as u32, nh as u32, out)
            .ok_or_else(|| input_err("image", "internal error: padded buffer size"))?;
        Ok(Cow::Owned(padded))
    }

    /// Size `(width, height)` after resizing the short side to `S`: the long side becomes
    /// `int(S · long / short)` (torchvision's `Resize(S)` rule). Equal to the input when no resize
    /// is needed.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let s = self.image_size as u32;
        let (short, long) = if width <= height {
            (width, height)
        } else {
            (height, width)
        };
        if short == 0 {
            return (width, height);
        }
        let new_long = (f64::from(s) * f64::from(long) / f64::from(short)) as u32;
        if width <= height {
            (s, new_long)
        } else {
            (new_long, s)
        }
    }

    /// Top-left corner `(left, top)` of the centre `S × S` crop of a `width × height` image, with
    /// torchvision's rounding `int(round((w − S) / 2))` (Python rounds ties to even: a margin of 3
    /// gives 2, a margin of 5 gives 2). Requires `width, height ≥ S`.
    pub fn center_crop_origin(&self, width: u32, height: u32) -> (u32, u32) {
        let s = self.image_size as f64;
        let origin = |side: u32| ((f64::from(side) - s) / 2.0).round_ties_even().max(0.0) as u32;
        (origin(width), origin(height))
    }

    /// Resamples with Pillow's pass order: horizontal pass, rounding to 8 bits, then vertical pass.
    fn resize(&self, img: Cow<'_, RgbImage>) -> RgbImage {
        let (w, h) = img.dimensions();
        let (nw, nh) = self.resized_size(w, h);
        let mut img = img;
        if nw != w {
            img = Cow::Owned(image::imageops::resize(
                img.as_ref(),
                nw,
                h,
                FilterType::CatmullRom,
            ));
        }
        if nh != h {
            img = Cow::Owned(image::imageops::resize(
                img.as_ref(),
                nw,
                nh,
                FilterType::CatmullRom,
            ));
        }
        img.into_owned()
    }

    /// TargetPad + resize; returns the resized image (borrowed when nothing changed) and the crop
    /// origin. Errors name the argument `image`.
    fn pad_and_resize<'a>(&self, img: &'a RgbImage) -> Result<(Cow<'a, RgbImage>, u32, u32)> {
        self.validate()?;
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(input_err("image", format!("empty image ({w}x{h})")));
        }
        let padded = self.target_pad(img)?;
        let (pw, ph) = padded.dimensions();
        let resized = if self.resized_size(pw, ph) == (pw, ph) {
            padded
        } else {
            Cow::Owned(self.resize(padded))
        };
        let (rw, rh) = resized.dimensions();
        let s = self.image_size as u32;
        if rw < s || rh < s {
            return Err(input_err(
                "image",
                format!("internal error: resized image {rw}x{rh} smaller than {s}"),
            ));
        }
        let (left, top) = self.center_crop_origin(rw, rh);
        Ok((resized, left, top))
    }

    /// TargetPad → resize → centre crop of an RGB image: the `S × S` 8-bit image whose values are
    /// then scaled and normalised (the input of torchvision's `ToTensor`). Useful for inspection.
    pub fn resize_and_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        let (resized, left, top) = self.pad_and_resize(img)?;
        let s = self.image_size as u32;
        Ok(image::imageops::crop_imm(resized.as_ref(), left, top, s, s).to_image())
    }

    /// Writes the normalised `[3, S, S]` values of the `S × S` window at `(left, top)` into `out`.
    fn normalise_into(&self, img: &RgbImage, left: u32, top: u32, out: &mut [f32]) {
        let s = self.image_size;
        let plane = s * s;
        let stride = img.width() as usize * 3;
        let raw = img.as_raw();
        let (left, top) = (left as usize, top as usize);
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        let [mr, mg, mb] = self.image_mean;
        let [sr, sg, sb] = self.image_std;
        for y in 0..s {
            let start = (top + y) * stride + left * 3;
            let row = &raw[start..start + s * 3];
            let o = y * s;
            for (x, px) in row.chunks_exact(3).enumerate() {
                // Same f32 operations as torchvision: x / 255, then (x − mean) / std.
                r_out[o + x] = (f32::from(px[0]) / 255.0 - mr) / sr;
                g_out[o + x] = (f32::from(px[1]) / 255.0 - mg) / sg;
                b_out[o + x] = (f32::from(px[2]) / 255.0 - mb) / sb;
            }
        }
    }

    /// Preprocesses an RGB image into `out`, which must hold `3 · S · S` values (`[3, S, S]`).
    pub fn preprocess_rgb_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        if out.len() != self.values_per_image() {
            return Err(input_err(
                "out",
                format!(
                    "buffer holds {} values, expected 3*{s}*{s} = {}",
                    out.len(),
                    self.values_per_image(),
                    s = self.image_size
                ),
            ));
        }
        let (resized, left, top) = self.pad_and_resize(img)?;
        self.normalise_into(resized.as_ref(), left, top, out);
        Ok(())
    }

    /// Preprocesses an RGB image into a `Vec` of `3 · S · S` values laid out `[3, S, S]`.
    pub fn preprocess_rgb_to_vec(&self, img: &RgbImage) -> Result<Vec<f32>> {
        self.validate()?;
        let mut out = vec![0f32; self.values_per_image()];
        self.preprocess_rgb_into(img, &mut out)?;
        Ok(out)
    }

    /// Decodes an image file (format guessed from content) and converts it to 8-bit RGB
    /// (alpha dropped, grey replicated). Errors name the file: [`EncoderError::Io`] when it cannot be
    /// read, [`EncoderError::Image`] when it cannot be decoded.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<RgbImage> {
        Ok(open_image(path)?.into_rgb8())
    }

    /// Preprocesses one decoded image into a CPU tensor `[3, S, S]` (`f32`, RGB, normalised).
    ///
    /// Errors with [`EncoderError::Input`] for an empty image, [`EncoderError::InvalidConfig`] for a
    /// bad configuration.
    pub fn preprocess(&self, img: &DynamicImage) -> Result<Tensor> {
        self.preprocess_rgb(&as_rgb8(img))
    }

    /// Preprocesses one RGB image into a CPU tensor `[3, S, S]` (`f32`).
    pub fn preprocess_rgb(&self, img: &RgbImage) -> Result<Tensor> {
        let s = self.image_size;
        let data = self.preprocess_rgb_to_vec(img)?;
        Ok(Tensor::from_vec(data, (3, s, s), &Device::Cpu)?)
    }

    /// Loads and preprocesses one image file into a CPU tensor `[3, S, S]` (`f32`). Errors name the
    /// file.
    pub fn preprocess_path(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        let path = path.as_ref();
        let rgb = self.load(path)?;
        self.preprocess_rgb(&rgb).map_err(|e| with_path(path, e))
    }

    /// Loads and preprocesses image files into one tensor `[B, 3, S, S]` (`f32`) on `device`.
    /// Files are decoded in parallel on the CPU threads; the first failing file (in input order) is
    /// reported, by name. An empty list is an [`EncoderError::Input`] error.
    pub fn preprocess_batch<P: AsRef<Path> + Sync>(&self, paths: &[P], device: &Device) -> Result<Tensor> {
        self.batch(paths, "paths", device, |p, out| {
            let path = p.as_ref();
            let rgb = self.load(path)?;
            self.preprocess_rgb_into(&rgb, out)
                .map_err(|e| with_path(path, e))
        })
    }

    /// Preprocesses decoded images into one tensor `[B, 3, S, S]` (`f32`) on `device`, in parallel.
    /// An empty list is an [`EncoderError::Input`] error.
    pub fn preprocess_images(&self, images: &[DynamicImage], device: &Device) -> Result<Tensor> {
        self.batch(images, "images", device, |img, out| {
            self.preprocess_rgb_into(&as_rgb8(img), out)
        })
    }

    /// Preprocesses RGB images into one tensor `[B, 3, S, S]` (`f32`) on `device`, in parallel.
    pub fn preprocess_rgb_batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        self.batch(images, "images", device, |img, out| {
            self.preprocess_rgb_into(img, out)
        })
    }

    fn batch<T: Sync>(
        &self,
        items: &[T],
        name: &str,
        device: &Device,
        f: impl Fn(&T, &mut [f32]) -> Result<()> + Sync,
    ) -> Result<Tensor> {
        self.validate()?;
        if items.is_empty() {
            return Err(input_err(name, "empty batch"));
        }
        let per = self.values_per_image();
        let mut data = vec![0f32; items.len() * per];
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(items.len());
        if threads <= 1 {
            for (item, out) in items.iter().zip(data.chunks_mut(per)) {
                f(item, out)?;
            }
        } else {
            let per_thread = items.len().div_ceil(threads);
            let f = &f;
            std::thread::scope(|scope| -> Result<()> {
                let handles: Vec<_> = items
                    .chunks(per_thread)
                    .zip(data.chunks_mut(per_thread * per))
                    .map(|(group, out)| {
                        scope.spawn(move || -> Result<()> {
                            for (item, o) in group.iter().zip(out.chunks_mut(per)) {
                                f(item, o)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                // Join all, in order; the first error wins.
                let mut first = Ok(());
                for h in handles {
                    let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                    if first.is_ok() {
                        first = r;
                    }
                }
                first
            })?;
        }
        let s = self.image_size;
        Ok(Tensor::from_vec(data, (items.len(), 3, s, s), device)?)
    }
}
