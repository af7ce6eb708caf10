#include "peft/model/causal-lm.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <mutex>
#include <set>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/model/architectures.h"
#include "peft/model/checkpoint.h"
#include "peft/model/name-or-path.h"
#include "peft/nn/layers.h"
#include "peft/quant/quantized-embedding.h"
#include "peft/util/runtime.h"
#include "io/checkpoint-map.h"
#include "util/worker-pool.h"

namespace peft {

std::shared_ptr<CausalLM> build_model(const ModelConfig & cfg) {
  const Architecture * a = find_architecture(cfg.model_type);
  PEFT_CHECK(a != nullptr, "no architecture for model_type '", cfg.model_type, "'");
  return a->build(cfg);
}

KVCache KVCache::allocate(const ModelConfig & cfg, int64_t batch, int64_t capacity, at::TensorOptions opts) {
  KVCache c;
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    c.k.push_back(at::zeros({batch, cfg.num_kv_heads, capacity, cfg.head_dim}, opts));
    c.v.push_back(at::zeros({batch, cfg.num_kv_heads, capacity, cfg.head_dim}, opts));
  }
  return c;
}

std::vector<std::string> CausalLM::tied_parameter_names() const {
  if (config_.tie_word_embeddings) return {"lm_head.weight"};
  return {};
}

void CausalLM::tie_weights() {
  if (!config_.tie_word_embeddings) return;
  auto head = std::dynamic_pointer_cast<Linear>(output_layer()->base());
  auto emb = std::dynamic_pointer_cast<Embedding>(input_embedding()->base());
  if (head && emb) head->tie_weight(emb->weight);
}

namespace {
// The first parameter in parameters(true)'s order (a module's own, then its children's, depth first),
// found without listing them all: parameters(true) names every tensor of the model, and options() is
// asked on every forward (a decode step of a model with 8 adapters spent ~0.5 ms on it).
const at::Tensor * first_parameter(const torch::nn::Module & m) {
  for (const auto & p : m.named_parameters(false)) return &p.value();
  for (const auto & c : m.children()) {
    if (const at::Tensor * t = first_parameter(*c)) return t;
  }
  return nullptr;
}
}  // namespace

at::TensorOptions CausalLM::options() const {
  const at::Tensor * p = first_parameter(*this);
  return p ? p->options().requires_grad(false) : at::TensorOptions();
}

void CausalLM::validate(const ForwardInput & in) const {
  const ModelConfig & cfg = config_;
  PEFT_CHECK(in.input_ids.defined() != in.inputs_embeds.defined(), "give input_ids or inputs_embeds (one of them)");
  if (in.inputs_embeds.defined()) {
    PEFT_CHECK(in.inputs_embeds.dim() == 3 && in.inputs_embeds.size(1) > 0, "inputs_embeds must be (batch, seq, dim)");
    auto emb = std::dynamic_pointer_cast<Embedding>(input_embedding()->base());
    const int64_t D = emb ? emb->weight.size(1) : in.inputs_embeds.size(2);
    PEFT_CHECK(in.inputs_embeds.size(2) == D, "inputs_embeds has ", in.inputs_embeds.size(2), " features, the input embedding ", D);
    PEFT_CHECK(at::isFloatingType(in.inputs_embeds.scalar_type()), "inputs_embeds must be floating point");
  } else {
    PEFT_CHECK(in.input_ids.dim() == 2, "input_ids must be a (batch, seq) tensor");
    PEFT_CHECK(in.input_ids.scalar_type() == at::kLong, "input_ids must be int64");
    PEFT_CHECK(in.input_ids.size(1) > 0, "input_ids is empty");
    const int64_t lo = in.input_ids.min().item<int64_t>(), hi = in.input_ids.max().item<int64_t>();
    PEFT_CHECK(lo >= 0 && hi < cfg.vocab_size, "token id ", lo < 0 ? lo : hi, " is out of range [0, ", cfg.vocab_size,
               ")");
  }
  const auto shape = in.input_ids.defined() ? in.input_ids.sizes() : in.inputs_embeds.sizes().slice(0, 2);
  const int64_t L = in.cache ? in.cache->capacity() : shape[1];
  if (in.position_ids.defined()) {
    PEFT_CHECK(in.position_ids.sizes() == shape, "position_ids must be (batch, seq) like input_ids");
    PEFT_CHECK(in.position_ids.min().item<int64_t>() >= 0, "position_ids must not be negative");
  }
  // a learned position table (OPT) has max_position_embeddings rows; rotary positions go on past it, as in
  // transformers (rope_scaling is what makes them meaningful there)
  if (cfg.learned_positions && in.position_ids.defined()) {
    // explicit positions (a serving engine's slots are not positions): the positions themselves are checked
    const int64_t p = in.position_ids.max().item<int64_t>();
    PEFT_CHECK(p < cfg.max_position_embeddings, "position ", p, " exceeds the model's ", cfg.max_position_embeddings,
               " (max_position_embeddings in config.json)");
  } else if (cfg.learned_positions) {
    PEFT_CHECK(L <= cfg.max_position_embeddings, "a sequence of ", L, " positions",
               in.cache ? " (KV cache capacity)" : "", " exceeds the model's ", cfg.max_position_embeddings,
               " (max_position_embeddings in config.json)");
  }
  if (in.attention_mask.defined()) {
    PEFT_CHECK(in.attention_mask.dim() == 2 && in.attention_mask.size(0) == shape[0] &&
                   in.attention_mask.size(1) == L,
               "attention_mask must be (batch, ", L, "), got ", in.attention_mask.sizes());
  }
  if (in.segment_ids.defined()) {
    PEFT_CHECK(!in.cache && in.segment_ids.sizes() == shape,
               "segment_ids must be (batch, seq) like input_ids, without a KV cache");
  }
  if (in.cache) {
    PEFT_CHECK(in.cache->k.size() == static_cast<size_t>(cfg.num_layers), "KV cache has ", in.cache->k.size(),
               " layers, model has ", cfg.num_layers);
    PEFT_CHECK(in.cache_position.defined() && in.cache_position.numel() == shape[1],
               "cache_position must hold one slot per new token");
    PEFT_CHECK(in.cache_position.max().item<int64_t>() < L, "cache_position beyond the cache capacity ", L);
    const int64_t prefix = in.cache->prefix_length;
    PEFT_CHECK(prefix == 0 || in.cache_position.min().item<int64_t>() >= prefix, "cache_position must be past the ",
               prefix, " slots of the cache's prefix (a prompt-learning adapter's virtual tokens)");
  }
}

at::Tensor CausalLM::forward(const ForwardInput & in) {
  validate(in);
  return forward_unchecked(in);
}

at::Tensor CausalLM::embed(const at::Tensor & input_ids) {
  const at::Tensor e = input_embedding()->forward(input_ids);
  if (!config_.multiplier_in_lookup) return e;
  // Gemma 3's scaled embedding: the multiplier in the weights' dtype
  return e * at::scalar_tensor(config_.embedding_multiplier, e.options().dtype(e.scalar_type()));
}

at::Tensor CausalLM::forward_unchecked(const ForwardInput & in) {
  const at::Tensor embeds = in.inputs_embeds.defined() ? in.inputs_embeds : embed(in.input_ids);
  const int64_t B = embeds.size(0), S = embeds.size(1);
  const int64_t L = in.cache ? in.cache->capacity() : S;
  auto lopts = at::TensorOptions().dtype(at::kLong).device(embeds.device());
  AttentionContext ctx;
  ctx.cache = in.cache;
  ctx.cache_position = in.cache_position.defined() ? in.cache_position : at::arange(S, lopts);
  at::Tensor key_pos = at::arange(L, lopts);
  at::Tensor allowed = key_pos.unsqueeze(0) <= ctx.cache_position.unsqueeze(1);  // (S, L) causal
  at::Tensor windowed;  // and less than sliding_window slots back (Mistral: every layer; Gemma: some)
  if (config_.sliding_window > 0) {
    windowed = allowed.logical_and(key_pos.unsqueeze(0) > ctx.cache_position.unsqueeze(1) - config_.sliding_window);
    if (config_.sliding_layers.empty()) {  // every layer slides: one mask
      allowed = windowed;
      windowed = at::Tensor();
    }
  }
  auto batch_mask = [&](const at::Tensor & a) {  // (S, L) -> (B, 1, S, L) with padding and segments
    at::Tensor m = in.attention_mask.defined()
                       ? a.unsqueeze(0).logical_and(in.attention_mask.to(at::kBool).unsqueeze(1)).unsqueeze(1)
                       : a.unsqueeze(0).unsqueeze(0).expand({B, 1, S, L});
    if (in.segment_ids.defined()) {  // packed documents: attention stays within a segment
      at::Tensor same = in.segment_ids.unsqueeze(2) == in.segment_ids.unsqueeze(1);  // (B, S, S)
      m = m.logical_and(same.unsqueeze(1));
    }
    return m;
  };
  ctx.mask = batch_mask(allowed);
  if (windowed.defined()) ctx.window_mask = batch_mask(windowed);
  if (in.position_ids.defined()) {
    ctx.position_ids = in.position_ids;
  } else if (in.attention_mask.defined()) {
    at::Tensor pos = (in.attention_mask.to(at::kLong).cumsum(-1) - 1).clamp_min(0);
    ctx.position_ids = pos.index_select(1, ctx.cache_position);
  } else {
    ctx.position_ids = ctx.cache_position.unsqueeze(0).expand({B, S});
  }
  const at::Tensor hidden = forward_hidden(embeds, ctx);
  return in.hidden_states ? hidden : logits(hidden);
}

namespace {

// A layer's per-call tensors as a list (the defined ones, in a fixed order) and back: a graph node's inputs
constexpr int kLayerTensors = 6;
at::Tensor * layer_tensor(LayerArgs & a, int i) {
  at::Tensor * t[kLayerTensors] = {&a.ctx.mask, &a.ctx.window_mask, &a.ctx.position_ids, &a.ctx.cache_position, &a.cos, &a.sin};
  return t[i];
}

}  // namespace

at::Tensor CausalLM::decoder_layer(const at::Tensor & h, const LayerArgs & args, LayerFn layer) {
  if (!gradient_checkpointing_ || !is_training()) return layer(h, args);
  // a graph being captured for calls that record autograd (the capture runs without), or an eager call that does
  const bool capturing = CheckpointCapture::current() != nullptr;
  if (!capturing && !at::GradMode::is_enabled()) return layer(h, args);
  PEFT_CHECK(args.ctx.cache == nullptr,
             "gradient checkpointing with a KV cache (prefix tuning's prefix) is not supported: train without it");
  if (!capturing) return checkpoint(h, [args, layer = std::move(layer)](const at::Tensor & x) { return layer(x, args); });
  LayerArgs a = args;
  std::vector<at::Tensor> list;
  std::vector<int> present;
  for (int i = 0; i < kLayerTensors; ++i) {
    at::Tensor * t = layer_tensor(a, i);
    if (t->defined()) {
      list.push_back(*t);
      present.push_back(i);
      *t = at::Tensor();  // (the node's inputs, not these, are what a replay reads)
    }
  }
  return checkpoint_node(h, list, [a, present, layer = std::move(layer)](const at::Tensor & x, const std::vector<at::Tensor> & t) {
    LayerArgs now = a;
    for (size_t i = 0; i < present.size(); ++i) *layer_tensor(now, present[i]) = t[i];
    return layer(x, now);
  });
}

at::Tensor CausalLM::logits(const at::Tensor & hidden) {
  at::Tensor out = output_layer()->forward(hidden);
  if (config_.final_logit_softcapping > 0) {
    const double cap = config_.final_logit_softcapping;
    out = at::tanh(out / cap) * cap;
  }
  return out;
}

namespace {

// dst = src; a large view of `mapped` is copied in slices of ~16 MB on the kernel threads, each slice's file
// pages handed back once copied (an embedding or lm_head: 1-2 GB)
void copy_weight(at::Tensor & dst, const at::Tensor & src, const MappedCheckpoint * mapped) {
  constexpr int64_t kSlice = 16 << 20;
  if (!mapped || src.dim() == 0 || src.size(0) < 2 || static_cast<int64_t>(src.nbytes()) <= kSlice) {
    dst.copy_(src);
    return;
  }
  const int64_t rows = std::max<int64_t>(1, kSlice / static_cast<int64_t>(src.nbytes() / src.size(0)));
  parallel_rows(src.size(0), rows, [&](int64_t r0, int64_t r1) {
    at::NoGradGuard no_grad;  // (a thread of its own)
    for (int64_t r = r0; r < r1; r += rows) {
      const at::Tensor part = src.slice(0, r, std::min(r1, r + rows));
      dst.slice(0, r, r + part.size(0)).copy_(part);
      mapped->release(part);
    }
  });
}

// load_parameters; from a mapped checkpoint, each tensor is erased from `tensors` once copied (its view then
// hands its pages back at once: see io/checkpoint-map.h)
void copy_parameters(CausalLM & model, std::map<std::string, at::Tensor> & tensors, const std::string & source,
                     const MappedCheckpoint * mapped) {
  std::set<std::string> tied;
  for (const auto & t : model.tied_parameter_names()) tied.insert(t);
  std::set<std::string> used;
  std::vector<std::string> missing;
  at::NoGradGuard no_grad;
  for (auto & p : model.named_parameters(true)) {
    const std::string & name = p.key();
    if (tied.count(name)) continue;
    auto it = tensors.find(name);
    // original OPT checkpoints name keys without the leading "model."
    if (it == tensors.end() && name.rfind("model.", 0) == 0) it = tensors.find(name.substr(6));
    // and GPT-2's (saved from GPT2Model) without "transformer."
    if (it == tensors.end() && name.rfind("transformer.", 0) == 0) it = tensors.find(name.substr(12));
    if (it == tensors.end()) {
      missing.push_back(name);
      continue;
    }
    used.insert(it->first);
    PEFT_CHECK(it->second.sizes() == p.value().sizes(), source, ": tensor '", it->first, "' has shape ",
               it->second.sizes(), ", the model expects ", p.value().sizes(), " (checkpoint for a different config?)");
    PEFT_CHECK(it->second.is_floating_point() || !p.value().is_floating_point(), source, ": tensor '", it->first,
               "' is ", it->second.scalar_type(), ", the model expects floating point");
    copy_weight(p.value(), it->second, mapped);
    if (mapped) tensors.erase(it);
  }
  std::vector<std::string> unexpected;
  for (const auto & kv : tensors) {
    if (used.count(kv.first) || tied.count(kv.first)) continue;
    if (kv.first.find("rotary_emb.inv_freq") != std::string::npos) continue;  // old HF buffers
    // GPT-2's and GPT-NeoX's causal-mask buffers in older checkpoints
    const auto ends = [&](const std::string & e) {
      return kv.first.size() >= e.size() && kv.first.compare(kv.first.size() - e.size(), e.size(), e) == 0;
    };
    if (ends(".attn.bias") || ends(".attn.masked_bias") || ends(".attention.bias") || ends(".attention.masked_bias")) continue;
    unexpected.push_back(kv.first);
  }
  auto join = [](const std::vector<std::string> & v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 10; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 10) s += str(", ... (", v.size(), " in all)");
    return s;
  };
  PEFT_CHECK(missing.empty(), source, ": missing keys: ", join(missing));
  PEFT_CHECK(unexpected.empty(), source, ": unexpected keys: ", join(unexpected));
  model.tie_weights();
}

}  // namespace

void load_parameters(CausalLM & model, const std::map<std::string, at::Tensor> & tensors, const std::string & source) {
  std::map<std::string, at::Tensor> all = tensors;  // (handles, not data)
  copy_parameters(model, all, source, nullptr);
}

namespace {
struct NameOrPath {
  std::weak_ptr<CausalLM> model;  // (an expired entry belongs to a model gone, whatever sits at its address now)
  std::string name;
};
std::mutex g_names_mutex;
std::map<const CausalLM *, NameOrPath> g_names;
}  // namespace

void set_model_name_or_path(const std::shared_ptr<CausalLM> & model, const std::string & name_or_path) {
  std::lock_guard<std::mutex> lock(g_names_mutex);
  for (auto it = g_names.begin(); it != g_names.end();) it = it->second.model.expired() ? g_names.erase(it) : std::next(it);
  g_names[model.get()] = {model, name_or_path};
}

std::string model_name_or_path(const CausalLM & model) {
  std::lock_guard<std::mutex> lock(g_names_mutex);
  auto it = g_names.find(&model);
  if (it == g_names.end() || it->second.model.lock().get() != &model) return "";
  return it->second.name;
}

std::shared_ptr<CausalLM> load_model(const std::string & dir, at::ScalarType dtype) {
  LoadOptions o;
  o.dtype = dtype;
  return load_model(dir, o);
}

namespace {

// float16 weights: the Linear layers' weights (not a tied head's: that is the embedding) become float16,
// uninitialised; they compute in float32 (peft::linear_16bit widens them in registers), like the rest of
// the model, which stays float32 (LibTorch 1.13's CPU kernels have no float16 softmax, SiLU or matmul)
void linear_weights_to(CausalLM & model, at::ScalarType t) {
  std::set<const void *> embedding;
  for (const auto & p : model.input_embedding()->parameters(true)) embedding.insert(p.unsafeGetTensorImpl());
  for (const auto & kv : named_modules(model.shared_from_this())) {
    auto * l = dynamic_cast<Linear *>(kv.second.get());
    if (!l || embedding.count(l->weight.unsafeGetTensorImpl())) continue;
    l->weight.set_data(at::empty(l->weight.sizes(), l->weight.options().dtype(t)));
  }
}

}  // namespace

std::shared_ptr<CausalLM> load_model(const std::string & dir, const LoadOptions & o) {
  PEFT_CHECK(o.dtype == at::kFloat || o.dtype == at::kBFloat16 || o.dtype == at::kHalf,
             "load_model: dtype must be float32, bfloat16 or float16");
  // float16: the Linear weights only (linear_weights_to); the model's dtype is float32
  const at::ScalarType dtype = o.dtype == at::kHalf ? at::kFloat : o.dtype;
  ModelConfig cfg = ModelConfig::load(dir);
  // a checkpoint saved quantized says so in config.json; its layers load as they were saved
  quant::QuantOptions qopts = o.quantize;
  {
    const nlohmann::json j = read_json_file(dir + "/config.json");
    if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
      quant::QuantOptions saved = quant::options_from_config(j["quantization_config"], dir + "/config.json");
      PEFT_CHECK(!o.quantize.enabled() || o.quantize.format == saved.format, dir, " is saved quantized as ",
                 quant::format_name(saved.format), "; it cannot be loaded as ", quant::format_name(o.quantize.format));
      qopts = saved;
      qopts.format = quant::Format::none;  // (layers without quantization keys stay float, as saved)
    }
  }
  std::shared_ptr<CausalLM> model;
  try {
    model = build_model(cfg);  // (allocated lazily: nothing is touched yet)
  } catch (const c10::Error & e) {
    std::string why = e.what_without_backtrace();
    fail(str(dir, ": cannot allocate the model of config.json (", why.substr(0, why.find('\n')), ")"));
  }
  // The checkpoint is mapped, not read: each tensor goes from the file into its parameter (converted) or its
  // quantized layer, one at a time, and its pages leave the resident set once it is used. What is resident
  // at the end is the model; the most on the way is the model plus a chunk of quantization per thread.
  MappedCheckpoint ck = checkpoint_map(dir);
  {
    // the weights in `dtype` plus the largest tensor in flight: refuse what the machine cannot hold
    uint64_t bytes = 0, largest = 0;
    for (const auto & p : model->parameters(true)) bytes += static_cast<uint64_t>(p.numel()) * c10::elementSize(dtype);
    if (o.quantize.enabled()) bytes = bytes / 4;  // (about: Linear weights at 0.5-1 byte each)
    for (const auto & kv : ck.tensors) largest = std::max(largest, static_cast<uint64_t>(kv.second.nbytes()));
    check_memory_for(bytes + largest, str("loading the model '", dir, "' (", model->parameters(true).size(), " tensors)"));
  }
  {
    // the parameters in `dtype` right away, untouched: a float32 copy of a weight that is converted or quantized
    // is never made (the build's float32 storage, never written, goes); the buffers convert as before
    at::NoGradGuard no_grad;
    for (auto & p : model->parameters(true)) {
      if (p.is_floating_point() && p.scalar_type() != dtype) p.set_data(at::empty(p.sizes(), p.options().dtype(dtype)));
    }
    model->to(dtype);
    if (o.dtype == at::kHalf) linear_weights_to(*model, at::kHalf);
  }
  quant::load_tied_quantized(*model, ck.tensors, qopts, ck.source);  // (a tied head not skipped: one matrix)
  quant::load_quantized(model, ck.tensors, qopts, ck.source);
  copy_parameters(*model, ck.tensors, ck.source, &ck);
  model->eval();
  for (auto & p : model->parameters()) p.set_requires_grad(false);
  set_model_name_or_path(model, dir);  // (transformers' name_or_path: the folder as given)
  return model;
}

void init_random(CausalLM & model, uint64_t seed, double std) {
  at::NoGradGuard g;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto & p : model.named_parameters(true)) {
    const std::string & n = p.key();
    at::Tensor & t = p.value();
    if (n.size() >= 4 && n.compare(n.size() - 4, 4, "bias") == 0) {
      t.zero_();
    } else if (t.dim() == 1) {
      t.fill_(1.0);
    } else {
      t.copy_(at::normal(0.0, std, t.sizes(), gen).to(t.scalar_type()));
    }
  }
  model.tie_weights();
}

void save_model(CausalLM & model, const std::string & dir, const nlohmann::json & config_json,
                const std::map<std::string, std::string> & extra_files) {
  FolderWriter w(dir);
  std::set<std::string> tied;
  for (const auto & t : model.tied_parameter_names()) tied.insert(t);
  std::map<std::string, at::Tensor> out;
  for (auto & p : model.named_parameters(true)) {
    if (!tied.count(p.key())) out[p.key()] = p.value();
  }
  quant::export_quantized(model.shared_from_this(), out);
  write_file_atomic(w.file("config.json"), config_json.dump(2));
  safetensors_save(w.file("model.safetensors"), out);
  for (const auto & f : extra_files) write_file_atomic(w.file(f.first), f.second);
  w.commit();
}

}  // namespace peft
