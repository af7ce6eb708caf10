#!/usr/bin/python3
"""A multiple-choice task from fine-tuning records, for `peft eval --task`.

    /usr/bin/python3 scripts/pretrain/make-choice-task.py --data DIR/eval.jsonl --out DIR/task.jsonl [--choices 4]

Each {"text": ...} record of at least 8 words becomes one item in the shape lm-evaluation-harness's
multiple-choice tasks reduce to (a cloze test, like HellaSwag's endings): the context is the record's first
half (whole words), the choices its true second half and the second halves of the next records, the true one
at a position that rotates with the item number. {"context": str, "choices": [str, ...], "gold": i}.
Deterministic: same data, same task.
"""

import argparse
import json


def halves(text):
    words = text.split(" ")
    cut = len(words) // 2
    return " ".join(words[:cut]), " " + " ".join(words[cut:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--choices", type=int, default=4)
    a = ap.parse_args()
    with open(a.data, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    texts = [t for t in texts if len(t.split(" ")) >= 8]
    if len(texts) < a.choices:
        raise SystemExit(f"{a.data}: fewer than {a.choices} records of 8 words or more")
    parts = [halves(t) for t in texts]
    items = []
    for i, (context, ending) in enumerate(parts):
        others = [parts[(i + k) % len(parts)][1] for k in range(1, a.choices)]
        gold = i % a.choices
        choices = others[:gold] + [ending] + others[gold:]
        items.append({"context": context, "choices": choices, "gold": gold})
    with open(a.out, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"{a.out}: {len(items)} items, {a.choices} choices each")


if __name__ == "__main__":
    main()
