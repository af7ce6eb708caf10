#!/usr/bin/python3
"""Compare this folder's logits from pretrain.py's Llama forward with peft.cpp's (`peft forward`).

    /usr/bin/python3 scripts/pretrain/check-logits.py --model models/kjv-llama --peft build/peft

Both run the stored bfloat16 weights in float32 (with --dtype bfloat16 peft computes in bfloat16 and the
differences grow to bfloat16 rounding). Encodes a few KJV and fortune-like lines (with <s> first),
runs `peft forward --input-ids IDS.json --out OUT.safetensors`, reads OUT with pretrain.py's
safetensors reader and prints the largest absolute difference per sequence; exits 1 above --tol.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import pretrain  # noqa: E402

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "The LORD is my shepherd; I shall not want.",
    "Blessed are the meek: for they shall inherit the earth.",
    "A computer lets you make more mistakes faster than any invention in human history.",
    "It's 12:45 and we've got 1234567 things to do!",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--peft", required=True, help="the peft CLI")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="peft's compute dtype")
    ap.add_argument("--tol", type=float, default=None, help="default 2e-3 (float32), 0.5 (bfloat16)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with open(os.path.join(args.model, "tokenizer.json")) as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    enc = bpe.Encoder(vocab, [tuple(m) for m in tj["model"]["merges"]])
    bos = vocab["<s>"]
    model = pretrain.load_model(args.model, torch.float32)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for text in TEXTS:
            ids = [bos] + enc.encode(text)
            with open(os.path.join(tmp, "ids.json"), "w") as f:
                json.dump([ids, ids], f)  # a batch of two rows
            out = os.path.join(tmp, "out.safetensors")
            subprocess.run([args.peft, "forward", "--model", args.model, "--input-ids", os.path.join(tmp, "ids.json"),
                            "--out", out, "--dtype", args.dtype, "--threads", "1"], check=True, capture_output=True)
            theirs = pretrain.load_safetensors(out)["logits"].float()
            with torch.no_grad():
                ours = model(torch.tensor([ids, ids]))
            diff = (ours - theirs).abs().max().item()
            same_argmax = bool((ours.argmax(-1) == theirs.argmax(-1)).all())
            worst = max(worst, diff)
            print(f"{len(ids):3d} tokens  max |diff| {diff:.2e}  (logits up to {ours.abs().max().item():.1f})  "
                  f"argmax equal: {same_argmax}  {text!r}")
    tol = args.tol if args.tol is not None else (2e-3 if args.dtype == "float32" else 0.5)
    print(f"peft --dtype {args.dtype}: worst max |diff| {worst:.2e} (tolerance {tol:g})")
    sys.exit(0 if worst <= tol else 1)


if __name__ == "__main__":
    main()
