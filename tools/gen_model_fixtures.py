#!/usr/bin/env python3
"""Generate the gradient-parity fixtures of DetailFusion's trainable parts (`tests/fixtures/model/`).

Run by hand (never in CI), from the repository root, with the project's peer Python (torch,
transformers 4.46, safetensors, numpy):

    /root/.cache/detailfusion-peer-light/bin/python tools/gen_model_fixtures.py --out tests/fixtures/model

A PyTorch "twin" of the Rust model (crates/df-encoders/src/{hybrid,cir,qformer,nn}.rs,
crates/df-compositor, crates/df-di-branch, crates/df-gm-branch, crates/df-train/src/losses.rs):
two hybrid encoders (DI, GM; Hugging Face `Blip2QFormerModel` + `Blip2TextEmbeddings`, eval mode),
the adaptive compositor written by hand, and the three stage losses of SPEC §4. Every parameter
is randomly perturbed; the reference is computed in float64 from float32-representable weights
and inputs and saved in float32, so an f32 implementation should agree to ~1e-5 relative.

Outputs (`<out>/`):

    weights.safetensors         every parameter, checkpoint names (`di.*`, `gm.*`,
                                `compositor.*`, `temp`), float32
    config.json                 the Blip2 config of the two hybrid encoders (see CONFIG_OVERRIDES)
    compositor_config.json      CompositorConfig in its serde field names
    inputs.safetensors          ref_image, target_image [B, N, W] f32; input_ids, attention_mask
                                [B, L] i64 (metadata "texts")
    expected.safetensors        forward values, the three losses and their gradients
                                (`grad{1,2,3}.<param>`), float32; metadata "info" (JSON)

The encoders reuse the Blip2 config of crates/df-encoders/tests/fixtures/encoders/hf/config.json
with a smaller Q-Former (CONFIG_OVERRIDES): with the original one (hidden 32, 3 layers, FFN 48)
the weights and the four gradient sets alone take ~950 KB, over the 600 KB budget of the fixture.
The overrides keep every code path: a cross-attention layer and a plain one, Q-Former hidden
(24) different from the image width (32) and from the projection width (16).
"""

import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import transformers
from transformers import Blip2Config, PreTrainedTokenizerFast
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings

ENCODER_FIXTURES = "crates/df-encoders/tests/fixtures/encoders"

# Q-Former size reductions with respect to the encoder fixture's config (see the docstring).
CONFIG_OVERRIDES = dict(hidden_size=24, num_hidden_layers=2, intermediate_size=40, max_position_embeddings=32)

B = 4
NUM_IMAGE_TOKENS = 17  # CLS + 4x4 patches of the tiny ViT (image 28, patch 7)
CAPTIONS = [
    "make the dog black",
    "remove the small red squares and add a blue circle in the background",
    "Change the sky to green.",
    "put a white cat on the car with more color",
]

COMPOSITOR_CONFIG = OrderedDict(
    hidden_size=16,
    num_attention_heads=4,
    attend_opposite=True,
    attend_same=True,
    use_ffn=True,
    intermediate_size=32,
    fusion_hidden_size=16,
    fusion=OrderedDict(kind="softmax"),
    layer_norm_eps=1e-5,
)

TEMPS = {"di.temp": 0.1, "gm.temp": 0.08, "temp": 0.09}
TEMP_RANGE = (0.001, 0.5)
GAMMA = 0.5
TEXT_ONLY_WEIGHT = 0.4
ALIGN_WEIGHT = 0.4

# Perturbation: Linear weights N(0, (GAIN / sqrt(fan_in))^2), biases N(0, 0.1^2), LayerNorm
# weights 1 + N(0, 0.1^2), embeddings / learned tokens N(0, 1).
LINEAR_GAIN = 1.0
# The compositor's q_proj/k_proj act on unit-norm features (components ~ 1/sqrt(P)); a larger
# gain keeps its attention away from uniform.
COMPOSITOR_QK_GAIN = 3.0


# --------------------------------------------------------------------------------------------
# The twin


class HybridEncoder(torch.nn.Module):
    """A branch's hybrid encoder with checkpoint names: `query_tokens`, `embeddings.*`,
    `qformer.*`, `vision_projection`, `text_projection`, `token_projection`, `temp` (and
    `prompt_tokens` for GM)."""

    def __init__(self, cfg, with_prompts):
        super().__init__()
        qc = cfg.qformer_config
        h, p, q = qc.hidden_size, cfg.image_text_hidden_size, cfg.num_query_tokens
        self.query_tokens = torch.nn.Parameter(torch.zeros(1, q, h))
        self.embeddings = Blip2TextEmbeddings(qc)
        # candle's Embedding has no padding_idx (the [PAD] row gets its gradient like any other)
        self.embeddings.word_embeddings.padding_idx = None
        self.qformer = Blip2QFormerModel(qc)
        self.vision_projection = torch.nn.Linear(h, p)
        self.text_projection = torch.nn.Linear(h, p)
        if with_prompts:
            self.prompt_tokens = torch.nn.Parameter(torch.zeros(1, q, h))
        self.token_projection = torch.nn.Linear(h, p)
        self.temp = torch.nn.Parameter(torch.tensor(0.07))
        self.nq = q

    def image_features(self, image):
        """Image mode: `[B, N, W]` -> L2(vision_projection(qformer(queries x-attend image))) `[B, Q, P]`."""
        queries = self.query_tokens.expand(image.shape[0], -1, -1)
        h = self.qformer(query_embeds=queries, encoder_hidden_states=image).last_hidden_state
        return F.normalize(self.vision_projection(h), dim=-1)

    def composed_query(self, image, input_ids, attention_mask):
        """SPRC two passes -> (L2(text_projection(h2[:, Q])) `[B, P]`, pass-1 queries `[B, Q, H]`)."""
        b, nq = image.shape[0], self.nq
        queries = self.query_tokens.expand(b, -1, -1)
        mask = torch.cat([torch.ones(b, nq, dtype=attention_mask.dtype), attention_mask], dim=1)
        h1 = self.qformer(query_embeds=self.embeddings(input_ids=input_ids, query_embeds=queries),
                          query_length=nq, attention_mask=mask, encoder_hidden_states=image).last_hidden_state
        pass1 = h1[:, :nq]
        h2 = self.qformer(query_embeds=self.embeddings(input_ids=input_ids, query_embeds=pass1),
                          query_length=0, attention_mask=mask).last_hidden_state
        return F.normalize(self.text_projection(h2[:, nq]), dim=-1), pass1

    def branch_output(self, image, input_ids, attention_mask):
        """(global `[B, P]`, tokens = token_projection(pass1) `[B, Q, P]`, pass1 `[B, Q, H]`)."""
        g, pass1 = self.composed_query(image, input_ids, attention_mask)
        return g, self.token_projection(pass1), pass1

    def text_only_features(self, input_ids, attention_mask):
        """[CLS] + prompt_tokens + text[1:], positions over the whole sequence, query_length 0,
        L2(text_projection(h[:, 0]))."""
        b = input_ids.shape[0]
        words = self.embeddings.word_embeddings(input_ids)
        prompts = self.prompt_tokens.expand(b, -1, -1)
        seq = torch.cat([words[:, :1], prompts, words[:, 1:]], dim=1)
        seq = seq + self.embeddings.position_embeddings(torch.arange(seq.shape[1]))[None]
        np_ = prompts.shape[1]
        mask = torch.cat([attention_mask[:, :1], torch.ones(b, np_, dtype=attention_mask.dtype),
                          attention_mask[:, 1:]], dim=1)
        h = self.qformer(query_embeds=seq, query_length=0, attention_mask=mask).last_hidden_state
        return F.normalize(self.text_projection(h[:, 0]), dim=-1)


class CrossAttention(torch.nn.Module):
    """One query vector `[B, P]` attends a token set `[B, T, P]` (df-compositor CrossAttention)."""

    def __init__(self, p, heads):
        super().__init__()
        self.q_proj = torch.nn.Linear(p, p)
        self.k_proj = torch.nn.Linear(p, p)
        self.v_proj = torch.nn.Linear(p, p)
        self.out_proj = torch.nn.Linear(p, p)
        self.heads = heads
        self.scale = (p // heads) ** -0.5

    def split(self, x):
        b, s, w = x.shape
        return x.reshape(b, s, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, query, tokens, probs_out=None):
        q = self.split(self.q_proj(query[:, None]))  # [B, h, 1, d]
        k = self.split(self.k_proj(tokens))  # [B, h, T, d]
        v = self.split(self.v_proj(tokens))
        probs = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)
        if probs_out is not None:
            probs_out.append(probs)
        b, h, sq, d = q.shape
        ctx = (probs @ v).transpose(1, 2).reshape(b, sq, h * d)[:, 0]
        return self.out_proj(ctx)


class ExtractionBlock(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        p, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.opposite = CrossAttention(p, cfg["num_attention_heads"])
        self.same = CrossAttention(p, cfg["num_attention_heads"])
        self.norm = torch.nn.LayerNorm(p, eps=eps)
        self.ffn = torch.nn.Module()
        self.ffn.fc1 = torch.nn.Linear(p, cfg["intermediate_size"])
        self.ffn.fc2 = torch.nn.Linear(cfg["intermediate_size"], p)
        self.ffn_norm = torch.nn.LayerNorm(p, eps=eps)

    def forward(self, global_, own, other, probs_out=None):
        x = global_ + self.opposite(global_, other, probs_out) + self.same(global_, own, probs_out)
        c = self.norm(x)
        h = self.ffn.fc2(F.gelu(self.ffn.fc1(c)))  # erf GELU (PyTorch default)
        return self.ffn_norm(c + h)


class Compositor(torch.nn.Module):
    """`fine_grained.{di,gm}.*`, `fusion.mlp.{fc1,fc2}`; softmax fusion."""

    def __init__(self, cfg):
        super().__init__()
        p = cfg["hidden_size"]
        self.fine_grained = torch.nn.Module()
        self.fine_grained.di = ExtractionBlock(cfg)
        self.fine_grained.gm = ExtractionBlock(cfg)
        self.fusion = torch.nn.Module()
        self.fusion.mlp = torch.nn.Module()
        self.fusion.mlp.fc1 = torch.nn.Linear(2 * p, cfg["fusion_hidden_size"])
        self.fusion.mlp.fc2 = torch.nn.Linear(cfg["fusion_hidden_size"], 2)

    def forward(self, q_di, t_di, q_gm, t_gm, probs_out=None):
        c_di = self.fine_grained.di(q_di, t_di, t_gm, probs_out)
        c_gm = self.fine_grained.gm(q_gm, t_gm, t_di, probs_out)
        logits = self.fusion.mlp.fc2(F.gelu(self.fusion.mlp.fc1(torch.cat([c_di, c_gm], dim=1))))
        alpha = torch.softmax(logits, dim=-1)
        fused = F.normalize(alpha[:, 0:1] * q_di + alpha[:, 1:2] * q_gm, dim=-1)
        return fused, alpha, c_di, c_gm


class Model(torch.nn.Module):
    def __init__(self, cfg, ccfg):
        super().__init__()
        self.di = HybridEncoder(cfg, with_prompts=False)
        self.gm = HybridEncoder(cfg, with_prompts=True)
        self.compositor = Compositor(ccfg)
        self.temp = torch.nn.Parameter(torch.tensor(0.07))


# --------------------------------------------------------------------------------------------
# Losses (crates/df-train/src/losses.rs)


def max_token_scores(q, z):
    """`q: [B, P]`, `z: [N, Q, P]` -> `[B, N]`, max over tokens."""
    return torch.einsum("bp,nkp->bnk", q, z).max(dim=-1).values


def paired_max_token_scores(q, z):
    """`q: [B, P]`, `z: [B, Q, P]` -> `[B]`."""
    return torch.einsum("bp,bkp->bk", q, z).max(dim=-1).values


def scaled(logits, temp):
    return logits / temp.clamp(*TEMP_RANGE)


def contrastive(q, z, temp):
    logits = max_token_scores(q, z)
    return F.cross_entropy(scaled(logits, temp), torch.arange(q.shape[0]))


def hard_negative_contrastive(q, z, z_ref, temp):
    logits = torch.cat([max_token_scores(q, z), paired_max_token_scores(q, z_ref)[:, None]], dim=1)
    return F.cross_entropy(scaled(logits, temp), torch.arange(q.shape[0]))


def prompt_alignment(pass1, prompt_tokens):
    fused = pass1.mean(1)
    prompts = prompt_tokens.detach().mean(1).expand_as(fused)
    return ((fused - prompts) ** 2).mean()


def max_gap(q, z):
    """Smallest gap between the best and second-best token over all (query, item) pairs:
    a tie would make the max's subgradient depend on rounding."""
    s = torch.einsum("bp,nkp->bnk", q, z).sort(dim=-1, descending=True).values
    return (s[..., 0] - s[..., 1]).min().item()


def max_gap_paired(q, z):
    s = torch.einsum("bp,bkp->bk", q, z).sort(dim=-1, descending=True).values
    return (s[:, 0] - s[:, 1]).min().item()


# --------------------------------------------------------------------------------------------


@torch.no_grad()
def perturb(model):
    lns = {id(m.weight): m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    ln_biases = {id(m.bias) for m in lns.values()}
    linears = {id(m.weight): m for m in model.modules() if isinstance(m, torch.nn.Linear)}
    comp_qk = {id(m.weight) for n, m in model.named_modules()
               if n.startswith("compositor.") and n.endswith(("q_proj", "k_proj"))}
    for name, p in model.named_parameters():
        if name in TEMPS:
            p.fill_(TEMPS[name])
        elif id(p) in lns:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape))
        elif id(p) in ln_biases or name.endswith(".bias"):
            p.copy_(0.1 * torch.randn(p.shape))
        elif id(p) in linears:
            gain = COMPOSITOR_QK_GAIN if id(p) in comp_qk else LINEAR_GAIN
            p.copy_(torch.randn(p.shape) * gain / math.sqrt(p.shape[1]))
        else:  # embeddings, query_tokens, prompt_tokens
            p.copy_(torch.randn(p.shape))
    for name, p in model.named_parameters():
        assert name in TEMPS or p.abs().max() > 0, name


def load_tokenizer(path):
    tok = PreTrainedTokenizerFast(tokenizer_file=path, pad_token="[PAD]", unk_token="[UNK]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    assert tok.convert_tokens_to_ids("[PAD]") == 0 and tok.convert_tokens_to_ids("[CLS]") == 2
    return tok


def grads(loss, named):
    names = list(named)
    gs = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True, retain_graph=True)
    return OrderedDict((n, torch.zeros_like(named[n]) if g is None else g) for n, g in zip(names, gs))


def run(model, inputs):
    """All forward values and the three stage losses + gradients, in the model's dtype."""
    ref, tgt, ids, am = inputs["ref_image"], inputs["target_image"], inputs["input_ids"], inputs["attention_mask"]
    params = OrderedDict(model.named_parameters())
    di_p = OrderedDict((n, p) for n, p in params.items() if n.startswith("di."))
    gm_p = OrderedDict((n, p) for n, p in params.items() if n.startswith("gm."))
    comp_p = OrderedDict((n, p) for n, p in params.items() if n.startswith("compositor.") or n == "temp")
    assert len(di_p) + len(gm_p) + len(comp_p) == len(params)
    di, gm = model.di, model.gm
    out = OrderedDict()

    # stage 1: DI with its own reference as a hard negative; gallery = DI image mode
    z = di.image_features(tgt)
    z_ref = di.image_features(ref)
    q_di, t_di, p_di = di.branch_output(ref, ids, am)
    loss1 = hard_negative_contrastive(q_di, z, z_ref, di.temp)
    g1 = grads(loss1, di_p)

    # stage 2: GM + gamma DI + text-only + prompt alignment (gallery still DI, trainable)
    q_gm, t_gm, p_gm = gm.branch_output(ref, ids, am)
    text_only = gm.text_only_features(ids, am)
    l_gm = contrastive(q_gm, z, gm.temp)
    l_di = contrastive(q_di, z, di.temp)
    l_txt = contrastive(text_only, z, gm.temp)
    l_align = prompt_alignment(p_gm, gm.prompt_tokens)
    loss2 = l_gm + GAMMA * l_di + TEXT_ONLY_WEIGHT * l_txt + ALIGN_WEIGHT * l_align
    g2 = grads(loss2, OrderedDict(list(di_p.items()) + list(gm_p.items())))

    # stage 3: compositor on frozen branch outputs and gallery
    frozen = [t.detach() for t in (q_di, t_di, q_gm, t_gm, z)]
    probs = []
    fused, alpha, c_di, c_gm = model.compositor(*frozen[:4], probs_out=probs)
    loss3 = contrastive(fused, frozen[4], model.temp)
    g3 = grads(loss3, comp_p)

    vals = OrderedDict(
        z=z, z_ref=z_ref, q_di=q_di, q_gm=q_gm, tokens_di=t_di, tokens_gm=t_gm, pass1_di=p_di, pass1_gm=p_gm,
        text_only=text_only, c_di=c_di, c_gm=c_gm, fused=fused, alpha=alpha,
        loss1=loss1, loss2=loss2, loss2_gm=l_gm, loss2_di=l_di, loss2_text_only=l_txt, loss2_align=l_align,
        loss3=loss3,
    )
    for k, v in vals.items():
        out[k] = v.detach()
    for prefix, g in (("grad1.", g1), ("grad2.", g2), ("grad3.", g3)):
        for n, t in g.items():
            out[prefix + n] = t.detach()
    diag = dict(
        gap_z=min(max_gap(q, z) for q in (q_di, q_gm, text_only, fused)),
        gap_zref=max_gap_paired(q_di, z_ref),
        compositor_attention_max_prob=max(p.max().item() for p in probs),
        compositor_attention_min_prob=min(p.min().item() for p in probs),
    )
    return out, diag


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures/model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    cfg = Blip2Config.from_pretrained(os.path.join(ENCODER_FIXTURES, "hf"))
    for k, v in CONFIG_OVERRIDES.items():
        setattr(cfg.qformer_config, k, v)
    cfg._attn_implementation = "eager"
    cfg.qformer_config._attn_implementation = "eager"
    qc = cfg.qformer_config
    assert cfg.image_text_hidden_size == COMPOSITOR_CONFIG["hidden_size"]
    nq, h, w = cfg.num_query_tokens, qc.hidden_size, qc.encoder_hidden_size

    tok = load_tokenizer(os.path.join(ENCODER_FIXTURES, "tokenizer.json"))
    enc = tok(CAPTIONS, padding="longest", return_tensors="pt")
    input_ids = enc["input_ids"].to(torch.int64).contiguous()
    attention_mask = enc["attention_mask"].to(torch.int64).contiguous()
    lengths = attention_mask.sum(1).tolist()
    assert len(set(lengths)) == B, lengths
    assert nq + input_ids.shape[1] <= qc.max_position_embeddings
    assert (input_ids[:, 0] == 2).all()

    model = Model(cfg, COMPOSITOR_CONFIG).float().eval()
    perturb(model)
    weights = OrderedDict((n, p.detach().clone().contiguous()) for n, p in model.named_parameters())
    inputs = OrderedDict(
        ref_image=torch.randn(B, NUM_IMAGE_TOKENS, w),
        target_image=torch.randn(B, NUM_IMAGE_TOKENS, w),
        input_ids=input_ids,
        attention_mask=attention_mask,
    )

    # reference in float64 (weights and images are exact f32 values)
    model64 = Model(cfg, COMPOSITOR_CONFIG).double().eval()
    model64.load_state_dict(OrderedDict((k, v.double()) for k, v in weights.items()), strict=True)
    in64 = OrderedDict((k, v.double() if v.is_floating_point() else v) for k, v in inputs.items())
    expected64, diag = run(model64, in64)
    # the same in float32, to see what an f32 implementation can reach
    expected32, _ = run(model, inputs)

    # Attention key biases get no gradient: they add the same q.b_k to every score of a query
    # row, which softmax ignores. Store exact zeros instead of float64 round-off (~1e-17).
    for k in list(expected64):
        if k.startswith("grad") and k.endswith((".key.bias", ".k_proj.bias")):
            assert expected64[k].abs().max().item() < 1e-12, k
            expected64[k] = torch.zeros_like(expected64[k])
    # What the same computation in torch float32 reaches: per stage, the smallest `atol` with
    # which |f32 - ref| <= atol + 1e-4 |ref| holds elementwise.
    f32_atol = {}
    for group in ("values", "grad1", "grad2", "grad3"):
        ks = [k for k in expected64 if (k.startswith(group) if group != "values" else not k.startswith("grad"))]
        f32_atol[group] = max(((expected32[k].double() - expected64[k]).abs() - 1e-4 * expected64[k].abs())
                              .max().item() for k in ks)
    expected = OrderedDict((k, v.float().contiguous()) for k, v in expected64.items())

    # ---------------- self-checks ----------------
    for k, v in expected.items():
        assert torch.isfinite(v).all(), f"{k} is not finite"
    for stage, names in ((1, [n for n in weights if n.startswith("di.")]),
                         (2, [n for n in weights if n.startswith(("di.", "gm."))]),
                         (3, [n for n in weights if n.startswith("compositor.") or n == "temp"])):
        gs = [expected[f"grad{stage}.{n}"] for n in names]
        assert sum(g.abs().sum().item() for g in gs) > 0, f"stage {stage}: all gradients are zero"
    zero = {k for k, v in expected.items() if k.startswith("grad") and v.abs().max().item() == 0}
    expected_zero = {k for k in expected if k.startswith("grad") and k.endswith((".key.bias", ".k_proj.bias"))}
    expected_zero |= {"grad1.di.token_projection.weight", "grad1.di.token_projection.bias",
                     "grad2.di.token_projection.weight", "grad2.di.token_projection.bias",
                     "grad2.gm.token_projection.weight", "grad2.gm.token_projection.bias",
                     "grad2.gm.vision_projection.weight", "grad2.gm.vision_projection.bias"}
    assert zero == expected_zero, sorted(zero ^ expected_zero)
    for k in ("q_di", "q_gm"):
        d = (expected["fused"] - expected[k]).abs().max().item()
        assert d > 1e-2, f"fused ~ {k} ({d})"
    a = expected["alpha"]
    assert a.min() > 0.05 and a.max() < 0.95, a
    assert diag["gap_z"] > 1e-4 and diag["gap_zref"] > 1e-4, diag
    for k in ("z", "q_di", "q_gm", "text_only", "fused"):
        v = expected[k]
        assert (v[0] - v[1]).abs().max() > 1e-3, k
    for k in ("loss1", "loss2", "loss3"):
        assert expected[k].shape == () and 0.05 < expected[k].item() < 20, (k, expected[k])

    # ---------------- save ----------------
    meta = {
        "generator": "tools/gen_model_fixtures.py",
        "seed": args.seed,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "reference_dtype": "float64",
        "batch": B,
        "gamma": GAMMA,
        "text_only_weight": TEXT_ONLY_WEIGHT,
        "align_weight": ALIGN_WEIGHT,
        "temp_range": list(TEMP_RANGE),
        "config_overrides": CONFIG_OVERRIDES,
        "torch_f32_atol_at_rtol_1e-4": f32_atol,
        "suggested_tolerance": {"rtol": 1e-4, "atol": 1e-5},
        "zero_gradients": sorted(expected_zero),
    }
    save_file(weights, os.path.join(args.out, "weights.safetensors"), metadata={"format": "pt"})
    save_file(inputs, os.path.join(args.out, "inputs.safetensors"), metadata={"texts": json.dumps(CAPTIONS)})
    save_file(expected, os.path.join(args.out, "expected.safetensors"),
              metadata={"info": json.dumps(meta, sort_keys=True)})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(cfg.to_json_string(use_diff=True))
    with open(os.path.join(args.out, "compositor_config.json"), "w") as f:
        json.dump(COMPOSITOR_CONFIG, f, indent=2)
        f.write("\n")

    # the written config reads back as the one used
    cfg2 = Blip2Config.from_pretrained(args.out)
    for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
              "num_attention_heads", "encoder_hidden_size", "cross_attention_frequency", "layer_norm_eps",
              "vocab_size", "hidden_act"):
        assert getattr(cfg2.qformer_config, k) == getattr(qc, k), k
    assert cfg2.num_query_tokens == nq and cfg2.image_text_hidden_size == cfg.image_text_hidden_size

    # ---------------- report ----------------
    print(f"seed={args.seed} torch={torch.__version__} transformers={transformers.__version__}")
    print(f"qformer hidden {h}, layers {qc.num_hidden_layers}, ffn {qc.intermediate_size}, heads "
          f"{qc.num_attention_heads}, Q={nq}, P={cfg.image_text_hidden_size}, image [{B}, {NUM_IMAGE_TOKENS}, {w}]")
    for t, ids_ in zip(CAPTIONS, input_ids.tolist()):
        print(f"  {t!r} -> {tok.convert_ids_to_tokens(ids_)}")
    print("losses: " + ", ".join(f"{k}={expected[k].item():.6f}" for k in expected if k.startswith("loss")))
    print("alpha:", [[round(x, 4) for x in r] for r in expected["alpha"].tolist()])
    print("diagnostics:", {k: round(v, 6) for k, v in diag.items()})
    print("torch float32 vs the float64 reference, atol needed with rtol 1e-4:",
          {k: f"{v:.1e}" for k, v in f32_atol.items()})
    print("zero gradients (unused parameters, attention key biases):")
    for k in sorted(zero):
        print("   ", k)
    total = 0
    for fname in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, fname))
        total += size
        print(f"  {fname:28s} {size:8d} B")
    print(f"  total {total} B")
    assert total < 600_000, total
    with safe_open(os.path.join(args.out, "expected.safetensors"), "pt") as f:
        n = len(f.keys())
    print(f"expected.safetensors: {n} tensors; weights.safetensors: {len(weights)} tensors")
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
