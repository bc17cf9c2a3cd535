#!/usr/bin/env python3
"""Generate the reference fixtures for `crates/df-encoders/tests/processing.rs`.

Run by hand (never in CI), from the repository root, with a Python that has Pillow, numpy and
`transformers` (fast BERT tokenizer):

    python tools/gen_processing_fixtures.py

It writes into `crates/df-encoders/tests/fixtures/processing/`:

* `vocab.txt`, `tokenizer.json` – a tiny BERT WordPiece tokenizer (lower-casing, `[DEC]` added as the
  bos token the way LAVIS's `init_tokenizer` does), built with `BertTokenizerFast`;
* `text_expected.json` – LAVIS `BlipCaptionProcessor.pre_caption` outputs for tricky strings and the
  token ids / attention masks that `transformers` produces with `padding="max_length"` and
  `padding="longest"` (both with `truncation=True`);
* `images_expected.json` + `<photo>_ref_s4.png` – the SPRC/CLIP4Cir image pipeline
  (TargetPad(1.25) -> Resize(224, BICUBIC) -> CenterCrop(224) -> RGB -> ToTensor -> Normalize),
  re-implemented with Pillow exactly as torchvision does it for PIL images, applied to the photos in
  `../shared/data/photos`. Each PNG holds every 4th row/column (offset 1) of the 224x224 uint8
  image that enters `ToTensor` (56x56), the JSON holds the geometry of every step and statistics of
  the full normalised `[3, 224, 224]` tensor plus per-row and per-column sums of the full uint8 crop
  (so that every pixel is covered, compactly).

Also the geometry of a few synthetic images (integer gradients that the Rust test regenerates)
to pin down TargetPad amounts, the resize rounding and torchvision's CenterCrop rounding.
"""

import json
import os
import re
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "df-encoders", "tests", "fixtures", "processing")
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "photos")

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SIZE = 224
RATIO = 1.25
STRIDE = 4
OFFSET = 1


# --------------------------------------------------------------------------------------------
# LAVIS blip_caption (lavis/processors/blip_processors.py, BlipCaptionProcessor.pre_caption)
# --------------------------------------------------------------------------------------------
def pre_caption(caption, max_words=50):
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n")
    caption = caption.strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


# --------------------------------------------------------------------------------------------
# torchvision semantics for PIL images (torchvision 0.14 .. 0.20 behave the same here)
# --------------------------------------------------------------------------------------------
def target_pad_amounts(w, h, ratio=RATIO):
    """CLIP4Cir / SPRC TargetPad: returns (hp, vp) or None when unchanged."""
    actual = max(w, h) / min(w, h)
    if actual < ratio:
        return None
    scaled = max(w, h) / ratio
    hp = max(int((scaled - w) / 2), 0)
    vp = max(int((scaled - h) / 2), 0)
    return hp, vp


def target_pad(img, ratio=RATIO):
    amounts = target_pad_amounts(*img.size, ratio=ratio)
    if amounts is None:
        return img
    hp, vp = amounts
    w, h = img.size
    # torchvision F_pil.pad(padding=[hp, vp, hp, vp], fill=0, "constant") == ImageOps.expand
    out = Image.new(img.mode, (w + 2 * hp, h + 2 * vp), 0)
    out.paste(img, (hp, vp))
    return out


def resize_size(w, h, size=SIZE):
    """torchvision _compute_resized_output_size for an int size."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize(img, size=SIZE):
    w, h = img.size
    nw, nh = resize_size(w, h, size)
    if (nw, nh) == (w, h):
        return img  # torchvision returns the image untouched
    return img.resize((nw, nh), Image.BICUBIC)


def center_crop_origin(w, h, size=SIZE):
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return left, top


def center_crop(img, size=SIZE):
    w, h = img.size
    left, top = center_crop_origin(w, h, size)
    return img.crop((left, top, left + size, top + size))


def pipeline_u8(img):
    steps = {"original": list(img.size)}
    padded = target_pad(img)
    steps["padded"] = list(padded.size)
    resized = resize(padded)
    steps["resized"] = list(resized.size)
    steps["crop_origin"] = list(center_crop_origin(*resized.size))
    cropped = center_crop(resized).convert("RGB")
    return np.asarray(cropped, dtype=np.uint8), steps


def normalise(arr_u8):
    x = arr_u8.astype(np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3, H, W]


def gradient(w, h):
    """Integer RGB gradient; the Rust test builds the same image."""
    x = np.arange(w, dtype=np.int64)[None, :].repeat(h, 0)
    y = np.arange(h, dtype=np.int64)[:, None].repeat(w, 1)
    r = x * 255 // max(w - 1, 1)
    g = y * 255 // max(h - 1, 1)
    b = (x + y) * 255 // max(w + h - 2, 1)
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
def gen_tokenizer():
    from transformers import BertTokenizerFast

    words = (
        "a an the of and is are with to in on make it its more less black white red blue green "
        "dog dogs cat ball remove add change photo picture shirt dress top sleeves longer shorter "
        "has have be same but different colour color background two one man woman sitting"
    ).split()
    pieces = ["##s", "##ed", "##ing", "##er", "##ly"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    punct = list(",.?!'-/[]")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for tok in words + pieces + letters + ["##" + c for c in letters] + digits + punct:
        if tok not in vocab:
            vocab.append(tok)
    vocab_path = os.path.join(OUT, "vocab.txt")
    with open(vocab_path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=vocab_path, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})  # as LAVIS Blip2Base.init_tokenizer
    tok.backend_tokenizer.save(os.path.join(OUT, "tokenizer.json"))
    return tok


CAPTION_CASES = [
    "A photo of a Dog.",
    "  Make the dog BLACK!!  and remove the ball ",
    'has "more" (colourful) *sleeves* #top: longer; ~same~',
    "two\tcats",
    "two \t cats",
    "trailing newline\n",
    "trailing newlines and spaces \n\n  ",
    "\nleading newline",
    "tabs at end\t",
    "comma, question? apostrophe's hyphen-ated slash/es [brackets]",
    "",
    "...!!!",
    "ÉCOLE Straße ΣΊΣΥΦΟΣ",
    "nbsp\u00a0\u00a0here and\u00a0single",
    "unit sep\x1f\x1fhere",
    " ".join("w%d" % i for i in range(60)),
    " ".join("w%d." % i for i in range(55)),
]

TOKEN_CASES = [
    "A photo of a dog.",
    "make the dog black and remove the ball",
    "is red with longer sleeves and has a different colour background and the same top but more blue",
    "xyz qq",
    "the dogs are sitting",
    "",
]
MAX_LEN = 12


def gen_text(tok):
    captions = [{"input": s, "max_words": 50, "expected": pre_caption(s)} for s in CAPTION_CASES]
    captions.append({"input": CAPTION_CASES[1], "max_words": 3, "expected": pre_caption(CAPTION_CASES[1], 3)})
    cleaned = [pre_caption(s) for s in TOKEN_CASES]
    out = {"max_len": MAX_LEN, "captions": captions, "token_inputs": TOKEN_CASES, "cleaned": cleaned}
    for name, texts in (("clean", cleaned), ("raw", TOKEN_CASES)):
        for padding in ("max_length", "longest"):
            enc = tok(texts, padding=padding, truncation=True, max_length=MAX_LEN)
            out["%s_%s" % (name, padding)] = {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
            }
    # A batch whose longest sequence is shorter than MAX_LEN, to see "longest" padding differ.
    short = [cleaned[0], cleaned[4], cleaned[5]]
    enc = tok(short, padding="longest", truncation=True, max_length=MAX_LEN)
    out["short_batch"] = short
    out["short_longest"] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    out["pad_id"] = tok.pad_token_id
    out["dec_id"] = tok.convert_tokens_to_ids("[DEC]")
    out["vocab_size"] = len(tok)
    with open(os.path.join(OUT, "text_expected.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


def stats(x):
    return {
        "mean": [float(x[c].astype(np.float64).mean()) for c in range(3)],
        "std": [float(x[c].astype(np.float64).std()) for c in range(3)],
        "min": [float(x[c].min()) for c in range(3)],
        "max": [float(x[c].max()) for c in range(3)],
    }


def gen_images():
    photos = {}
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"):
        img = Image.open(os.path.join(PHOTOS, name))
        u8, steps = pipeline_u8(img)
        assert u8.shape == (SIZE, SIZE, 3)
        sub = u8[OFFSET::STRIDE, OFFSET::STRIDE]
        png = os.path.splitext(name)[0] + "_ref_s4.png"
        Image.fromarray(np.ascontiguousarray(sub), "RGB").save(os.path.join(OUT, png), optimize=True)
        wide = u8.astype(np.int64)
        photos[name] = dict(
            steps,
            subset_png=png,
            stats=stats(normalise(u8)),
            # Sums of the full 224x224 uint8 crop per row and per column, [channel][index].
            row_sums=wide.sum(axis=1).T.tolist(),
            col_sums=wide.sum(axis=0).T.tolist(),
        )

    synthetic = []
    for w, h in ((300, 100), (100, 300), (227, 224), (229, 224), (224, 231), (301, 250), (224, 224), (400, 320), (401, 320)):
        u8, steps = pipeline_u8(gradient(w, h))
        pad = target_pad_amounts(w, h)
        entry = dict(steps, pad=list(pad) if pad is not None else None, stats=stats(normalise(u8)))
        # Full reference for the ones without resampling (bit-exact comparisons in Rust).
        if steps["resized"] == steps["padded"]:
            entry["sum_u8"] = int(u8.astype(np.int64).sum())
        synthetic.append(entry)

    meta = {
        "size": SIZE,
        "ratio": RATIO,
        "stride": STRIDE,
        "offset": OFFSET,
        "mean": [float(v) for v in MEAN],
        "std": [float(v) for v in STD],
        "photos": photos,
        "synthetic": synthetic,
        "pillow": Image.__version__ if hasattr(Image, "__version__") else __import__("PIL").__version__,
    }
    with open(os.path.join(OUT, "images_expected.json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    if not os.path.isdir(PHOTOS):
        sys.exit("photos not found at %s" % PHOTOS)
    tok = gen_tokenizer()
    gen_text(tok)
    gen_images()
    print("wrote fixtures to", OUT)


if __name__ == "__main__":
    main()
