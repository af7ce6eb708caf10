// A model folder's generation_config.json (transformers' GenerationConfig as saved): the defaults that
// `peft generate` and `peft serve` use where a flag or a request does not say. Every field is optional;
// a missing file gives an empty result. A value of the wrong type or out of range is an error naming the
// file and the field. Only the fields below are read; others (num_beams, ...) are ignored.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace peft {

struct GenerationDefaults {
  std::optional<int64_t> max_new_tokens;      // >= 0
  std::optional<bool> do_sample;
  std::optional<double> temperature;          // >= 0
  std::optional<int64_t> top_k;               // >= 0 (0 = off)
  std::optional<double> top_p;                // (0, 1]
  std::optional<double> min_p;                // [0, 1]
  std::optional<double> repetition_penalty;   // > 0
  std::vector<int64_t> eos_token_ids;         // eos_token_id: an id or a list (-1 / null: none)
  bool empty() const {
    return !max_new_tokens && !do_sample && !temperature && !top_k && !top_p && !min_p && !repetition_penalty &&
           eos_token_ids.empty();
  }
};

/// Read MODEL_DIR/generation_config.json; ids of eos_token_id must lie in [0, vocab_size).
GenerationDefaults read_generation_config(const std::string & model_dir, int64_t vocab_size);

}  // namespace peft
