#!/bin/bash
# ctest cli_bench_shape: `peft bench --shape` refuses an unknown shape, and the real-shape rows run on a small
# checkpoint folder (--model: decode with and without LoRA, prefill, training steps with and without
# gradient checkpointing, per format, each in its own child process).
#   bench/test-bench-shape.sh PEFT MODEL_DIR
set -u
peft=$1 model=$2
out=$("$peft" bench --shape no-such-shape 2>&1) && { echo "FAIL: --shape no-such-shape was accepted"; exit 1; }
echo "$out" | grep -q "no-such-shape" || { echo "FAIL: the error does not name the shape: $out"; exit 1; }
out=$("$peft" bench --model "$model" --formats f32,nf4 --quantize-lm-head --reps 2 --prefill-len 16 --threads 1 2>&1) \
  || { echo "FAIL: peft bench --model failed: $out"; exit 1; }
echo "$out"
for row in decode_b1_f32 decode_b1_f32_lora decode_b1_nf4_lora prefill_b1_s16_nf4_lora train_step_b1_s16_f32_lora \
    train_step_b1_s16_nf4_lora_ckpt; do
  echo "$out" | grep -q "^$row " || { echo "FAIL: no row $row"; exit 1; }
done
echo "$out" | grep -q "nf4: LoRA r=16 q,k,v,o decode throughput" || { echo "FAIL: no LoRA/base ratio"; exit 1; }
out=$("$peft" bench --model "$model" --formats f16 2>&1) && { echo "FAIL: --formats f16 was accepted"; exit 1; }
echo "PASS"
