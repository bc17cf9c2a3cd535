//! Contact sheets: the reference, the text and the top results side by side, with a tiny
//! built-in 5×7 bitmap font (the demo needs no font files).

use image::{Rgb, RgbImage};

/// Glyph rows, 5 bits each (MSB left), for the characters the demo prints.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [30, 17, 17, 17, 17, 17, 30],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 10, 4, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '/' => [1, 1, 2, 4, 8, 16, 16],
        '#' => [10, 10, 31, 10, 31, 10, 10],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '\'' => [4, 4, 8, 0, 0, 0, 0],
        '"' => [10, 10, 0, 0, 0, 0, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '?' => [14, 17, 1, 2, 4, 0, 4],
        '!' => [4, 4, 4, 4, 4, 0, 4],
        '*' => [0, 4, 21, 14, 21, 4, 0],
        _ => [0; 7],
    }
}

/// Draws `text` at `(x, y)` with `scale`-pixel dots; returns the x after the text.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) -> u32 {
    let mut cx = x;
    for ch in text.chars() {
        let rows = glyph(ch);
        for (ry, bits) in rows.iter().enumerate() {
            for rx in 0..5u32 {
                if bits & (1 << (4 - rx)) != 0 {
                    fill(img, cx + rx * scale, y + ry as u32 * scale, scale, scale, color);
                }
            }
        }
        cx += 6 * scale;
    }
    cx
}

/// Fills a rectangle, clipped to the image.
pub fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, color);
        }
    }
}

/// Draws a `t`-pixel frame around a rectangle.
pub fn frame(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, t: u32, color: Rgb<u8>) {
    fill(img, x, y, w, t, color);
    fill(img, x, y + h - t, w, t, color);
    fill(img, x, y, t, h, color);
    fill(img, x + w - t, y, t, h, color);
}

/// Wraps `text` into lines of at most `width` characters.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// One result tile.
pub struct Tile<'a> {
    /// The image, already at tile size.
    pub image: &'a RgbImage,
    /// Caption under it (rank, score).
    pub caption: String,
    /// Marked as the right answer.
    pub correct: bool,
}

/// Lays out the reference, the modification text and the result tiles in one picture.
pub fn contact_sheet(reference: &RgbImage, text: &str, footer: &str, tiles: &[Tile]) -> RgbImage {
    let tile = reference.width().max(96);
    let pad = 12;
    let text_lines = wrap(text, ((tile as usize) * 2) / 12);
    let header = 24 + text_lines.len() as u32 * 18;
    let width = pad + (tile + pad) * (tiles.len() as u32 + 1) + 8;
    let height = header + tile + 60;
    let mut img = RgbImage::from_pixel(width, height, Rgb([250, 250, 250]));
    let dark = Rgb([30, 30, 30]);
    draw_text(&mut img, pad, 8, "QUERY", 2, dark);
    for (i, line) in text_lines.iter().enumerate() {
        draw_text(
            &mut img,
            pad + tile + pad + 8,
            8 + i as u32 * 18,
            line,
            2,
            Rgb([20, 60, 160]),
        );
    }
    let paste = |img: &mut RgbImage, src: &RgbImage, x: u32| {
        let scaled = image::imageops::resize(src, tile, tile, image::imageops::FilterType::Nearest);
        image::imageops::replace(img, &scaled, x as i64, header as i64);
    };
    paste(&mut img, reference, pad);
    frame(
        &mut img,
        pad - 3,
        header - 3,
        tile + 6,
        tile + 6,
        3,
        Rgb([20, 60, 160]),
    );
    for (i, t) in tiles.iter().enumerate() {
        let x = pad + (tile + pad) * (i as u32 + 1) + 8;
        paste(&mut img, t.image, x);
        if t.correct {
            frame(
                &mut img,
                x - 4,
                header - 4,
                tile + 8,
                tile + 8,
                4,
                Rgb([20, 170, 60]),
            );
        }
        draw_text(&mut img, x, header + tile + 8, &t.caption, 1, dark);
        if t.correct {
            draw_text(&mut img, x, header + tile + 20, "TARGET", 2, Rgb([20, 140, 50]));
        }
    }
    draw_text(&mut img, pad, height - 14, footer, 1, Rgb([90, 90, 90]));
    img
}
