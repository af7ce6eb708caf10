// PeftModel: forward. The input is checked (the model's checks and the active adapter's), then run: with an
// active prompt-learning adapter its virtual tokens go in front of the input embeddings, or its prefix keys
// and values in front of the input's in a KV cache; a mixed-adapter batch routes each row to its adapter.
#include "peft/error.h"
#include "peft/peft-model.h"
#include "peft/tuners/modules-to-save.h"
#include "peft/tuners/prompt-learning.h"
#include "peft/tuners/routing.h"

namespace peft {

at::Tensor PeftModel::forward(const PeftInput & in) {
  prepare_forward();
  if (in.adapter_names.empty()) {
    validate(in);
    return forward_unchecked(in);
  }
  PeftInput mixed = in;
  mixed.adapter_rows = mixed_rows(in.adapter_names, batch_size(in));
  model_->validate(mixed);
  return forward_unchecked(mixed);
}

void PeftModel::validate(const PeftInput & in) const {
  model_->validate(in);
  const int64_t n = num_virtual_tokens();
  if (in.cache) {
    // (the model's validate keeps the input's slots past the prefix)
    PEFT_CHECK(in.cache->prefix_length == n, "the KV cache holds ", in.cache->prefix_length,
               " virtual tokens, the active adapter has ", n,
               n ? " (call fill_virtual_tokens on a new cache first: generate() does)" : "");
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

at::Tensor PeftModel::forward_unchecked(const PeftInput & in) {
  if (in.adapter_rows.defined()) {
    // a mixed-adapter batch (no prompt learning: mixed_rows refuses it): the layers read the rows' adapters
    // from the model's state while it runs
    const auto index = adapter_index();
    RoutingScope scope(state_->routing(), in.adapter_rows, index);
    return model_->forward_unchecked(in);
  }
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
  cache.prefix_length = n;
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
    f.hidden_states = true;  // (only the cache is wanted: no head)
    f.inputs_embeds = enc->prompts().to(opts.dtype()).unsqueeze(0).expand({B, -1, -1}).contiguous();
    f.cache = &cache;
    f.cache_position = at::arange(n, opts.dtype(at::kLong));
    const int64_t saved = cache.prefix_length;
    cache.prefix_length = 0;
    try {
      model_->forward_unchecked(f);
    } catch (...) {
      cache.prefix_length = saved;
      throw;
    }
  }
  cache.prefix_length = n;
}

}  // namespace peft
