//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use df_data::rng::fnv1a64;
use image::{Rgb, RgbImage};

/// The real annotation files (`shared/data`), next to the workspace.
pub fn shared_data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
}

pub fn cirr_root() -> PathBuf {
    shared_data().join("cirr")
}

pub fn fiq_root() -> PathBuf {
    shared_data().join("fashion-iq")
}

/// A deterministic little image for an image name (colours from the name's hash).
pub fn image_for(name: &str, size: u32) -> RgbImage {
    let h = fnv1a64(name.as_bytes());
    let [r, g, b, dr, dg, db, _, _] = h.to_le_bytes();
    RgbImage::from_fn(size, size, |x, y| {
        Rgb([
            r.wrapping_add((x as u8).wrapping_mul(dr | 1)),
            g.wrapping_add((y as u8).wrapping_mul(dg | 1)),
            b.wrapping_add(((x + y) as u8).wrapping_mul(db | 1)),
        ])
    })
}

/// Writes `image_for(name)` as a PNG at `path` (creating folders).
pub fn write_image(path: &Path, name: &str, size: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image_for(name, size).save(path).unwrap();
}

/// Writes a file, creating folders.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}
