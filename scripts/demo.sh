#!/usr/bin/env bash
# The main job on the bundled default: fine-tune a LoRA adapter on the bundled pretrained model
# (models/kjv-llama: a 4M-parameter Llama pretrained on the King James Bible) so that it writes like
# Debian's fortune cookies. Compiled training with a progress bar, evaluation before and after,
# `peft eval` of the model without and with the adapter (perplexity, multiple choice, KL),
# a checkpoint, the saved adapter and its loss plot; then samples without and with the adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/demo}
mkdir -p "$out"
# the fine-tuning data: fortune cookies (Debian's fortunes packages) as {"text": ...} JSONL records
python3 scripts/pretrain/make-finetune-data.py --out "$out/data"
./build/peft info --model models/kjv-llama
./build/peft train --model models/kjv-llama --method lora --r 16 --lora-alpha 32 --target-modules all-linear \
  --data "$out/data/train.jsonl" --eval-data "$out/data/eval.jsonl" --packing --max-length 256 \
  --batch-size 8 --epochs 3 --lr 2e-3 --lr-scheduler cosine --warmup-steps 10 --seed 1 \
  --eval-on-start --eval-steps 40 --save-steps 40 --save-total-limit 1 \
  --log-file "$out/train-log.jsonl" --out "$out/adapter" --compile
# the fine-tune measured: perplexity, bits per byte and a multiple-choice cloze test made from the held-out
# cookies (the true ending of each among 3 others), without the adapter and with it (KL against the base)
python3 scripts/pretrain/make-choice-task.py --data "$out/data/eval.jsonl" --out "$out/data/task.jsonl"
echo "--- evaluation without the adapter:"
./build/peft eval --model models/kjv-llama --data "$out/data/eval.jsonl" --task "$out/data/task.jsonl"
echo "--- evaluation with the adapter:"
./build/peft eval --model models/kjv-llama --adapter "$out/adapter" --data "$out/data/eval.jsonl" \
  --task "$out/data/task.jsonl" --compare-to __base__ --json "$out/eval.json"
prompts=(--prompt "A wise man" --prompt "The secret of life is" --prompt "Never")
sample=(--max-new-tokens 40 --do-sample --temperature 0.8 --top-k 40 --seed 3)
echo "--- without the adapter (KJV style):"
./build/peft generate --model models/kjv-llama "${prompts[@]}" "${sample[@]}"
echo "--- with the adapter, eager:"
./build/peft generate --model models/kjv-llama --adapter "$out/adapter" "${prompts[@]}" "${sample[@]}"
echo "--- with the adapter, compiled:"
./build/peft generate --model models/kjv-llama --adapter "$out/adapter" "${prompts[@]}" "${sample[@]}" --compile
echo "adapter: $out/adapter   log: $out/train-log.jsonl   loss plot: $out/train-log.png   evaluation: $out/eval.json"
