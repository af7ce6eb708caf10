// Prompt learning (prompt-learning.h): what PROMPT_TUNING, P_TUNING and PREFIX_TUNING share: the encoder's
// table and MLP, config fields and PEFT's model-dependent completion. How a PeftModel holds and runs them:
// src/peft-model/prompt-encoders.cpp and forward.cpp.
#include "peft/tuners/prompt-learning.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include "peft/error.h"

namespace peft {

void PromptEncoder::make_table(int64_t rows, int64_t width) {
  auto emb = std::make_shared<torch::nn::Module>();
  table = emb->register_parameter("weight", at::randn({rows, width}));  // nn.Embedding's init: N(0, 1)
  register_module("embedding", emb);
}

// Linear, ReLU, ..., Linear as at::linear (torch::nn::Linear's forward adds its bias in place)
at::Tensor mlp(const torch::nn::Sequential & seq, at::Tensor x) {
  for (size_t i = 0; i < seq->size(); ++i) {
    if (auto lin = seq->ptr(i)->as<torch::nn::Linear>()) x = at::linear(x, lin->weight, lin->bias);
    else if (seq->ptr(i)->as<torch::nn::ReLU>()) x = at::relu(x);
    else if (seq->ptr(i)->as<torch::nn::Tanh>()) x = at::tanh(x);
    else fail("internal: an encoder layer that is not Linear, ReLU or Tanh");
  }
  return x;
}

nlohmann::json prompt_learning_defaults() {
  return {{"num_virtual_tokens", nullptr}, {"token_dim", nullptr},      {"num_transformer_submodules", nullptr},
          {"num_attention_heads", nullptr}, {"num_layers", nullptr}};
}

void parse_prompt_fields(PromptLearningOptions & o, const AdapterConfig & cfg, const std::string & src) {
  FieldReader r(cfg, src);
  PEFT_CHECK(!cfg.field("num_virtual_tokens").is_null(), src, ": field 'num_virtual_tokens' is required");
  o.num_virtual_tokens = r.integer("num_virtual_tokens", 1);
  auto optional = [&](const char * k) { return cfg.field(k).is_null() ? int64_t{0} : r.integer(k, 1); };
  o.token_dim = optional("token_dim");
  o.num_layers = optional("num_layers");
  o.num_attention_heads = optional("num_attention_heads");
  if (cfg.fields.contains("encoder_hidden_size")) o.encoder_hidden_size = optional("encoder_hidden_size");
  const auto & sub = cfg.field("num_transformer_submodules");
  PEFT_CHECK(sub.is_null() || sub == 1, src, ": field 'num_transformer_submodules' is ", sub.dump(),
             "; causal language models have 1 (2 is for encoder-decoder models, not supported)");
  PEFT_CHECK(cfg.bias == "none", src, ": field 'bias' does not apply to ", cfg.peft_type);
  const auto & task = cfg.field("task_type");
  PEFT_CHECK(task.is_null() || task == "CAUSAL_LM", src, ": task_type ", task.dump(),
             " is not supported for prompt learning here (CAUSAL_LM)");
}

void complete_prompt_config(AdapterConfig & cfg, const ModelConfig & m, const std::string & src) {
  const bool prefix = cfg.peft_type == "PREFIX_TUNING";
  nlohmann::json j = cfg.fields;
  // PEFT: num_layers, token_dim (hidden_size) and num_attention_heads from the model's config when absent;
  // prefix tuning's keys/values are then sized for the key/value heads (head_dim x num_key_value_heads),
  // always (PEFT recomputes them for models with num_key_value_heads, i.e. every Llama-family config)
  auto fill = [&](const char * k, int64_t v) {
    if (j[k].is_null()) j[k] = v;
  };
  fill("num_layers", m.num_layers);
  fill("token_dim", m.hidden_size);
  fill("num_attention_heads", m.num_heads);
  if (prefix) {
    j["token_dim"] = m.head_dim * m.num_kv_heads;
    j["num_attention_heads"] = m.num_kv_heads;
  }
  if (j.contains("encoder_hidden_size")) fill("encoder_hidden_size", j["token_dim"].get<int64_t>());
  if (j["num_transformer_submodules"].is_null()) j["num_transformer_submodules"] = 1;
  AdapterConfig c = AdapterConfig::parse(j, src, *cfg.method);
  const auto & o = c.opts<PromptLearningOptions>();
  PEFT_CHECK(o.num_layers == m.num_layers, src, ": field 'num_layers' is ", o.num_layers, ", the model has ",
             m.num_layers, " layers (an adapter for another model?)");
  if (prefix) {
    PEFT_CHECK(m.num_kv_heads * m.head_dim == o.token_dim, src, ": prefix tuning's token_dim ", o.token_dim,
               " does not match the model's keys (", m.num_kv_heads, " heads x ", m.head_dim, ")");
  } else {
    PEFT_CHECK(o.token_dim == m.hidden_size, src, ": field 'token_dim' is ", o.token_dim,
               ", the model's embeddings have ", m.hidden_size, " features (an adapter for another model?)");
  }
  c.shared = std::move(cfg.shared);
  cfg = std::move(c);
}

}  // namespace peft
