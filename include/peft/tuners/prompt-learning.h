// Prompt learning (PEFT's PROMPT_TUNING, P_TUNING and PREFIX_TUNING): no layer of the model is adapted. An
// adapter is a prompt encoder that makes num_virtual_tokens vectors:
//  - prompt tuning (a table) and P-tuning (a table through an MLP or a bidirectional LSTM + MLP) make
//    embeddings that go in front of the input's token embeddings: the model sees virtual tokens first, and
//    the logits cover them too (B, num_virtual_tokens + S, V), as PEFT's do;
//  - prefix tuning (a table, or a table through a Tanh MLP: prefix_projection) makes every layer's keys and
//    values for the virtual tokens, which the attention sees before the input's.
// The input's tokens then take positions num_virtual_tokens.. (transformers' positions after a cache of
// that length). With a KV cache the virtual tokens live in its first slots: PeftModel::fill_virtual_tokens
// writes them once, and every forward after it (prompt and decode steps) gives slots after them.
// An encoder in inference mode (a loaded folder) is a table holding its output, as PEFT's.
// PeftModel holds the encoders (under "prompt_encoder.<adapter>." in the model's parameters, PEFT's names).
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <memory>
#include <string>

#include "peft/model/config.h"
#include "peft/tuners/config.h"

namespace peft {

struct PromptLearningOptions : MethodOptions {
  int64_t num_virtual_tokens = 0;
  // 0 = taken from the model when the adapter is added (PEFT's _prepare_prompt_learning_config)
  int64_t token_dim = 0, num_layers = 0, num_attention_heads = 0, encoder_hidden_size = 0;
};

class PromptEncoder : public torch::nn::Module {
 public:
  /// (num_virtual_tokens, width): the virtual tokens' embeddings (width = token_dim), or prefix tuning's
  /// keys and values of every layer (width = num_layers * 2 * token_dim; PEFT's layout).
  virtual at::Tensor prompts() = 0;
  /// Prefix tuning: keys and values for the attention, not embeddings.
  virtual bool key_values() const { return false; }
  /// The encoder is its table (prompts() is `table` itself): what a file holds can be loaded into it.
  virtual bool table_only() const { return true; }
  /// PEFT's "embedding.weight".
  at::Tensor table;

 protected:
  void make_table(int64_t rows, int64_t width);
};

/// An encoder's MLP (torch::nn::Sequential of Linear, ReLU, Tanh: PEFT's parameter names) applied with
/// at::linear, so a captured graph holds no in-place bias add.
at::Tensor mlp(const torch::nn::Sequential & seq, at::Tensor x);

/// The model-dependent fields of a prompt-learning config, filled as PEFT's _prepare_prompt_learning_config
/// does (num_layers, token_dim, num_attention_heads; prefix tuning: token_dim = key/value heads x head_dim;
/// encoder_hidden_size = token_dim), and checked against the model when the file gives them.
void complete_prompt_config(AdapterConfig & cfg, const ModelConfig & model, const std::string & source);

/// Parse the fields every prompt-learning method shares into `o` (num_virtual_tokens, token_dim, ...);
/// refuses what PEFT's causal-LM models do not do (num_transformer_submodules 2). modules_to_save is taken as
/// PEFT takes it: copies of the modules trained beside the encoder, saved as "base_model.<module>.<tensor>".
void parse_prompt_fields(PromptLearningOptions & o, const AdapterConfig & cfg, const std::string & source);

/// The JSON defaults every prompt-learning config has (PEFT's PromptLearningConfig).
nlohmann::json prompt_learning_defaults();

}  // namespace peft
