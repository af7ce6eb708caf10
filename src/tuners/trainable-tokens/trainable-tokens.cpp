// Trainable tokens (PEFT's TRAINABLE_TOKENS) and its method entry.
#include "tuners/trainable-tokens/trainable-tokens.h"

#include <set>

#include "peft/error.h"
#include "peft/tuners/registry.h"
#include "peft/tuners/routing.h"

namespace peft {

TrainableTokensLayer::TrainableTokensLayer(LayerPtr base, bool wrapped) : TunerLayer(std::move(base)), wrapped_(wrapped) {
  const auto lin = std::dynamic_pointer_cast<LinearBase>(base_layer_);
  PEFT_CHECK(std::dynamic_pointer_cast<Embedding>(base_layer_) || lin,
             "trainable tokens need an Embedding or a Linear layer, got ", base_layer_->name());
  PEFT_CHECK(!lin || !lin->bias_tensor().defined(), "trainable tokens on a Linear layer with a bias (PEFT applies "
                                                      "F.linear without it)");
  if (wrapped_) {
    auto holder = register_module("token_adapter", std::make_shared<torch::nn::Module>());
    delta_ = holder->register_module("trainable_tokens_delta", std::make_shared<AdapterDict>()).get();
  } else {
    delta_ = &dict("trainable_tokens_delta");
  }
  holder_ = register_module("token_indices", std::make_shared<torch::nn::Module>());
}

at::Tensor TrainableTokensLayer::base_weight() const {
  if (auto e = std::dynamic_pointer_cast<Embedding>(base_layer_)) return e->weight;
  return static_cast<LinearBase &>(*base_layer_).dense_weight();
}

void TrainableTokensLayer::add_adapter(const std::string & name, const std::vector<int64_t> & indices,
                                       bool init_from_weight) {
  const at::Tensor W = base_weight();
  const int64_t V = W.size(0);
  std::set<int64_t> seen;
  for (int64_t i : indices) {
    PEFT_CHECK(i >= 0 && i < V, "trainable tokens: token index ", i, " is outside the ", V, " rows of the weight");
    PEFT_CHECK(seen.insert(i).second, "trainable tokens: token index ", i, " is listed twice in token_indices");
  }
  at::NoGradGuard g;
  at::Tensor rows = at::tensor(indices, at::TensorOptions().dtype(at::kLong)).to(W.device());
  // float32 even on a bfloat16 base, as PEFT's autocast_adapter_dtype leaves the delta and the originals (the
  // forward and a merge use them in the weight's dtype)
  at::Tensor original = W.index_select(0, rows).to(at::kFloat);
  at::Tensor values = init_from_weight ? original.clone() : at::randn(original.sizes(), W.options()).to(at::kFloat);
  delta_->add_param(name, values);
  auto m = holder_->register_module(name, std::make_shared<torch::nn::Module>());
  rows_[name] = m->register_buffer("indices", rows);
  original_[name] = m->register_buffer("trainable_tokens_original", original);
  track_adapter(name);
}

void TrainableTokensLayer::follow(const std::string & name, std::shared_ptr<TrainableTokensLayer> source) {
  PEFT_CHECK(source && source->has_adapter(name), "trainable tokens: no adapter '", name, "' to follow");
  PEFT_CHECK(!has_adapter(name), "trainable tokens: adapter '", name, "' targets both the embedding and the output "
                                 "layer tied to it; target the embedding only (the tied layer follows it)");
  PEFT_CHECK(base_weight().sizes() == source->base_weight().sizes(), "trainable tokens: a tied layer's weight ",
             base_weight().sizes(), " differs from the embedding's ", source->base_weight().sizes());
  source_[name] = std::move(source);
  track_adapter(name);
}

void TrainableTokensLayer::forget(const std::string & name) {
  if (source_.erase(name)) return;
  if (delta_->contains(name)) delta_->remove(name);  // (the wrapped layout's dict is not a direct child)
  if (rows_.erase(name)) {
    original_.erase(name);
    holder_->unregister_module(name);
  }
}

at::Tensor TrainableTokensLayer::indices(const std::string & name) const {
  auto s = source_.find(name);
  if (s != source_.end()) return s->second->indices(name);
  return rows_.at(name);
}

at::Tensor TrainableTokensLayer::delta(const std::string & name) const {
  auto s = source_.find(name);
  if (s != source_.end()) return s->second->delta(name);
  return delta_->get(name);
}

std::vector<std::pair<std::string, at::Tensor>> TrainableTokensLayer::adapter_buffers(const std::string & name) const {
  if (!source_.count(name) || wrapped_) return {};
  return {{"trainable_tokens_delta." + name, delta(name)}};  // the embedding's tensor: a load writes it there
}

std::string TrainableTokensLayer::adapter_signature(const std::string & name) const {
  return str("rows", indices(name).size(0), source_.count(name) ? ",tied" : "");
}

void TrainableTokensLayer::check_disjoint(const std::vector<std::string> & adapters) const {
  if (adapters.size() < 2) return;
  std::set<int64_t> seen;
  for (const auto & a : adapters) {
    const at::Tensor rows = indices(a).cpu();
    for (int64_t i = 0; i < rows.numel(); ++i) {
      PEFT_CHECK(seen.insert(rows.data_ptr<int64_t>()[i]).second, "Token indices of adapter ", a,
                 " are already defined and would result in undefined merging behavior. Only disjunct token indices "
                 "are currently supported.");
    }
  }
}

at::Tensor TrainableTokensLayer::weight_with(const std::vector<std::string> & adapters) const {
  at::Tensor W = base_weight();
  for (const auto & a : adapters) W = W.index_copy(0, indices(a), delta(a).to(W.scalar_type()));
  return W;
}

at::Tensor TrainableTokensLayer::apply(const at::Tensor & W, const at::Tensor & x) const {
  if (auto e = std::dynamic_pointer_cast<Embedding>(base_layer_)) return at::embedding(W, x, e->padding_idx);
  return at::linear(x.to(W.scalar_type()), W);
}

at::Tensor TrainableTokensLayer::forward_active(const at::Tensor & x) {
  const auto here = active_here();
  check_disjoint(here);
  return apply(weight_with(here), x);
}

at::Tensor TrainableTokensLayer::forward_mixed(const at::Tensor & x) {
  // each row with its adapter's rows swapped in (rows of other adapters, and __base__, the base weight)
  at::Tensor y = base_layer_->forward(x);
  const RowRouting & r = routing();
  for (const auto & a : adapter_names()) {
    at::Tensor m = r.mask(a, y.dim());
    if (!m.defined()) continue;
    y = y + (apply(weight_with({a}), x) - y) * m;
  }
  return y;
}

void TrainableTokensLayer::merge_one(const std::string & name, bool safe) {
  std::vector<std::string> all = merged();
  all.push_back(name);
  check_disjoint(all);
  if (source_.count(name)) return;  // the followed layer writes the shared weight
  at::NoGradGuard g;
  at::Tensor W = base_weight();
  const at::Tensor d = delta(name).to(W.scalar_type());
  if (safe) check_finite(d, "merging adapter '" + name + "'");
  W.index_copy_(0, indices(name), d);
}

void TrainableTokensLayer::unmerge_one(const std::string & name) {
  if (source_.count(name)) return;
  at::NoGradGuard g;
  base_weight().index_copy_(0, indices(name), original_.at(name).to(base_weight().scalar_type()));
}

std::shared_ptr<TunerLayer> add_trainable_tokens(const LayerPtr & target, const std::string & adapter,
                                                 const std::vector<int64_t> & rows) {
  auto layer = std::dynamic_pointer_cast<TrainableTokensLayer>(target);
  PEFT_CHECK(layer || !std::dynamic_pointer_cast<TunerLayer>(target), "trainable_token_indices: module ",
             target->name(), " is adapted by the method itself; trainable tokens need a module it does not target");
  if (!layer) layer = std::make_shared<TrainableTokensLayer>(target, /*wrapped=*/true);
  layer->add_adapter(adapter, rows, /*init_from_weight=*/true);  // (PEFT's wrapper: init_weights true)
  return layer;
}

std::shared_ptr<TunerLayer> follow_trainable_tokens(const std::string & adapter, const LayerPtr & target,
                                                    const std::shared_ptr<TunerLayer> & embedding) {
  auto source = std::dynamic_pointer_cast<TrainableTokensLayer>(embedding);
  PEFT_CHECK(source, "trainable tokens: the tied embedding holds no trainable tokens");
  auto layer = std::dynamic_pointer_cast<TrainableTokensLayer>(target);
  PEFT_CHECK(layer || !std::dynamic_pointer_cast<TunerLayer>(target), "trainable_token_indices: the output layer tied "
             "to the embedding is adapted by the method itself");
  if (!layer) layer = std::make_shared<TrainableTokensLayer>(target, /*wrapped=*/true);
  layer->follow(adapter, source);
  return layer;
}

// ---- the method ----

namespace {

nlohmann::json tokens_defaults() { return {{"token_indices", nlohmann::json::array()}, {"init_weights", true}}; }

std::shared_ptr<const MethodOptions> tokens_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  PEFT_CHECK(c.modules_to_save.empty(), src, ": TRAINABLE_TOKENS has no 'modules_to_save' (PEFT's config lacks it)");
  auto o = std::make_shared<TrainableTokensOptions>();
  const nlohmann::json & t = f.at("token_indices");
  PEFT_CHECK(t.is_array() && !t.empty(), src, ": 'token_indices' must be a non-empty list of token ids");
  for (const auto & i : t) {
    PEFT_CHECK(i.is_number_integer() && i.get<int64_t>() >= 0, src, ": 'token_indices' must hold token ids (integers >= 0)");
    o->token_indices.push_back(i.get<int64_t>());
  }
  o->init_from_weight = f.boolean("init_weights");
  return o;
}

bool tokens_supports(const Layer & l) {
  if (dynamic_cast<const Embedding *>(&l)) return true;
  auto lin = dynamic_cast<const LinearBase *>(&l);
  return lin && !lin->bias_tensor().defined();
}

std::shared_ptr<TunerLayer> tokens_inject(const AdapterConfig & cfg, const std::string &, const std::string & adapter,
                                          const LayerPtr & target) {
  auto layer = method_layer<TrainableTokensLayer>(target);
  const auto & o = cfg.opts<TrainableTokensOptions>();
  layer->add_adapter(adapter, o.token_indices, o.init_from_weight);
  return layer;
}

std::shared_ptr<TunerLayer> tokens_tied(const std::string & adapter, const LayerPtr & target,
                                        const std::shared_ptr<TunerLayer> & embedding) {
  auto source = std::dynamic_pointer_cast<TrainableTokensLayer>(embedding);
  PEFT_CHECK(source, "trainable tokens: the tied embedding holds no trainable tokens");
  auto layer = method_layer<TrainableTokensLayer>(target);
  // target_modules naming the tied layer too gave it rows of its own: PEFT replaces them by the embedding's
  // (the same adapter as with the embedding alone)
  if (layer->has_adapter(adapter)) layer->delete_adapter(adapter);
  layer->follow(adapter, source);
  return layer;
}

// PEFT's _prepare_adapter_config: without target_modules, the input embedding
void tokens_complete(AdapterConfig & cfg, const DefaultTargets *) {
  if (!cfg.all_linear && !cfg.target_regex && cfg.target_list.empty()) cfg.set_field("target_modules", nlohmann::json::array({"embed_tokens"}));
}

}  // namespace

TunerMethod trainable_tokens_method() {
  TunerMethod m{{"TRAINABLE_TOKENS", "trainable_tokens_", &tokens_defaults, &tokens_parse}, &tokens_supports,
                &tokens_inject};
  m.schema.absent_fields = {"modules_to_save"};
  m.complete = &tokens_complete;
  m.tied = &tokens_tied;
  return m;
}

}  // namespace peft
