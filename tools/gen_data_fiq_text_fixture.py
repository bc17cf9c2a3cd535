#!/usr/bin/env python3
"""Writes crates/df-data/tests/fixtures/fiq_texts.json: for every Fashion IQ captions file in
shared/data, the FNV-1a 64 hash of the newline-joined query texts built exactly as SPRC/CLIP4Cir do
(eval text and the four training variants), plus a few examples. df-data's tests recompute them.

Usage: python3 tools/gen_data_fiq_text_fixture.py [DATA_ROOT]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared", "data", "fashion-iq")
OUT = os.path.join(HERE, "..", "crates", "df-data", "tests", "fixtures", "fiq_texts.json")


def fnv1a64(s: str) -> str:
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def variants(c1, c2):
    # SPRC src/utils.py generate_randomized_fiq_caption and the validation text.
    return {
        "eval": f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}",
        "first_and_second": f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}",
        "second_and_first": f"{c2.strip('.?, ').capitalize()} and {c1.strip('.?, ')}",
        "first": f"{c1.strip('.?, ').capitalize()}",
        "second": f"{c2.strip('.?, ').capitalize()}",
    }


out = {}
for cat in ["dress", "shirt", "toptee"]:
    for split in ["train", "val", "test"]:
        entries = json.load(open(os.path.join(ROOT, "captions", f"cap.{cat}.{split}.json")))
        texts = {k: [] for k in variants("", "")}
        for e in entries:
            for k, v in variants(*e["captions"]).items():
                texts[k].append(v)
        out[f"{cat}.{split}"] = {
            "count": len(entries),
            "hash": {k: fnv1a64("\n".join(v)) for k, v in texts.items()},
            "examples": [[i, texts["eval"][i]] for i in range(0, len(entries), max(1, len(entries) // 5))],
        }
with open(OUT, "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write("\n")
print("wrote", OUT)
