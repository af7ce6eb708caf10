// Text generation: batched prompts (left padding), a static KV cache, greedy or sampled decoding
// (logit bias, repetition penalty, temperature, min-p, top-k, top-p), stopping on eos ids, stop strings and
// max_new_tokens. The forward is a function, so eager and compiled models generate alike.
// B = batch, P = padded prompt length, V = vocab.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "peft/model/causal-lm.h"

namespace peft {

struct GenerationConfig {
  int64_t max_new_tokens = 32;
  bool do_sample = false;       // false: greedy
  double temperature = 1.0;
  int64_t top_k = 0;            // 0 = off
  double top_p = 1.0;           // 1 = off
  double repetition_penalty = 1.0;
  double min_p = 0;             // 0 = off: drop tokens below min_p x the top token's probability (after temperature)
  std::vector<std::pair<int64_t, float>> logit_bias;  // (token id, bias) added to every row's logits first
  std::vector<int64_t> eos_token_ids;
  std::vector<std::string> stop_strings;  // needs `decode` in generate()
  uint64_t seed = 0;
  bool use_cache = true;
  int64_t pad_token_id = 0;
  /// A prompt-learning adapter's virtual tokens (PeftModel::num_virtual_tokens()): the forward puts them
  /// before every prompt; with the cache they take its first slots, written once by fill_virtual_tokens
  /// (PeftModel::fill_virtual_tokens) before the prompts run.
  int64_t virtual_tokens = 0;
  std::function<void(KVCache &)> fill_virtual_tokens;
};

/// New tokens for each prompt. on_token(row, id) is called as tokens are chosen (streaming);
/// decode turns a row's new tokens into text for stop strings.
std::vector<std::vector<int64_t>> generate(const LogitsFn & forward, const ModelConfig & cfg, at::TensorOptions cache_opts,
                                           const std::vector<std::vector<int64_t>> & prompts, const GenerationConfig & gen,
                                           const std::function<void(size_t, int64_t)> & on_token = {},
                                           const std::function<std::string(const std::vector<int64_t> &)> & decode = {});

/// The next token per row from last-position logits (B, V), applying the config's processors in vLLM's
/// order: logit bias, repetition penalty, then (sampling) temperature, min-p, top-k, top-p. (Without min-p
/// this is also Hugging Face's order.)
/// history: every token of each row so far (for the repetition penalty).
at::Tensor sample_next(const at::Tensor & logits, const std::vector<std::vector<int64_t>> & history,
                       const GenerationConfig & gen, at::Generator & rng);

}  // namespace peft
