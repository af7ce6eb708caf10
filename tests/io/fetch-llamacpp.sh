#!/usr/bin/env bash
# Test setup: install llama.cpp as node-llama-cpp ships it (npm, pinned; prebuilt CPU libraries for
# linux-x64, nothing downloaded or compiled: install scripts off, NODE_LLAMA_CPP_SKIP_DOWNLOAD=true) into
# DIR. Used only by the llama.cpp greedy tests (tests/io/test-llamacpp.cpp, via tests/io/llama-greedy.mjs),
# never by the library. Without npm (or offline) it installs nothing and those tests skip.
set -u
dir="$1"
mkdir -p "$dir"
cd "$dir" || exit 1
version=3.22.1
complete=1
[ -f node_modules/node-llama-cpp/package.json ] || complete=0
[ -f node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node ] || complete=0
[ "$complete" = 1 ] && exit 0
[ -f package.json ] || echo '{"name":"peft-llamacpp-reference","private":true}' > package.json
if ! command -v npm >/dev/null; then echo "npm not found: the llama.cpp tests will be skipped"; exit 0; fi
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
timeout 900 npm install --no-audit --no-fund --silent --ignore-scripts --omit=optional \
  "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version" \
  || echo "npm install failed: the llama.cpp tests will be skipped"
exit 0
