#!/usr/bin/env bash
# Install peft.cpp from BUILD_DIR into a fresh prefix, build examples/ out of tree against the installed
# CMake package, run it, and check the pkg-config file. usage: consumer.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
test -f "$tmp/prefix/include/peft/peft.h"
test -f "$tmp/prefix/lib/cmake/peft/peftConfig.cmake"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src/examples" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  "${launcher[@]}" >/dev/null
cmake --build "$tmp/build" >/dev/null
"$tmp/build/readme_api" "$src/models/kjv-llama"
PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --cflags --libs peft | grep -q -- "-lpeft"
echo "installed package: consumer built and ran"
