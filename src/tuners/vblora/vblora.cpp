// VB-LoRA on Linear layers (PEFT's tuners/vblora) and the VBLORA method entry.
#include "tuners/vblora/vblora.h"

#include <algorithm>
#include <cmath>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"

namespace peft {

VBLoRALinear::VBLoRALinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "VB-LoRA needs a Linear base layer");
  logits_A_ = &dict("vblora_logits_A");
  logits_B_ = &dict("vblora_logits_B");
  buffers_ = register_module("vblora_shared", std::make_shared<torch::nn::Module>());
}

void VBLoRALinear::add_adapter(const std::string & name, const at::Tensor & bank, const VBLoRAOptions & o) {
  const int64_t in = linear().in_features(), out = linear().out_features(), L = o.vector_length;
  // PEFT's checks, in its words
  PEFT_CHECK(in % L == 0, "VB-LoRA: `in_features` ", in, " must be divisible by `vector_length` ", L);
  PEFT_CHECK(out % L == 0, "VB-LoRA: `out_features` ", out, " must be divisible by `vector_length` ", L);
  {
    at::NoGradGuard g;
    logits_A_->add_param(name, at::empty({o.r, in / L, o.num_vectors}).normal_(0, o.init_logits_std));
    logits_B_->add_param(name, at::empty({out / L, o.r, o.num_vectors}).normal_(0, o.init_logits_std));
  }
  settings_[name] = {bank, o.topk, o.dropout};
  set_scaling(name, 1.0);  // no scale: lora_add with 1, so that the compile layer folds it as LoRA
  track_adapter(name);
  buffers_->register_module(name, std::make_shared<torch::nn::Module>())->register_buffer("bank", bank);
}

void VBLoRALinear::forget(const std::string & name) {
  if (settings_.erase(name)) buffers_->unregister_module(name);
}

std::string VBLoRALinear::adapter_signature(const std::string & n) const {
  return str("k", settings_.at(n).topk, "p", settings_.at(n).dropout);
}

std::pair<at::Tensor, at::Tensor> VBLoRALinear::factors(const std::string & n) const {
  const Settings & s = settings_.at(n);
  return math::vblora_factors(logits_A_->get(n), logits_B_->get(n), s.bank, s.topk);
}

at::Tensor VBLoRALinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    if (is_training()) {
      // PEFT: logits loaded from a save_only_topk_weights file are -inf off the top k: not trainable
      PEFT_CHECK(!at::isinf(logits_A_->get(n).select(0, 0).select(0, 0)).any().item<bool>(),
                 "VB-LoRA adapter '", n, "': found infinity values in the logits; an adapter saved with "
                 "save_only_topk_weights cannot be trained further");
    }
    const auto AB = factors(n);
    y = ops::lora_add(y, x, AB.first, AB.second, c10::nullopt, scaling(n), settings_.at(n).dropout, is_training());
  }
  return y;
}

void VBLoRALinear::merge_one(const std::string & n, bool safe) {
  const auto AB = factors(n);
  merge_delta(linear(), at::matmul(AB.second, AB.first), 1, safe, n);
}

void VBLoRALinear::unmerge_one(const std::string & n) {
  const auto AB = factors(n);
  merge_delta(linear(), at::matmul(AB.second, AB.first), -1, false, n);
}

// ---- the method ----

namespace {

nlohmann::json vblora_defaults() {
  return {{"r", 4},
          {"num_vectors", 256},
          {"vector_length", 256},
          {"topk", 2},
          {"vblora_dropout", 0.0},
          {"init_logits_std", 0.1},
          {"init_vector_bank_bound", 0.02},
          {"save_only_topk_weights", false},
          {"fan_in_fan_out", false},
          {"bias", "none"},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr}};
}

std::shared_ptr<const MethodOptions> vblora_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<VBLoRAOptions>();
  o->r = f.integer("r", 1);
  o->topk = f.integer("topk", 1);
  o->num_vectors = f.integer("num_vectors", 1);
  o->vector_length = f.integer("vector_length", 1);
  o->dropout = f.fraction("vblora_dropout");
  o->init_logits_std = f.number("init_logits_std");
  o->init_vector_bank_bound = f.number("init_vector_bank_bound");
  o->save_only_topk_weights = f.boolean("save_only_topk_weights");
  PEFT_CHECK(o->topk <= o->num_vectors, src, ": 'topk' ", o->topk, " is more than 'num_vectors' ", o->num_vectors);
  PEFT_CHECK(!f.boolean("fan_in_fan_out"), src, ": 'fan_in_fan_out' (Conv1D weights) is not supported yet");
  return o;
}

void vblora_shared(AdapterConfig & cfg, const std::vector<LayerPtr> &) {
  const auto & o = cfg.opts<VBLoRAOptions>();
  at::NoGradGuard g;
  const double b = o.init_vector_bank_bound;
  cfg.shared = {{"vblora_vector_bank", at::empty({o.num_vectors, o.vector_length}).uniform_(-b, b)}};
  cfg.shared_trainable = true;
}

std::shared_ptr<TunerLayer> vblora_inject(const AdapterConfig & cfg, const std::string &, const std::string & adapter,
                                          const LayerPtr & target) {
  auto layer = method_layer<VBLoRALinear>(target);
  layer->add_adapter(adapter, cfg.shared.at("vblora_vector_bank"), cfg.opts<VBLoRAOptions>());
  return layer;
}

bool is_logits_key(const std::string & k) {
  const auto ends = [&](const char * e) {
    const std::string s(e);
    return k.size() >= s.size() && k.compare(k.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".vblora_logits_A") || ends(".vblora_logits_B");
}

// save_only_topk_weights: each logits tensor as "<key>_topk_indices" (the smallest integer type that holds
// num_vectors, as PEFT) and "<key>_topk_weights" (the first k-1 softmax weights of the top k)
void vblora_to_file(const AdapterConfig & cfg, std::map<std::string, at::Tensor> & tensors) {
  const auto & o = cfg.opts<VBLoRAOptions>();
  if (!o.save_only_topk_weights) return;
  const at::ScalarType index_type = o.num_vectors < (1 << 8)    ? at::kByte
                                    : o.num_vectors < (1 << 15) ? at::kShort
                                                                : at::kInt;
  std::map<std::string, at::Tensor> out;
  for (auto & kv : tensors) {
    if (!is_logits_key(kv.first)) {
      out.insert(kv);
      continue;
    }
    auto top = kv.second.detach().topk(o.topk, -1);
    out[kv.first + "_topk_indices"] = std::get<1>(top).to(index_type);
    out[kv.first + "_topk_weights"] = at::softmax(std::get<0>(top), -1).narrow(-1, 0, o.topk - 1).contiguous();
  }
  tensors = std::move(out);
}

// The inverse (PEFT's _remap_adapter_state_dict_for_load): the k-th weight is 1 minus the others, logits
// are their logarithms at the indices and -inf elsewhere
void vblora_from_file(const AdapterConfig & cfg, const std::string & file, std::map<std::string, at::Tensor> & tensors) {
  const auto & o = cfg.opts<VBLoRAOptions>();
  if (!o.save_only_topk_weights) return;
  std::map<std::string, at::Tensor> out;
  const std::string idx = "_topk_indices", wts = "_topk_weights";
  for (auto & kv : tensors) {
    const std::string & k = kv.first;
    if (k.size() > wts.size() && k.compare(k.size() - wts.size(), wts.size(), wts) == 0) continue;
    if (!(k.size() > idx.size() && k.compare(k.size() - idx.size(), idx.size(), idx) == 0)) {
      out.insert(kv);
      continue;
    }
    const std::string base = k.substr(0, k.size() - idx.size());
    auto w = tensors.find(base + wts);
    PEFT_CHECK(w != tensors.end(), file, ": '", k, "' has no '", base + wts, "' (save_only_topk_weights)");
    const at::Tensor & ids = kv.second;
    PEFT_CHECK(ids.dim() == 3 && ids.size(2) == o.topk && !at::isFloatingType(ids.scalar_type()), file, ": '", k,
               "' must be an integer tensor (.., .., topk=", o.topk, "), got ", ids.scalar_type(), " ", ids.sizes());
    PEFT_CHECK(w->second.dim() == 3 && w->second.size(0) == ids.size(0) && w->second.size(1) == ids.size(1) &&
                   w->second.size(2) == o.topk - 1 && at::isFloatingType(w->second.scalar_type()),
               file, ": '", base + wts, "' has shape ", w->second.sizes(), ", expected (", ids.size(0), ", ",
               ids.size(1), ", ", o.topk - 1, ")");
    const at::Tensor ids64 = ids.to(at::kLong);
    PEFT_CHECK(ids.numel() == 0 || (ids64.min().item<int64_t>() >= 0 && ids64.max().item<int64_t>() < o.num_vectors),
               file, ": '", k, "' holds indices outside [0, num_vectors=", o.num_vectors, ")");
    const at::Tensor weights = w->second.to(at::kFloat);
    const at::Tensor all = at::cat({weights, 1 - weights.sum(-1, true)}, -1);
    out[base] = at::full({ids.size(0), ids.size(1), o.num_vectors}, -std::numeric_limits<float>::infinity())
                    .scatter(-1, ids64, at::log(all));
  }
  tensors = std::move(out);
}

}  // namespace

TunerMethod vblora_method() {
  TunerMethod m{{"VBLORA", "vblora_", &vblora_defaults, &vblora_parse}, &supports_linear, &vblora_inject,
                &DefaultTargets::lora, nullptr, &vblora_shared};
  m.to_file = &vblora_to_file;
  m.from_file = &vblora_from_file;
  m.bytes = [](const AdapterConfig & cfg, const std::string &, const Layer & plain) -> double {
    const auto * l = dynamic_cast<const LinearBase *>(&plain);  // float32 logits (r, in / L, N) and (out / L, r, N)
    if (!l) return 0.0;
    const auto & o = cfg.opts<VBLoRAOptions>();
    const double L = static_cast<double>(std::max<int64_t>(o.vector_length, 1));
    return 4.0 * static_cast<double>(o.r) * static_cast<double>(o.num_vectors) *
           std::floor(static_cast<double>(l->in_features() + l->out_features()) / L);
  };
  m.size_fields = {"r", "num_vectors", "vector_length"};
  return m;
}

}  // namespace peft
