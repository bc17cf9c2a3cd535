#!/usr/bin/env python3
"""Generate the reference fixtures for the `df-encoders` BLIP-2 encoder tests.

Run by hand (never in CI), from the repository root, with a Python that has torch, transformers
(4.46), safetensors, numpy and Pillow:

    python tools/gen_encoder_fixtures.py --out crates/df-encoders/tests/fixtures/encoders
    python tools/gen_encoder_fixtures.py --out /tmp/df-unseen --variant unseen

A tiny random `Blip2ForImageTextRetrieval` (every parameter perturbed, so that a tensor loaded
into the wrong slot or a forgotten LayerNorm affine shows up) is saved in every checkpoint layout
the Rust loader reads, together with inputs and the outputs of the SPEC §2 encoder modes computed
by Hugging Face transformers (eager attention, float32, CPU):

    <out>/hf/            config.json, model.safetensors, tokenizer.json
                         vision attention bias as separate `self_attn.q_bias` / `self_attn.v_bias`
    <out>/hf-sharded/    the same tensors in model-0000{1,2}-of-00002.safetensors
                         + model.safetensors.index.json, config.json, tokenizer.json
    <out>/hf-v5/         fused `self_attn.qkv.bias` = cat(q_bias, 0, v_bias); this is also exactly
                         what transformers 4.46's `save_pretrained` writes
    <out>/config.json    copy of hf/config.json, beside the pickles (the LAVIS loader reads it)
    <out>/lavis.pth      torch.save({"model": state_dict}) with LAVIS names (+ ignorable extras)
    <out>/sprc.pt        torch.save({"Blip2QformerCirAlignPrompt": state_dict + prompt_tokens})
    <out>/tokenizer.json tiny lower-casing BERT WordPiece tokenizer
    <out>/inputs.safetensors    pixel_values, input_ids, attention_mask, prompt_tokens
                                (metadata "texts": JSON list of the two texts)
    <out>/expected.safetensors  vision_hidden, image_feats, text_feats, query_pass1, query_feats,
                                prompt_feats, and the same with a `lavis_` prefix computed with
                                `ln_vision` eps 1e-5 (what the LAVIS loader uses)

`--variant unseen` uses a different config (other widths, depths, head counts, patch grid, query
count, projection width, cross-attention in every layer, eps 1e-5), writes all of the above and also
`<out>/query.png` and `<out>/expected_embed.safetensors` (image/text/query embeddings of that
PNG and "make the red circle blue", preprocessed as SPEC §2 says).

The vision residual stream is deliberately small (about 0.03 rms) so that LayerNorm eps matters:
`lavis_*` (ln_vision eps 1e-5) differ from the plain outputs (post_layernorm eps 1e-6) well beyond
a 1e-4 tolerance, and a loader that ignores `layer_norm_eps` fails too.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transformers
from transformers import BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval

# --------------------------------------------------------------------------------------------
# Tokenizer

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    ".", ",", "-", "'", "a", "an", "the", "and", "of", "with", "to", "in", "on", "is", "it",
    "make", "remove", "add", "change", "turn", "replace", "put", "more", "less",
    "red", "blue", "green", "yellow", "black", "white", "small", "large", "big", "bright",
    "circle", "square", "triangle", "dog", "cat", "shirt", "dress", "sleeve", "sky", "car",
    "background", "back", "ground", "color", "same", "but",
    "##s", "##er", "##ed", "##ing", "##ground", "##ish", "##ly",
]
VOCAB = SPECIAL + WORDS

# Two texts of different lengths: upper case (lower-casing), a word split by WordPiece
# ("squares" -> square ##s, "backgrounds" -> back ##ground ##s) and punctuation; "!" is not in
# the vocabulary and becomes [UNK].
TEXTS = [
    "Make the red circle blue!",
    "remove the small squares and make the backgrounds green.",
]
EMBED_TEXT = "make the red circle blue"
EMBED_MAX_LEN = 32

# --------------------------------------------------------------------------------------------
# Configs

VARIANTS = {
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=28, patch_size=7, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu"),
        qformer=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                     max_position_embeddings=80, cross_attention_frequency=2, encoder_hidden_size=32,
                     layer_norm_eps=1e-12, use_qformer_text_input=True, pad_token_id=0),
        num_query_tokens=4,
        image_text_hidden_size=16,
    ),
    # Nothing shared with `tiny`: other widths, depth, heads (head dim 8 both), patch/grid,
    # a cross-attention in every layer, more queries, another projection width and eps 1e-5.
    "unseen": dict(
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                    image_size=40, patch_size=8, layer_norm_eps=1e-5, qkv_bias=True, hidden_act="gelu"),
        qformer=dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=72,
                     max_position_embeddings=64, cross_attention_frequency=1, encoder_hidden_size=48,
                     layer_norm_eps=1e-12, use_qformer_text_input=True, pad_token_id=0),
        num_query_tokens=6,
        image_text_hidden_size=24,
    ),
}

LAVIS_LN_VISION_EPS = 1e-5
PERTURB_STD = 0.2  # weights/biases ~ N(0, 0.2^2); LayerNorm weights ~ 1 + N(0, 0.2^2)
VISION_RESIDUAL_SCALE = 0.01  # see the module docstring

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def build_tokenizer(tmpdir):
    vocab_path = os.path.join(tmpdir, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab_file=vocab_path, do_lower_case=True)
    assert len(tok) == len(VOCAB), (len(tok), len(VOCAB))
    for i, t in enumerate(SPECIAL):
        assert tok.convert_tokens_to_ids(t) == i
    return tok


def build_config(variant, vocab_size):
    v = VARIANTS[variant]
    q = dict(v["qformer"], vocab_size=vocab_size)
    cfg = Blip2Config(vision_config=v["vision"], qformer_config=q, num_query_tokens=v["num_query_tokens"],
                      image_text_hidden_size=v["image_text_hidden_size"])
    cfg._attn_implementation = "eager"
    return cfg


# --------------------------------------------------------------------------------------------
# Weights


@torch.no_grad()
def perturb(model):
    ln_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    for _, p in model.named_parameters():
        r = torch.randn(p.shape, dtype=p.dtype) * PERTURB_STD
        p.copy_(r + 1.0 if id(p) in ln_weights else r)
    vm = model.vision_model
    # The key bias does not exist in EVA-CLIP / LAVIS (and cancels in softmax anyway): keep it 0
    # so that the fused and the split layouts hold the same numbers.
    for layer in vm.encoder.layers:
        b = layer.self_attn.qkv.bias
        d = b.numel() // 3
        b[d:2 * d] = 0.0
    # Small vision residual stream (rms ~0.02) so that LayerNorm eps is visible in the outputs.
    s = VISION_RESIDUAL_SCALE
    vm.embeddings.patch_embedding.weight.mul_(s)
    vm.embeddings.patch_embedding.bias.mul_(s)
    vm.embeddings.class_embedding.mul_(s * 5)
    vm.embeddings.position_embedding.mul_(s * 5)
    for layer in vm.encoder.layers:
        for lin in (layer.self_attn.projection, layer.mlp.fc2):
            lin.weight.mul_(s)
            lin.bias.mul_(s)


def plain(t):
    """A contiguous tensor with its own storage (candle's pickle reader wants that)."""
    return t.detach().clone().contiguous()


def split_qkv_bias(sd):
    """HF fused layout -> separate q_bias / v_bias (key bias dropped; asserted zero)."""
    out = OrderedDict()
    for k, v in sd.items():
        if k.endswith(".self_attn.qkv.bias"):
            d = v.numel() // 3
            assert torch.count_nonzero(v[d:2 * d]) == 0, k
            base = k[: -len("qkv.bias")]
            out[base + "q_bias"] = plain(v[:d])
            out[base + "v_bias"] = plain(v[2 * d:])
        else:
            out[k] = plain(v)
    return out


def fuse_qkv_bias(sd):
    out = OrderedDict()
    for k, v in sd.items():
        if k.endswith(".self_attn.q_bias"):
            base = k[: -len("q_bias")]
            q, vb = sd[base + "q_bias"], sd[base + "v_bias"]
            out[base + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), vb]).contiguous()
        elif k.endswith(".self_attn.v_bias"):
            continue
        else:
            out[k] = v
    return out


VISION_LAYER_RENAMES = [
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("self_attn.qkv.weight", "attn.qkv.weight"),
    ("self_attn.q_bias", "attn.q_bias"),
    ("self_attn.v_bias", "attn.v_bias"),
    ("self_attn.projection.", "attn.proj."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
]


def hf_to_lavis_name(name):
    fixed = {
        "vision_model.embeddings.class_embedding": "visual_encoder.cls_token",
        "vision_model.embeddings.position_embedding": "visual_encoder.pos_embed",
        "vision_model.embeddings.patch_embedding.weight": "visual_encoder.patch_embed.proj.weight",
        "vision_model.embeddings.patch_embedding.bias": "visual_encoder.patch_embed.proj.bias",
        "vision_model.post_layernorm.weight": "ln_vision.weight",
        "vision_model.post_layernorm.bias": "ln_vision.bias",
        "query_tokens": "query_tokens",
        "embeddings.word_embeddings.weight": "Qformer.bert.embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight": "Qformer.bert.embeddings.position_embeddings.weight",
        "qformer.layernorm.weight": "Qformer.bert.embeddings.LayerNorm.weight",
        "qformer.layernorm.bias": "Qformer.bert.embeddings.LayerNorm.bias",
    }
    if name in fixed:
        return fixed[name]
    p = "vision_model.encoder.layers."
    if name.startswith(p):
        idx, rest = name[len(p):].split(".", 1)
        for a, b in VISION_LAYER_RENAMES:
            if rest.startswith(a):
                return f"visual_encoder.blocks.{idx}.{b}{rest[len(a):]}"
        raise KeyError(name)
    p = "qformer.encoder.layer."
    if name.startswith(p):
        idx, rest = name[len(p):].split(".", 1)
        rest = rest.replace("attention.attention.", "attention.self.", 1)
        rest = rest.replace("crossattention.attention.", "crossattention.self.", 1)
        return f"Qformer.bert.encoder.layer.{idx}.{rest}"
    for a, b in [("vision_projection.", "vision_proj."), ("text_projection.", "text_proj."),
                 ("itm_head.", "itm_head.")]:
        if name.startswith(a):
            return b + name[len(a):]
    raise KeyError(name)


def lavis_state_dict(sd_split, cfg, with_prompt=None):
    out = OrderedDict()
    for k, v in sd_split.items():
        out[hf_to_lavis_name(k)] = plain(v)
        if k == "query_tokens" and with_prompt is not None:
            out["prompt_tokens"] = plain(with_prompt)
    assert len(out) == len(sd_split) + (with_prompt is not None), "LAVIS names collide"
    # LAVIS extras a loader must ignore.
    qc = cfg.qformer_config
    out["temp"] = torch.tensor(0.07, dtype=torch.float32)
    out["Qformer.bert.embeddings.position_ids"] = torch.arange(qc.max_position_embeddings,
                                                               dtype=torch.int64)[None].contiguous()
    out["Qformer.cls.predictions.bias"] = (torch.randn(qc.vocab_size) * PERTURB_STD).contiguous()
    return out


LAVIS_EXTRAS = ("temp", "Qformer.bert.embeddings.position_ids", "Qformer.cls.predictions.bias", "prompt_tokens")


def lavis_to_hf(sd_lavis, hf_names):
    """Inverse mapping, for the round-trip check (extras dropped)."""
    back = {hf_to_lavis_name(n): n for n in hf_names}
    out = OrderedDict()
    for k, v in sd_lavis.items():
        if k not in LAVIS_EXTRAS:
            out[back[k]] = v
    return out


def write_sharded(sd, dirpath):
    """Two shards split at half the bytes, in state-dict order: the vision tower and the first
    Q-Former tensors in shard 1, the rest in shard 2 (one Q-Former layer straddles the two files,
    for the tiny config even a weight and its bias)."""
    total = sum(t.numel() * t.element_size() for t in sd.values())
    shards = [OrderedDict(), OrderedDict()]
    acc = 0
    for k, t in sd.items():
        shards[0 if acc < total / 2 else 1][k] = t
        acc += t.numel() * t.element_size()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(dirpath, name), metadata={"format": "pt"})
        for k in shard:
            weight_map[k] = name
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return weight_map


# --------------------------------------------------------------------------------------------
# Reference computations (SPEC §2 encoder modes)


@torch.no_grad()
def compute_outputs(model, pixel_values, input_ids, attention_mask, prompt_tokens):
    b = pixel_values.shape[0]
    nq = model.config.num_query_tokens
    vision_hidden = model.vision_model(pixel_values=pixel_values).last_hidden_state
    image_mask = torch.ones(vision_hidden.shape[:-1], dtype=torch.long)
    queries = model.query_tokens.expand(b, -1, -1)

    # image mode: queries only, cross-attending the image
    h = model.qformer(query_embeds=queries, encoder_hidden_states=vision_hidden,
                      encoder_attention_mask=image_mask).last_hidden_state
    image_feats = F.normalize(model.vision_projection(h), dim=-1)

    # BLIP-2 ITC text side
    h = model.qformer(query_embeds=model.embeddings(input_ids=input_ids), query_length=0,
                      attention_mask=attention_mask).last_hidden_state
    text_feats = F.normalize(model.text_projection(h[:, 0]), dim=-1)

    # SPRC two-pass composed query
    full_mask = torch.cat([torch.ones(b, nq, dtype=attention_mask.dtype), attention_mask], dim=1)
    h1 = model.qformer(query_embeds=model.embeddings(input_ids=input_ids, query_embeds=queries),
                       query_length=nq, attention_mask=full_mask, encoder_hidden_states=vision_hidden,
                       encoder_attention_mask=image_mask).last_hidden_state
    query_pass1 = h1[:, :nq]
    h2 = model.qformer(query_embeds=model.embeddings(input_ids=input_ids, query_embeds=query_pass1),
                       query_length=0, attention_mask=full_mask).last_hidden_state
    query_feats = F.normalize(model.text_projection(h2[:, nq]), dim=-1)

    # SPRC text-only prompt mode: [CLS] + prompts + text[1:], absolute positions over everything
    words = model.embeddings.word_embeddings(input_ids)
    prompts = prompt_tokens.expand(b, -1, -1)
    seq = torch.cat([words[:, :1], prompts, words[:, 1:]], dim=1)
    pos = model.embeddings.position_embeddings(torch.arange(seq.shape[1], dtype=torch.long))[None]
    seq = seq + pos
    np_ = prompts.shape[1]
    pmask = torch.cat([attention_mask[:, :1], torch.ones(b, np_, dtype=attention_mask.dtype),
                       attention_mask[:, 1:]], dim=1)
    h = model.qformer(query_embeds=seq, query_length=0, attention_mask=pmask).last_hidden_state
    prompt_feats = F.normalize(model.text_projection(h[:, 0]), dim=-1)

    return OrderedDict(
        vision_hidden=vision_hidden,
        image_feats=image_feats,
        text_feats=text_feats,
        query_pass1=query_pass1,
        query_feats=query_feats,
        prompt_feats=prompt_feats,
    )


def lavis_copy(model):
    m = copy.deepcopy(model)
    m.vision_model.post_layernorm.eps = LAVIS_LN_VISION_EPS
    return m


# --------------------------------------------------------------------------------------------
# Image preprocessing (SPEC §2 / SPRC: TargetPad -> Resize -> CenterCrop -> RGB -> Normalize),
# Pillow re-implementation of what torchvision does on PIL images.


def target_pad(img, ratio=1.25):
    w, h = img.size
    if max(w, h) / min(w, h) < ratio:
        return img
    scaled = max(w, h) / ratio
    hp = max(int((scaled - w) / 2), 0)
    vp = max(int((scaled - h) / 2), 0)
    if hp == 0 and vp == 0:
        return img
    out = Image.new(img.mode, (w + 2 * hp, h + 2 * vp), 0)
    out.paste(img, (hp, vp))
    return out


def resize_short(img, size):
    w, h = img.size
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long_ / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    if (nw, nh) == (w, h):
        return img
    return img.resize((nw, nh), Image.BICUBIC)


def center_crop(img, size):
    w, h = img.size
    top = int(round((h - size) / 2.0))  # Python round: half to even, as torchvision
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess(img, size):
    img = center_crop(resize_short(target_pad(img), size), size).convert("RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std)[None].contiguous()


def make_query_png(path, w=61, h=29):
    """A smooth random image plus noise; 61x29 has aspect ratio > 1.25 so TargetPad pads
    9 rows top and bottom (61x47), the resize is a real (bicubic, antialiased) downscale and the
    centre crop is off by one from the middle."""
    low = (torch.rand(3, 5, 9) * 255).numpy().astype(np.uint8).transpose(1, 2, 0)
    base = np.asarray(Image.fromarray(low, "RGB").resize((w, h), Image.BILINEAR), dtype=np.float32)
    noise = (torch.randn(h, w, 3) * 12).numpy()
    arr = np.clip(np.round(base + noise), 0, 255).astype(np.uint8)
    Image.fromarray(arr, "RGB").save(path, format="PNG")


# --------------------------------------------------------------------------------------------


def check_close(name, a, b, atol=0.0):
    d = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    assert d <= atol, f"{name}: max abs diff {d} > {atol}"
    return d


def check_sane(name, t):
    assert torch.isfinite(t).all(), f"{name} has non-finite values"
    if t.shape[0] > 1:
        d = (t[0] - t[1]).abs().max().item()
        assert d > 1e-3, f"{name}: batch items nearly equal ({d})"
    assert t.abs().max().item() > 1e-3, f"{name}: all ~0"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="tiny")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_grad_enabled(False)
    out = args.out
    os.makedirs(out, exist_ok=True)
    for sub in ("hf", "hf-sharded", "hf-v5"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
        os.makedirs(os.path.join(out, sub))

    # tokenizer
    with tempfile.TemporaryDirectory() as td:
        tok = build_tokenizer(td)
    tok_json = os.path.join(out, "tokenizer.json")
    tok.backend_tokenizer.save(tok_json)
    from tokenizers import Tokenizer

    raw_tok = Tokenizer.from_file(tok_json)
    for t in TEXTS + [EMBED_TEXT]:
        assert raw_tok.encode(t).ids == tok(t)["input_ids"], t

    # model
    cfg = build_config(args.variant, len(VOCAB))
    model = Blip2ForImageTextRetrieval(cfg).eval()
    perturb(model)
    hf_native = OrderedDict((k, plain(v)) for k, v in model.state_dict().items())
    sd_split = split_qkv_bias(hf_native)

    # HF layouts
    hf_v5 = os.path.join(out, "hf-v5")
    model.save_pretrained(hf_v5, safe_serialization=True)
    saved_native = load_file(os.path.join(hf_v5, "model.safetensors"))
    assert set(saved_native) == set(hf_native), set(saved_native) ^ set(hf_native)
    for k in hf_native:
        check_close(f"save_pretrained {k}", saved_native[k], hf_native[k])
    cfg_json = os.path.join(hf_v5, "config.json")
    for sub in ("hf", "hf-sharded"):
        shutil.copy(cfg_json, os.path.join(out, sub, "config.json"))
    shutil.copy(cfg_json, os.path.join(out, "config.json"))
    for sub in ("hf", "hf-sharded", "hf-v5"):
        shutil.copy(tok_json, os.path.join(out, sub, "tokenizer.json"))
    save_file(sd_split, os.path.join(out, "hf", "model.safetensors"), metadata={"format": "pt"})
    weight_map = write_sharded(sd_split, os.path.join(out, "hf-sharded"))

    # inputs
    vc = cfg.vision_config
    pixel_values = torch.randn(2, 3, vc.image_size, vc.image_size)
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    input_ids = enc["input_ids"].to(torch.int64).contiguous()
    attention_mask = enc["attention_mask"].to(torch.int64).contiguous()
    assert input_ids.shape[1] <= 16
    assert attention_mask.sum(1).tolist()[0] != attention_mask.sum(1).tolist()[1]
    prompt_tokens = torch.randn(1, cfg.num_query_tokens, cfg.qformer_config.hidden_size) * 0.5
    save_file(
        OrderedDict(pixel_values=pixel_values.contiguous(), input_ids=input_ids, attention_mask=attention_mask,
                    prompt_tokens=prompt_tokens.contiguous()),
        os.path.join(out, "inputs.safetensors"),
        metadata={"texts": json.dumps(TEXTS)},
    )

    # LAVIS / SPRC layouts
    sd_lavis = lavis_state_dict(sd_split, cfg)
    torch.save({"model": sd_lavis}, os.path.join(out, "lavis.pth"))
    sd_sprc = lavis_state_dict(sd_split, cfg, with_prompt=prompt_tokens)
    torch.save({"Blip2QformerCirAlignPrompt": sd_sprc}, os.path.join(out, "sprc.pt"))

    # expected outputs
    expected = compute_outputs(model, pixel_values, input_ids, attention_mask, prompt_tokens)
    lav_model = lavis_copy(model)
    lav = compute_outputs(lav_model, pixel_values, input_ids, attention_mask, prompt_tokens)
    for k, v in lav.items():
        expected["lavis_" + k] = v
    expected = OrderedDict((k, plain(v).float()) for k, v in expected.items())
    meta = {
        "variant": args.variant,
        "seed": args.seed,
        "generator": "tools/gen_encoder_fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "lavis_ln_vision_eps": LAVIS_LN_VISION_EPS,
    }
    save_file(expected, os.path.join(out, "expected.safetensors"), metadata={"info": json.dumps(meta, sort_keys=True)})

    # ---------------- sanity checks ----------------
    for k, v in expected.items():
        check_sane(k, v)
    # the library's own ITC forward agrees with the hand-written modes
    itc = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                use_image_text_matching_head=False)
    check_close("itc text_embeds", itc.text_embeds, expected["text_feats"], 1e-6)
    check_close("itc image_embeds", itc.image_embeds, expected["image_feats"], 1e-6)
    # hf-v5 (what save_pretrained wrote) reloads with from_pretrained to the same outputs
    re_model, info = Blip2ForImageTextRetrieval.from_pretrained(hf_v5, attn_implementation="eager",
                                                                output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    re_out = compute_outputs(re_model.eval(), pixel_values, input_ids, attention_mask, prompt_tokens)
    for k, v in re_out.items():
        check_close(f"from_pretrained {k}", v, expected[k])
    # hf/ (split) and hf-sharded/ hold the same numbers
    hf_split = load_file(os.path.join(out, "hf", "model.safetensors"))
    assert set(hf_split) == set(sd_split)
    fused = fuse_qkv_bias(OrderedDict((k, hf_split[k]) for k in sd_split))
    for k in hf_native:
        check_close(f"hf/ {k}", fused[k], hf_native[k])
    sharded = {}
    for fname in sorted(set(weight_map.values())):
        sharded.update(load_file(os.path.join(out, "hf-sharded", fname)))
    assert set(sharded) == set(sd_split)
    for k in sd_split:
        check_close(f"hf-sharded {k}", sharded[k], sd_split[k])
    # lavis.pth / sprc.pt map back onto the model and give the lavis_ outputs
    for fname, key in (("lavis.pth", "model"), ("sprc.pt", "Blip2QformerCirAlignPrompt")):
        blob = torch.load(os.path.join(out, fname), map_location="cpu")
        sd = blob[key]
        for k, v in sd.items():
            assert v.is_contiguous() and v.storage_offset() == 0, (fname, k)
        m2 = Blip2ForImageTextRetrieval(cfg).eval()
        m2.load_state_dict(fuse_qkv_bias(lavis_to_hf(sd, sd_split.keys())), strict=True)
        m2.vision_model.post_layernorm.eps = LAVIS_LN_VISION_EPS
        pt = sd["prompt_tokens"] if "prompt_tokens" in sd else prompt_tokens
        o2 = compute_outputs(m2, pixel_values, input_ids, attention_mask, pt)
        for k, v in o2.items():
            check_close(f"{fname} {k}", v, expected["lavis_" + k])
    eps_gap = {k: (expected[k] - expected["lavis_" + k]).abs().max().item() for k in lav}

    # ---------------- unseen: a real image through the SPEC preprocessing ----------------
    if args.variant == "unseen":
        png = os.path.join(out, "query.png")
        make_query_png(png)
        img = Image.open(png)
        pv = preprocess(img, vc.image_size)
        enc = tok([EMBED_TEXT], padding="max_length", truncation=True, max_length=EMBED_MAX_LEN,
                  return_tensors="pt")
        ids = enc["input_ids"].to(torch.int64).contiguous()
        am = enc["attention_mask"].to(torch.int64).contiguous()
        o = compute_outputs(model, pv, ids, am, prompt_tokens)
        emb = OrderedDict(
            image_embeds=plain(o["image_feats"][0]),
            text_embeds=plain(o["text_feats"][0]),
            query_embeds=plain(o["query_feats"][0]),
            prompt_embeds=plain(o["prompt_feats"][0]),
            pixel_values=plain(pv),
            input_ids=ids,
            attention_mask=am,
        )
        for k in ("image_embeds", "text_embeds", "query_embeds"):
            assert torch.isfinite(emb[k]).all()
        save_file(emb, os.path.join(out, "expected_embed.safetensors"),
                  metadata={"info": json.dumps(dict(meta, text=EMBED_TEXT, image="query.png", max_length=EMBED_MAX_LEN),
                                                 sort_keys=True)})

    # ---------------- report ----------------
    print(f"variant={args.variant} seed={args.seed} transformers={transformers.__version__} torch={torch.__version__}")
    print(f"vocab size {len(VOCAB)}; [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4")
    for t, ids_ in zip(TEXTS, input_ids.tolist()):
        print(f"  {t!r} -> {tok.convert_ids_to_tokens(ids_)}")
    print("max |x - lavis_x| (post_layernorm eps %g vs %g): %s" % (
        vc.layer_norm_eps, LAVIS_LN_VISION_EPS, ", ".join(f"{k} {v:.2e}" for k, v in eps_gap.items())))
    for fname in ("inputs.safetensors", "expected.safetensors") + (
            ("expected_embed.safetensors",) if args.variant == "unseen" else ()):
        with safe_open(os.path.join(out, fname), "pt") as f:
            print(fname)
            for k in f.keys():
                t = f.get_tensor(k)
                print(f"  {k:22s} {str(t.dtype):14s} {list(t.shape)}")
    shard1 = [k for k, v in weight_map.items() if v.startswith("model-00001")]
    print(f"hf-sharded: {len(shard1)} tensors in shard 1, {len(weight_map) - len(shard1)} in shard 2")
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
