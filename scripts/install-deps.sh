#!/usr/bin/env bash
# Install what peft.cpp needs from Debian 12 packages, skipping what is already there.
set -euo pipefail
pkgs=(build-essential cmake ninja-build ccache pkg-config
      libtorch-dev libopenblas0-pthread nlohmann-json3-dev libcli11-dev libpcre2-dev libxxhash-dev
      libcpp-httplib-dev           # the HTTP server of peft serve
      libgloo-dev                  # Gloo's headers for LibTorch's c10d process group (data-parallel training)
      gnuplot-nox                  # loss plots of training runs (peft train, peft plot)
      python3 fortunes-min fortunes   # the main job's fine-tuning data (scripts/pretrain/make-finetune-data.py)
      curl                         # the server test drives peft serve with curl too
      chromium                     # tests only: the headless browser that drives peft serve's chat page
      libgtest-dev libbenchmark-dev
      clang-14 libfuzzer-14-dev)   # the fuzz test: libFuzzer harnesses built with clang
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm (tests only: the JavaScript reference tokenizers) may come from outside Debian; take
# Debian's only when the commands are missing
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
