#!/bin/bash
# Decode b1 tokens/s: peft.cpp beside llama.cpp (node-llama-cpp's prebuilt libraries from npm, timed by
# llama.cpp's own llama-bench) on the same random weights, per format:
#   peft f32 / llama.cpp F32, bf16 / BF16, int8 / Q8_0, nf4 / Q4_0   (every Linear and the output quantized in both)
# and peft's decode with LoRA r=16 on q,k,v,o against the same model without it (paired steps), at each
# thread count, on this CPU's full ISA and capped at AVX2 (an AVX2-only machine's kernels):
#   avx2: PEFT_ISA=avx2 (peft's kernels), ATEN_CPU_CAPABILITY=avx2 (ATen), ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN);
#         llama.cpp with only its haswell CPU variant beside llama-bench (AVX2/FMA/F16C)
# The weights: `peft bench --shape S --save-model` (float32, untied head) + a tokenizer, exported to GGUF
# F32/BF16/Q8_0/Q4_0 by `peft export`; or --model DIR (a float checkpoint folder with tokenizer.json).
# Both decode at a context of 64 tokens (llama.cpp: -d 64; peft: a step at position 64 of its KV cache).
# Prints one table per shape and writes it to --out (default bench/latest-llama-cpp.txt).
# Run on an otherwise idle machine: llama.cpp's worker threads spin-wait (-t 2 on a busy 2-core box collapses).
#
#   bench/llama-cpp.sh                                  # shapes bench and llama-3.2-1b, ISAs native and avx2, 1 and 2 threads
#   bench/llama-cpp.sh --shape bench --isa avx2 --threads 1 -n 16
#   bench/llama-cpp.sh --model DIR --formats nf4,int8
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shapes=bench,llama-3.2-1b model= isas=native,avx2 threads=1,2 n=32 reps=3 peft_reps= formats=f32,bf16,int8,nf4 rounds=1
out=$repo/bench/latest-llama-cpp.txt
work=$repo/build/bench-models
peft=${PEFT:-$repo/build/peft}
while [ $# -gt 0 ]; do
  case $1 in
    --shape) shapes=$2; shift ;;
    --model) model=$2; shift ;;
    --isa) isas=$2; shift ;;
    --threads) threads=$2; shift ;;
    -n) n=$2; shift ;;
    --reps) reps=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --peft-reps) peft_reps=$2; shift ;;
    --formats) formats=$2; shift ;;
    --out) out=$2; shift ;;
    --work) work=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$peft" ] || { echo "no peft binary at $peft (build first)" >&2; exit 1; }
bash "$repo/bench/llama-cpp-setup.sh" "$repo/build/llamacpp-bench" >/dev/null
mkdir -p "$work"
[ -n "$model" ] && shapes=model
declare -A gguf_type=([f32]=f32 [bf16]=bf16 [int8]=q8_0 [nf4]=q4_0)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
report=$tmp/report.txt
: > "$report"
for shape in ${shapes//,/ }; do
  if [ "$shape" = model ]; then
    dir=$model
    name=$(basename "$model")
  else
    dir=$work/$shape
    name=$shape
    if [ ! -f "$dir/model.safetensors" ] || [ ! -f "$dir/tokenizer.json" ]; then
      echo "writing the random $shape model to $dir" >&2
      "$peft" bench --shape "$shape" --save-model "$dir"
      python3 "$repo/scripts/make-bench-tokenizer.py" "$dir"
    fi
  fi
  for f in ${formats//,/ }; do
    g=$work/$name-${gguf_type[$f]}.gguf
    [ -f "$g" ] || "$peft" export --model "$dir" --format gguf --out "$g" --dtype "${gguf_type[$f]}" >&2
  done
  results=$tmp/$name.jsonl
  : > "$results"
  for round in $(seq "$rounds"); do
  for isa in ${isas//,/ }; do
    if [ "$isa" = avx2 ]; then
      env=(PEFT_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)
      lb=$repo/build/llamacpp-bench/bin-avx2/llama-bench
    else
      env=()
      lb=$repo/build/llamacpp-bench/bin/llama-bench
    fi
    for t in ${threads//,/ }; do
      for f in ${formats//,/ }; do
        g=$work/$name-${gguf_type[$f]}.gguf
        echo "[$name $isa t$t round $round] llama.cpp ${gguf_type[$f]}, peft $f" >&2
        env "${env[@]}" "$lb" -m "$g" -p 0 -n "$n" -d 64 -t "$t" -r "$reps" -o json > "$tmp/lb.json" 2> "$tmp/lb.err" \
          || { cat "$tmp/lb.err" >&2; exit 1; }
        variant=$(sed -n 's|.*loaded CPU backend from .*/libggml-cpu-\(.*\)\.so|\1|p' "$tmp/lb.err" | head -1)
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))[0]; print(json.dumps({"isa":sys.argv[2],"threads":int(sys.argv[3]),"format":sys.argv[4],"engine":"llama.cpp","variant":sys.argv[5],"tokens_per_s":r["avg_ts"]}))' \
          "$tmp/lb.json" "$isa" "$t" "$f" "$variant" >> "$results"
        rm -f "$tmp/peft.json"
        if env "${env[@]}" "$peft" bench --model "$dir" --only decode --formats "$f" --quantize-lm-head --threads "$t" \
            ${peft_reps:+--reps $peft_reps} --json "$tmp/peft.json" > "$tmp/peft.out" 2>&1; then
          python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(json.dumps({"isa": sys.argv[2], "threads": int(sys.argv[3]), "format": r["format"], "engine": "peft",
                      "lora": r["row"].endswith("_lora"), "tokens_per_s": r["tokens_per_s"],
                      "lora_ratio": r.get("lora_over_base_throughput")}))' "$tmp/peft.json" "$isa" "$t" >> "$results"
        else
          why=$(grep -m1 -o 'error: peft::.*' "$tmp/peft.out" || tail -1 "$tmp/peft.out")
          echo "  peft $f failed: $why" >&2
          python3 -c 'import json,sys; print(json.dumps({"isa":sys.argv[1],"threads":int(sys.argv[2]),"format":sys.argv[3],"engine":"peft","failed":sys.argv[4]}))' \
            "$isa" "$t" "$f" "$why" >> "$results"
        fi
      done
    done
  done
  done
  python3 - "$results" "$name" "$dir" "$n" "$reps" >> "$report" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
name, d, n, reps = sys.argv[2:6]
cfg = json.load(open(d + "/config.json"))
flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
isa = "AVX-512 (avx512f/bw/vnni%s)" % ("/bf16" if "avx512_bf16" in flags else "") if "avx512f" in flags else "AVX2"
print(f"== {name}: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}, "
      f"untied head; CPU {cpu}, {isa}")
print(f"decode b1 at context 64, tokens/s; llama.cpp: llama-bench -p 0 -n {n} -d 64 -r {reps} (mean); peft: compiled step, "
      f"median of paired steps, LoRA r=16 q,k,v,o")
print("avx2 rows: peft PEFT_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2; llama.cpp haswell variant only")
hdr = f"{'isa':6} {'thr':>3} {'peft':5} {'llama.cpp':9} {'variant':8} {'llama.cpp':>10} {'peft':>9} {'peft+LoRA':>10} {'peft/llama':>10} {'LoRA/base':>9}"
print(hdr)
fmt = {"f32": "F32", "bf16": "BF16", "int8": "Q8_0", "nf4": "Q4_0"}
keys = []
for r in rows:
    k = (r["isa"], r["threads"], r["format"])
    if k not in keys:
        keys.append(k)
def med(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")
notes = []
for k in keys:
    sel = [r for r in rows if (r["isa"], r["threads"], r["format"]) == k]
    ll = [r for r in sel if r["engine"] == "llama.cpp"]
    pb = [r["tokens_per_s"] for r in sel if r["engine"] == "peft" and "failed" not in r and not r["lora"]]
    pl = [r["tokens_per_s"] for r in sel if r["engine"] == "peft" and "failed" not in r and r["lora"]]
    pr = [r["lora_ratio"] for r in sel if r["engine"] == "peft" and "failed" not in r and r["lora"] and r.get("lora_ratio")]
    fails = [r["failed"] for r in sel if "failed" in r]
    lt, bt, lo, ratio = med([r["tokens_per_s"] for r in ll]), med(pb), med(pl), med(pr)
    line = (f"{k[0]:6} {k[1]:>3} {k[2]:5} {fmt[k[2]]:9} {ll[0]['variant'] if ll else '':8} {lt:10.2f} {bt:9.2f} {lo:10.2f} "
            f"{bt / lt:9.2f}x {ratio:8.3f}x")
    if fails and not pb:
        line = f"{k[0]:6} {k[1]:>3} {k[2]:5} {fmt[k[2]]:9} {ll[0]['variant'] if ll else '':8} {lt:10.2f} {'failed (*)':>31}"
        if fails[0] not in notes:
            notes.append(fails[0])
    print(line)
rounds = max(1, len([r for r in rows if r["engine"] == "llama.cpp"]) // max(1, len(keys)))
if rounds > 1:
    print(f"(each cell: the median of {rounds} rounds)")
for x in notes:
    print(f"(*) {x}")
print()
PY
done
cat "$report"
{
  echo "# bench/llama-cpp.sh $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  cat "$report"
} > "$out"
echo "wrote $out" >&2
