// ModelConfig: the fields of a Hugging Face config.json that the supported architectures read,
// validated on load (missing, mistyped or inconsistent fields are errors that name the field).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace peft {

struct ModelConfig {
  std::string model_type;     // "llama", "mistral", "qwen2", "opt"
  std::string architecture;   // "LlamaForCausalLM", ...
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // llama: MLP width; opt: ffn_dim
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double layer_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q/k/v (Qwen2: true)
  bool o_proj_bias = false;
  bool mlp_bias = false;
  // OPT
  int64_t word_embed_proj_dim = 0;
  bool do_layer_norm_before = true;
  bool enable_bias = true;
  bool layer_norm_elementwise_affine = true;
  // special tokens (-1 = none)
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;
  std::string torch_dtype = "float32";

  /// Parse and validate; `source` (a file path) is named in every error.
  static ModelConfig from_json(const nlohmann::json & j, const std::string & source);
  /// Read DIR/config.json.
  static ModelConfig load(const std::string & dir);
  /// The architecture name Hugging Face uses (LlamaForCausalLM, ...).
  std::string arch_name() const;
};

}  // namespace peft
