// A model folder's tokenizer (tokenizer.json, tokenizer_config.json, the chat template) as llama.cpp's
// tokenizer.* GGUF metadata, the keys convert_hf_to_gguf.py writes:
//  - byte-level BPE (GPT-2, Llama 3, Qwen 2/3 style): tokenizer.ggml.model "gpt2", tokens, token_type,
//    merges, and tokenizer.ggml.pre naming llama.cpp's pre-tokenizer for the tokenizer's split regex;
//  - SentencePiece converted to BPE with byte fallback and "▁" for spaces (Llama 2, Gemma style):
//    tokenizer.ggml.model "llama", tokens, scores, token_type (bytes <0xNN>, unknown, control);
//  - special token ids, add_bos / add_eos, tokenizer.chat_template.
// Anything else is refused naming the tokenizer.json field llama.cpp has no equivalent for.
#pragma once
#include <string>

#include "peft/io/gguf.h"
#include "peft/model/config.h"

namespace peft {

struct GgufTokenizerInfo {
  std::string model;  // "gpt2" or "llama"
  std::string pre;    // tokenizer.ggml.pre ("gpt-2", "llama-bpe", "qwen2"; "default" for "llama")
  int64_t n_tokens = 0;
};

/// Add the tokenizer.* keys for the tokenizer in `model_dir` (config.json's vocab_size and special
/// token ids from `mc`). Errors name the file and field that cannot be mapped.
GgufTokenizerInfo gguf_add_tokenizer(GgufWriter & w, const std::string & model_dir, const ModelConfig & mc);

}  // namespace peft
