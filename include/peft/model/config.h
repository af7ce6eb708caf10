// ModelConfig: the fields of a Hugging Face config.json that the supported architectures read,
// validated on load (missing, mistyped or inconsistent fields are errors that name the field).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "peft/util/json-fields.h"

namespace peft {

/// Typed reads of config.json fields; every error names the file and the field.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json & j, const std::string & source) : j_(j), src_(source) {}
  bool has(const char * k) const;
  /// An integer >= min_value; `def` when absent (an error when absent and required).
  int64_t integer(const char * k, int64_t def, bool required, int64_t min_value = 1) const;
  /// A positive number; `def` when absent.
  double number(const char * k, double def) const;
  bool boolean(const char * k, bool def) const;
  std::string string(const char * k, const std::string & def) const;
  const nlohmann::json & json() const { return j_; }
  const std::string & source() const { return src_; }

 private:
  JsonFields fields() const;  // errors: "<source>: field 'k' must be ..."
  const nlohmann::json & j_;
  const std::string & src_;
};

/// config.json's rope_scaling (transformers' modeling_rope_utils): how the rotary frequencies are scaled.
struct RopeScaling {
  std::string type = "default";  // default, linear, dynamic, yarn, llama3, longrope
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 0;          // llama3; longrope (config.json's own field when given)
  std::vector<double> short_factor, long_factor;         // longrope: per frequency, up to / past the original length
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  double attention_factor = 1.0;  // cos and sin are multiplied by it (yarn: 0.1 ln(factor) + 1 unless given)
};

struct ModelConfig {
  std::string model_type;     // "llama", "mistral", "qwen2", "qwen3", "phi3", "opt", "gpt2", "gpt_neox", "gemma2", "gemma3_text"
  std::string architecture;   // "LlamaForCausalLM", ...
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // llama: MLP width; opt: ffn_dim
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  bool learned_positions = false;  // OPT: a position table, so no position past max_position_embeddings
  double rms_norm_eps = 1e-6;
  double layer_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double partial_rotary_factor = 1.0;  // Phi-3, GPT-NeoX (rotary_pct): the first fraction of each head rotates
  /// The rotated features of a head (transformers: int(head_dim * partial_rotary_factor)).
  int64_t rotary_dim() const { return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor); }
  bool parallel_residual = false;      // GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
  int64_t sliding_window = 0;  // Mistral, Phi-3: a query sees the keys less than this many slots back (0: all)
  /// Which layers have the sliding window (Gemma 2/3, Qwen2/3 with use_sliding_window: transformers'
  /// layer_types); empty: every layer, when sliding_window > 0.
  std::vector<bool> sliding_layers;
  bool layer_slides(int64_t layer) const {
    return sliding_window > 0 && (sliding_layers.empty() || sliding_layers[static_cast<size_t>(layer)]);
  }
  // Gemma 2/3
  double embedding_multiplier = 1.0;  // token embeddings times sqrt(hidden_size)
  bool multiplier_in_lookup = false;  // Gemma 3: the embedding module multiplies (inputs_embeds are taken as they are)
  double attention_scale = 0;         // query_pre_attn_scalar^-0.5 (0: 1/sqrt(head_dim))
  double attn_logit_softcapping = 0;  // scores -> tanh(scores / cap) * cap before the mask (0: none)
  double final_logit_softcapping = 0; // the same on the logits
  double rope_local_base_freq = 0;    // Gemma 3's sliding layers: rope with this theta and no scaling (0: as the others)
  bool qk_norm = false;        // Qwen3: RMSNorm over each head of q and k before the rotary embedding
  bool fused_projections = false;  // Phi-3: qkv_proj and gate_up_proj instead of q/k/v_proj and gate/up_proj
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
