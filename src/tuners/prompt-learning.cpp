// Prompt learning (prompt-learning.h): what PROMPT_TUNING, P_TUNING and PREFIX_TUNING share (config fields,
// PEFT's model-dependent completion) and how a PeftModel runs an active prompt-learning adapter: the virtual
// tokens in front of the input embeddings, or the prefix keys/values in front of the input's in a KV cache.
#include "peft/tuners/prompt-learning.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include "peft/error.h"
#include "peft/peft-model.h"
#include "peft/tuners/modules-to-save.h"
#include "peft/tuners/registry.h"

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

// ---- PeftModel: prompt-learning adapters ----

void PeftModel::add_prompt_encoder(const std::string & name, AdapterConfig cfg, const TunerMethod & method) {
  complete_prompt_config(cfg, model_->config(), str("adapter '", name, "' config"));
  auto enc = method.prompt_encoder(cfg, *model_);
  enc->to(model_->options().device());  // (float32, as PEFT keeps its prompt encoders)
  if (!prompt_holder_) {
    prompt_holder_ = std::make_shared<torch::nn::Module>();
    model_->register_module("prompt_encoder", prompt_holder_);
  }
  prompt_holder_->register_module(name, enc);
  enc->train(model_->is_training());
  encoders_[name] = enc;
  configs_[name] = std::move(cfg);
}

void PeftModel::remove_prompt_encoder(const std::string & name) {
  if (!encoders_.erase(name)) return;
  prompt_holder_->unregister_module(name);
  if (encoders_.empty()) {
    model_->unregister_module("prompt_encoder");
    prompt_holder_.reset();
  }
}

// ---- PeftModel: running an active prompt-learning adapter ----

std::shared_ptr<PromptEncoder> PeftModel::active_prompt_encoder() const {
  if (encoders_.empty() || adapters_disabled() || state_->active().empty()) return nullptr;
  auto it = encoders_.find(state_->active().front());
  return it == encoders_.end() ? nullptr : it->second;
}

int64_t PeftModel::num_virtual_tokens() const {
  auto e = active_prompt_encoder();
  return e ? adapter_config(state_->active().front()).opts<PromptLearningOptions>().num_virtual_tokens : 0;
}

int64_t PeftModel::virtual_token_logits() const {
  auto e = active_prompt_encoder();
  return e && !e->key_values() ? num_virtual_tokens() : 0;
}

std::shared_ptr<PromptEncoder> PeftModel::prompt_encoder(const std::string & name) const {
  auto it = encoders_.find(name);
  PEFT_CHECK(it != encoders_.end(), "adapter '", name, "' is not a prompt-learning adapter");
  return it->second;
}

void PeftModel::validate(const ForwardInput & in) const {
  model_->validate(in);
  const int64_t n = num_virtual_tokens();
  if (in.cache) {
    PEFT_CHECK(in.cache->virtual_tokens == n, "the KV cache holds ", in.cache->virtual_tokens,
               " virtual tokens, the active adapter has ", n,
               n ? " (call fill_virtual_tokens on a new cache first: generate() does)" : "");
    if (n) {
      PEFT_CHECK(in.cache_position.min().item<int64_t>() >= n, "cache_position must be past the ", n,
                 " virtual tokens in the cache's first slots");
    }
    return;
  }
  if (!n) return;
  PEFT_CHECK(!in.segment_ids.defined(), "packed sequences (segment_ids) cannot take a prompt-learning adapter's virtual ",
             "tokens (they would only precede the first document)");
  PEFT_CHECK(!in.position_ids.defined() || active_prompt_encoder()->key_values(), "position_ids with ",
             adapter_config(state_->active().front()).peft_type,
             ": the virtual tokens come first, so the positions are the model's own (PEFT ignores them)");
  PEFT_CHECK(in.adapter_names.empty(), "mixed-adapter batches cannot hold prompt-learning adapters");
}

namespace {

/// Prefix tuning's (nvt, layers * 2 * Hkv * Dh) as per-layer keys and values (Hkv, nvt, Dh) (PEFT's
/// get_prompt: view (nvt, 2 layers, Hkv, Dh), permute, split in pairs).
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> split_key_values(const at::Tensor & p, const ModelConfig & m) {
  const int64_t n = p.size(0);
  const at::Tensor kv = p.view({n, 2 * m.num_layers, m.num_kv_heads, m.head_dim}).permute({1, 2, 0, 3});
  std::vector<at::Tensor> k, v;
  for (int64_t l = 0; l < m.num_layers; ++l) {
    k.push_back(kv[2 * l]);
    v.push_back(kv[2 * l + 1]);
  }
  return {k, v};
}

// PEFT's PeftModel.word_embeddings: prompt tuning and P-tuning embed the input with the embedding module found
// when the prompt encoder was set up, before modules_to_save wrapped it, so a copy of it takes no part there (the
// model's own forward, with a KV cache or in the disable scope, runs the copy)
at::Tensor word_embeddings(CausalLM & model, const at::Tensor & ids) {
  auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(model.input_embedding());
  if (!w) return model.embed(ids);
  const at::Tensor e = w->base_layer()->forward(ids);
  const ModelConfig & c = model.config();
  return c.multiplier_in_lookup ? e * at::scalar_tensor(c.embedding_multiplier, e.options()) : e;
}

}  // namespace

at::Tensor PeftModel::forward_unchecked(const ForwardInput & in) {
  auto enc = active_prompt_encoder();
  // with a cache the virtual tokens are in its first slots already (fill_virtual_tokens)
  if (!enc || in.cache) return model_->forward_unchecked(in);
  const int64_t n = num_virtual_tokens();
  const at::TensorOptions opts = model_->options();
  const int64_t B = batch_size(in);
  ForwardInput f = in;
  at::Tensor ones;
  if (in.attention_mask.defined()) {  // the virtual tokens are never padding
    ones = at::ones({B, n}, in.attention_mask.options());
    f.attention_mask = at::cat({ones, in.attention_mask}, 1);
  }
  if (!enc->key_values()) {
    // prompt tuning / P-tuning: [virtual tokens, input] as embeddings
    const at::Tensor embeds = in.inputs_embeds.defined() ? in.inputs_embeds : word_embeddings(*model_, in.input_ids);
    const at::Tensor prompts = enc->prompts().to(embeds.scalar_type()).unsqueeze(0).expand({B, -1, -1});
    f.input_ids = at::Tensor();
    f.inputs_embeds = at::cat({prompts, embeds}, 1);
    return model_->forward_unchecked(f);
  }
  // prefix tuning: a cache whose first n slots hold the prefix, the input in the slots after it
  const ModelConfig & m = model_->config();
  const int64_t S = in.input_ids.defined() ? in.input_ids.size(1) : in.inputs_embeds.size(1);
  auto kv = split_key_values(enc->prompts().to(opts.dtype()), m);
  KVCache cache;
  const at::Tensor room = at::zeros({B, m.num_kv_heads, S, m.head_dim}, opts);
  for (int64_t l = 0; l < m.num_layers; ++l) {
    cache.k.push_back(at::cat({kv.first[l].unsqueeze(0).expand({B, -1, -1, -1}), room}, 2));
    cache.v.push_back(at::cat({kv.second[l].unsqueeze(0).expand({B, -1, -1, -1}), room}, 2));
  }
  cache.virtual_tokens = n;
  f.cache = &cache;
  f.cache_position = at::arange(n, n + S, opts.dtype(at::kLong));
  if (in.position_ids.defined()) f.position_ids = in.position_ids + n;  // PEFT offsets given positions
  return model_->forward_unchecked(f);
}

void PeftModel::fill_virtual_tokens(KVCache & cache) {
  auto enc = active_prompt_encoder();
  const int64_t n = num_virtual_tokens();
  PEFT_CHECK(enc != nullptr, "fill_virtual_tokens: no prompt-learning adapter is active");
  PEFT_CHECK(!cache.k.empty() && cache.capacity() > n, "fill_virtual_tokens: the cache must hold more than the ", n,
             " virtual tokens");
  const ModelConfig & m = model_->config();
  PEFT_CHECK(static_cast<int64_t>(cache.k.size()) == m.num_layers, "fill_virtual_tokens: the cache has ", cache.k.size(),
             " layers, the model ", m.num_layers);
  at::NoGradGuard g;
  const int64_t B = cache.k[0].size(0);
  const at::TensorOptions opts = model_->options();
  if (enc->key_values()) {
    auto kv = split_key_values(enc->prompts().to(opts.dtype()), m);
    for (int64_t l = 0; l < m.num_layers; ++l) {
      cache.k[l].narrow(2, 0, n).copy_(kv.first[l].unsqueeze(0).expand({B, -1, -1, -1}));
      cache.v[l].narrow(2, 0, n).copy_(kv.second[l].unsqueeze(0).expand({B, -1, -1, -1}));
    }
  } else {
    // the virtual tokens run through the model into slots 0..n-1 (they see only each other, as in a
    // forward over [virtual tokens, input])
    ForwardInput f;
    f.inputs_embeds = enc->prompts().to(opts.dtype()).unsqueeze(0).expand({B, -1, -1}).contiguous();
    f.cache = &cache;
    f.cache_position = at::arange(n, opts.dtype(at::kLong));
    const int64_t saved = cache.virtual_tokens;
    cache.virtual_tokens = 0;
    try {
      model_->forward_unchecked(f);
    } catch (...) {
      cache.virtual_tokens = saved;
      throw;
    }
  }
  cache.virtual_tokens = n;
}

}  // namespace peft
