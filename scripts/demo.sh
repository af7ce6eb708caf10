#!/usr/bin/env bash
# The main job on the bundled default: fine-tune a LoRA adapter on the bundled tiny Llama so that it
# learns one sentence (compiled training), then generate with it, eager and compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/demo}
mkdir -p "$out"
./build/peft info --model models/tiny-llama
./build/peft train --model models/tiny-llama --method lora --r 16 --lora-alpha 32 --target-modules all-linear \
  --data models/demo-data.json --batch-size 4 --steps 300 --optimizer adamw --lr 1e-2 --seed 1 \
  --log-file "$out/train-log.jsonl" --out "$out/adapter" --compile
echo "--- without the adapter:"
./build/peft generate --model models/tiny-llama --prompt "Once upon" --max-new-tokens 60
echo "--- with the adapter (eager):"
./build/peft generate --model models/tiny-llama --adapter "$out/adapter" --prompt "Once upon" --max-new-tokens 60
echo "--- with the adapter (compiled):"
./build/peft generate --model models/tiny-llama --adapter "$out/adapter" --prompt "Once upon" --max-new-tokens 60 --compile
