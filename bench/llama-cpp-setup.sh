#!/bin/bash
# llama.cpp's llama-bench, compiled against the prebuilt libraries of node-llama-cpp (npm; the fixture
# tests/io/fetch-llamacpp.sh installs in build/llamacpp-reference), into OUT (default build/llamacpp-bench):
#   OUT/bin/llama-bench        every libggml-cpu-<arch>.so variant beside it (ggml picks the best for the CPU)
#   OUT/bin-avx2/llama-bench   only the haswell variant beside it (AVX2/FMA/F16C: an AVX2 machine's kernels)
# The llama.cpp source is the git bundle node-llama-cpp ships (no llama.cpp build, no network beyond npm).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/build/llamacpp-bench}
ref=$repo/build/llamacpp-reference
[ -f "$ref/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.5.0.so" ] || \
  bash "$repo/tests/io/fetch-llamacpp.sh" "$ref"
L=$ref/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
[ -f "$L/libllama.v0.5.0.so" ] || { echo "llama.cpp's npm packages are missing ($L)" >&2; exit 1; }
mkdir -p "$out/bin" "$out/bin-avx2"
S=$out/llama.cpp-src
[ -d "$S" ] || git clone -q "$ref/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$S"
if [ ! -x "$out/bin/llama-bench" ]; then
  g++ -std=c++17 -O2 -DNDEBUG -I"$S/include" -I"$S/ggml/include" -I"$S/common" -I"$S/vendor" \
    -I"$S/tools/llama-bench" "$S/tools/llama-bench/main.cpp" "$S/tools/llama-bench/llama-bench.cpp" \
    -o "$out/bin/llama-bench" "$L/libllama-common.so" "$L/libllama.v0.5.0.so" "$L/libggml.v0.5.0.so" \
    "$L/libggml-base.so" -Wl,-rpath,"$L" -pthread
fi
for f in "$L"/libggml-cpu-*.so; do ln -sf "$f" "$out/bin/"; done
# (a copy, not a link: ggml looks for the variants beside the executable's real path)
cp -f "$out/bin/llama-bench" "$out/bin-avx2/llama-bench"
rm -f "$out"/bin-avx2/libggml-cpu-*.so
ln -sf "$L/libggml-cpu-haswell.so" "$out/bin-avx2/"
