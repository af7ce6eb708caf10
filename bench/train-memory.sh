#!/bin/bash
# Training memory at a real model shape: the peak resident memory of one LoRA step (r 16 on every Linear,
# batch 1 x TOKENS) plain, with --gradient-checkpointing, with --chunked-loss and with both (eager; and the
# last two compiled), on random
# weights of Llama-3.2-1B's shape (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocab 128256, tied).
# peak_rss_mb in the log is the peak since training started (loading's peak left out); the step's memory
# beyond the model = that peak minus the same run's on 8 tokens (weights, the mapped checkpoint and the
# rest are the same in both). Each 1024-token step takes minutes on 2 cores.
#
# usage: [ROWS="a;b"] bench/train-memory.sh [MODEL_DIR] [TOKENS]      (defaults: /tmp/peft-llama1b, 1024; every row)
# The model folder is made once by ../shared/tools/llamacpp/make_models.py (float32 safetensors, ~5 GB; Debian's
# /usr/bin/python3 with numpy: apt-get install python3-numpy).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-/tmp/peft-llama1b}"
tokens="${2:-1024}"
peft="$root/build/peft"
if [ ! -f "$model/config.json" ]; then
  PEFT_REPO="$root" /usr/bin/python3 "$root/../shared/tools/llamacpp/make_models.py" model "$model" --hidden 2048 --layers 16 \
    --heads 32 --kv-heads 8 --inter 8192 --vocab 128256 --tie --rope-theta 500000
fi
work="$(mktemp -d /tmp/peft-train-memory.XXXXXX)"
trap 'rm -rf "$work"' EXIT
# text enough for one sequence of TOKENS tokens
python3 - "$work/data.txt" "$tokens" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(f"Line {i}: the small model read this line and wrote it down again.\n")
PY
run() {  # tag, tokens, flags -> peak_rss_mb of the step
  "$peft" train --model "$model" --method lora --r 16 --lora-alpha 16 --target-modules all-linear \
    --data "$work/data.txt" --max-length "$2" --batch-size 1 --steps 1 --no-token-cache --no-plot --no-progress \
    --log-file "$work/$1.jsonl" --out "$work/$1" ${3:-} > "$work/$1.out" 2>&1 || { cat "$work/$1.out"; exit 1; }
  python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['peak_rss_mb'])" "$work/$1.jsonl"
}
base=$(run base8 8)
isa=portable
grep -q avx2 /proc/cpuinfo && isa=AVX2
grep -q avx512f /proc/cpuinfo && isa=AVX-512
printf "model: %s, one LoRA step (r 16, all-linear) on batch 1 x %s tokens; %s cores, %s\n" "$model" "$tokens" \
  "$(nproc)" "$isa"
printf "%-36s %12s %14s\n" "run" "peak MB" "step MB"
printf "%-36s %12.0f %14s\n" "8 tokens (the model alone)" "$base" "-"
plain=""
for v in "plain|" "gradient checkpointing|--gradient-checkpointing" "chunked loss|--chunked-loss" \
         "both|--gradient-checkpointing --chunked-loss" \
         "compiled, gradient checkpointing|--gradient-checkpointing --compile" \
         "compiled, both|--gradient-checkpointing --chunked-loss --compile"; do
  name="${v%%|*}"; flags="${v#*|}"
  # ROWS="both;compiled, both" (names, ";"-separated) runs only those rows (plain always runs: the ratios)
  if [ -n "${ROWS:-}" ] && [ "$name" != plain ] && [[ ";$ROWS;" != *";$name;"* ]]; then continue; fi
  peak=$(run "r$RANDOM" "$tokens" "$flags")
  step=$(python3 -c "print(round($peak - $base))")
  if [ -z "$plain" ]; then
    plain=$step
    printf "%-36s %12.0f %14s\n" "$name" "$peak" "$step"
  else
    printf "%-36s %12.0f %14s  (%sx less than plain)\n" "$name" "$peak" "$step" "$(python3 -c "print(round($plain / max($step, 1), 2))")"
  fi
done
