#!/usr/bin/env bash
# Build the libFuzzer harnesses with Debian's clang (ASan + UBSan, the parsers instrumented, the rest of
# the library taken from BUILD_DIR's libpeft.a) and run each for SECONDS on its seed corpus.
# usage: run.sh BUILD_DIR SOURCE_DIR [SECONDS]. A crash keeps its input under BUILD_DIR/fuzz/ and fails.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
secs=${3:-20}
# whichever clang is installed with its libFuzzer runtime: $CXX_FUZZ if set, else clang++, else the newest
# clang++-N (Debian 12 has clang-14, Debian 13 clang-19)
cxx=""
for c in ${CXX_FUZZ:-} clang++ $(compgen -c clang++- | grep -E '^clang\+\+-[0-9]+$' | sort -t- -k2 -rn | uniq); do
  c=$(command -v "$c" || true)
  [ -n "$c" ] || continue
  # clang knows where its own runtime libraries are
  rt=$("$c" -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null || true)
  [ -f "$rt" ] || rt=$("$c" --rtlib=compiler-rt -print-file-name=libclang_rt.fuzzer.a 2>/dev/null || true)
  [ -f "$rt" ] || rt=$(ls "$(dirname "$(readlink -f "$c")")"/../lib/clang/*/lib/*/libclang_rt.fuzzer*.a 2>/dev/null | head -1)
  if [ -n "$rt" ] && [ -f "$rt" ]; then cxx=$c; break; fi
done
if [ -z "$cxx" ]; then
  echo "fuzz: clang and libFuzzer are not installed (scripts/install-deps.sh installs them)" >&2
  exit 1
fi
echo "fuzz: $cxx ($("$cxx" --version | head -1)), libFuzzer $rt"
out="$build/fuzz"
mkdir -p "$out/obj"
ccache=$(command -v ccache || true)
cflags=(-std=c++17 -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -D_GLIBCXX_USE_CXX11_ABI=1
        -I"$src/include" -I"$src/src" -I"$src/tools/peft" -I/usr/include/torch/csrc/api/include -w)
export cxx ccache out
export cflags_str="${cflags[*]}"
# the instrumented parsers and the harnesses
parsers=(src/error.cpp src/io/files.cpp src/io/safetensors.cpp src/util/json-fields.cpp src/model/config.cpp src/tuners/config.cpp
         src/tokenizer/bpe-tokenizer.cpp src/data/readers.cpp)
harnesses=(safetensors config adapter-config tokenizer ids)
objs=()
for s in "${parsers[@]}" $(for h in "${harnesses[@]}"; do echo "tests/fuzz/fuzz-$h.cpp"; done); do
  objs+=("$src/$s")
done
# an object is rebuilt when its source or any header is newer (a header's struct layout must match libpeft.a's)
newest_header=$(find "$src/include" "$src/src" "$src/tools/peft" -name '*.h' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
touch -r "$newest_header" "$out/obj/headers.stamp"
printf '%s\n' "${objs[@]}" | xargs -P 2 -I{} bash -c 'set -e; read -ra f <<< "$cflags_str"; o="$out/obj/$(echo "{}" | tr "/" "_").o"; if [ ! -f "$o" ] || [ "{}" -nt "$o" ] || [ "$out/obj/headers.stamp" -nt "$o" ]; then $ccache $cxx "${f[@]}" -c "{}" -o "$o"; fi'
pobjs=()
for s in "${parsers[@]}"; do pobjs+=("$out/obj/$(echo "$src/$s" | tr '/' '_').o"); done
libs=(-Wl,--start-group "$build/src/libpeft.a" -Wl,--end-group -L/usr/lib/x86_64-linux-gnu -ltorch -ltorch_cpu -lc10
      -lpcre2-8 -ldl -lpthread)
fail=0
for h in "${harnesses[@]}"; do
  bin="$out/fuzz-$h"
  "$cxx" -fsanitize=fuzzer,address,undefined "$out/obj/$(echo "$src/tests/fuzz/fuzz-$h.cpp" | tr '/' '_').o" \
    "${pobjs[@]}" "${libs[@]}" -o "$bin"
  mkdir -p "$out/corpus-$h" "$out/crashes-$h"
  # every input that once crashed stays a regression test
  if compgen -G "$src/tests/fuzz/regressions/$h/*" >/dev/null; then
    if ! ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=halt_on_error=1 \
         "$bin" "$src/tests/fuzz/regressions/$h/"* >"$out/regressions-$h.log" 2>&1; then
      echo "fuzz-$h: a regression input fails again" >&2
      tail -30 "$out/regressions-$h.log" >&2
      fail=1
    fi
  fi
  echo "fuzz-$h: ${secs}s"
  if ! ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=halt_on_error=1 \
       "$bin" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
       -artifact_prefix="$out/crashes-$h/" "$out/corpus-$h" "$src/tests/fuzz/corpus/$h" >"$out/fuzz-$h.log" 2>&1; then
    echo "fuzz-$h FAILED: see $out/fuzz-$h.log and $out/crashes-$h/" >&2
    tail -30 "$out/fuzz-$h.log" >&2
    fail=1
  else
    grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "$out/fuzz-$h.log" | tail -1
  fi
done
exit $fail
