#!/usr/bin/python3
"""Fine-tuning data for the KJV model: Debian fortune cookies as train.jsonl / eval.jsonl.

    /usr/bin/python3 scripts/pretrain/make-finetune-data.py --out DIR [--files fortunes wisdom literature people]

Reads the cookie files of the Debian packages `fortunes` / `fortunes-min` (/usr/share/games/fortunes/NAME:
records separated by lines holding a single `%`), cleans each record into plain text and writes
{"text": ...} lines: every 10th record (the 10th, 20th, ... over the files in the order given) goes to
eval.jsonl, the rest to train.jsonl. Deterministic: same files, same output.

Cleaning: wrapped lines are joined; a line that starts indented (dialogue, a new paragraph) starts a new
line; an attribution ("\\t\\t-- Author") becomes a line "-- Author"; runs of spaces become one. Records
longer than --max-chars after cleaning are dropped (the model was trained on 256-token windows).

License: the fortune files are distributed under the BSD license of fortune-mod (University of
California, see /usr/share/doc/fortunes/copyright); the quotations in them belong to their authors.
"""

import argparse
import json
import os

FORTUNE_DIR = "/usr/share/games/fortunes"


def records(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    rec, out = [], []
    for line in text.split("\n"):
        if line == "%":
            out.append(rec)
            rec = []
        else:
            rec.append(line)
    out.append(rec)
    return [r for r in out if any(x.strip() for x in r)]


def clean(lines):
    """Join wrapped lines; indented lines start a new line; attributions become '-- Author'."""
    out = []
    for raw in lines:
        line = raw.rstrip()
        if not line.strip():
            if out and out[-1] != "":
                out.append("")  # paragraph break
            continue
        indented = line[0] in " \t"
        body = " ".join(line.split())
        if not out or out[-1] == "" or indented or body.startswith("-- "):
            out.append(body)
        else:
            out[-1] += " " + body
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for train.jsonl and eval.jsonl")
    ap.add_argument("--files", nargs="+", default=["fortunes", "wisdom", "literature", "people"],
                    help="cookie files under " + FORTUNE_DIR)
    ap.add_argument("--max-chars", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=10)
    args = ap.parse_args()

    texts, dropped = [], 0
    for name in args.files:
        for rec in records(os.path.join(FORTUNE_DIR, name)):
            t = clean(rec)
            if not t or len(t) > args.max_chars:
                dropped += 1
                continue
            texts.append(t)
    os.makedirs(args.out, exist_ok=True)
    n = {"train": 0, "eval": 0}
    with open(os.path.join(args.out, "train.jsonl"), "w", encoding="utf-8") as tr, \
            open(os.path.join(args.out, "eval.jsonl"), "w", encoding="utf-8") as ev:
        for i, t in enumerate(texts):
            split = "eval" if (i + 1) % args.eval_every == 0 else "train"
            (ev if split == "eval" else tr).write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
            n[split] += 1
    print(f"{' '.join(args.files)}: {len(texts)} records ({dropped} longer than {args.max_chars} chars dropped): "
          f"{n['train']} in {args.out}/train.jsonl, {n['eval']} in {args.out}/eval.jsonl")


if __name__ == "__main__":
    main()
