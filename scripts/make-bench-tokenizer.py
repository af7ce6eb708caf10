#!/usr/bin/python3
"""tokenizer.json + tokenizer_config.json of N tokens in a model folder (a random benchmark model written by
`peft bench --shape ... --save-model DIR`), so that `peft export --format gguf` and llama.cpp load it.
models/kjv-llama's byte-level BPE (4096 tokens) extended with merges of existing tokens (a + b) to N tokens.
Python's standard library only.

  scripts/make-bench-tokenizer.py DIR [--vocab N]   (N: config.json's vocab_size by default)
"""
import argparse
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KJV = os.path.join(REPO, "models", "kjv-llama")


def extended_tokenizer(n_vocab):
    tj = json.load(open(os.path.join(KJV, "tokenizer.json"), encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    merges = tj["model"]["merges"]
    if n_vocab < len(vocab):
        raise SystemExit(f"--vocab {n_vocab} < kjv-llama's {len(vocab)}")
    specials = {t["content"] for t in tj["added_tokens"]}
    pieces = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in specials]
    nid = len(vocab)
    k = 8
    while nid < n_vocab:
        k *= 2  # widen the pool of left/right pieces until enough new tokens exist
        for a in pieces[:k]:
            for b in pieces[:k]:
                if nid >= n_vocab:
                    break
                if a + b in vocab:
                    continue
                vocab[a + b] = nid
                merges.append([a, b] if isinstance(merges[0], list) else f"{a} {b}")
                nid += 1
            if nid >= n_vocab:
                break
    return tj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--vocab", type=int, default=0)
    a = ap.parse_args()
    n = a.vocab or json.load(open(os.path.join(a.dir, "config.json")))["vocab_size"]
    tc = json.load(open(os.path.join(KJV, "tokenizer_config.json")))
    json.dump(tc, open(os.path.join(a.dir, "tokenizer_config.json"), "w"), indent=2)
    with open(os.path.join(a.dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(extended_tokenizer(n), f, ensure_ascii=False)


if __name__ == "__main__":
    main()
