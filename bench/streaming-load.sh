#!/bin/bash
# Issue 23's load measurements: peak anonymous memory, VmHWM and time of `peft info` loading a model in
# float32, bfloat16 and NF4, against the time to read the checkpoint's files once (cat, through the page
# cache as the mapping reads them). Usage: bench/streaming-load.sh PEFT_BINARY MODEL_DIR [DTYPE_FOR_NF4...]
# Make the models with scripts/make-synthetic-checkpoint.py (Llama-3-8B's shape: see its header).
peft=$1
dir=$2
shift 2
here=$(dirname "$0")
echo "# $(nproc) cores, $(grep -o -w 'avx2\|avx512f\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "# $(ls "$dir"/*.safetensors | wc -l) file(s), $(du -shL "$dir" | cut -f1)"
start=$(date +%s.%N)
cat "$dir"/*.safetensors > /dev/null
printf "%-28s %6.1f s\n" "read the files once (cat)" "$(echo "$(date +%s.%N) - $start" | bc)"
for run in "$@"; do
  # RUN is DTYPE or DTYPE:FORMAT, e.g. float32 bfloat16 bfloat16:nf4
  dtype=${run%%:*}
  q=
  [ "$run" != "$dtype" ] && q="--quantize ${run#*:}"
  "$here"/load-memory.sh "$run" "$peft" info --model "$dir" --dtype "$dtype" $q
done
