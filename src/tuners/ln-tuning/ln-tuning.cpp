// LayerNorm tuning (PEFT §2.6) and the LN_TUNING method entry.
#include "tuners/ln-tuning/ln-tuning.h"

#include "peft/error.h"
#include "peft/tuners/registry.h"

namespace peft {

LNTuningLayer::LNTuningLayer(LayerPtr base) : TunerLayer(std::move(base)) {
  holder_ = register_module("ln_tuning_layers", std::make_shared<torch::nn::Module>());
}

void LNTuningLayer::add_adapter(const std::string & name) {
  LayerPtr c = base_layer_->clone_layer();
  holder_->register_module(name, c);
  copies_[name] = c;
  track_adapter(name);
}

void LNTuningLayer::forget(const std::string & name) {
  if (copies_.erase(name)) holder_->unregister_module(name);
}

at::Tensor LNTuningLayer::forward_active(const at::Tensor & x) {
  auto here = active_here();
  PEFT_CHECK(here.size() == 1, "LayerNorm tuning allows one active adapter per layer, got ", here.size());
  return copies_.at(here[0])->forward(x);
}

void LNTuningLayer::swap_values(const std::string & name) {
  at::NoGradGuard g;
  auto mine = base_layer_->named_parameters(true);
  for (const auto & p : copies_.at(name)->named_parameters(true)) {
    at::Tensor & b = mine[p.key()];
    at::Tensor tmp = b.clone();
    b.copy_(p.value());
    p.value().copy_(tmp);
  }
}

void LNTuningLayer::merge_one(const std::string & name, bool safe) {
  PEFT_CHECK(merged().empty(), "LayerNorm tuning can merge one adapter at a time");
  if (safe) {
    for (const auto & p : copies_.at(name)->parameters(true)) check_finite(p, "merging adapter '" + name + "'");
  }
  swap_values(name);
}

void LNTuningLayer::unmerge_one(const std::string & name) { swap_values(name); }

// ---- the method ----

namespace {

nlohmann::json ln_defaults() { return {{"exclude_modules", nullptr}}; }
// LayerNorm tuning has no options of its own
std::shared_ptr<const MethodOptions> ln_parse(const AdapterConfig &, const std::string &) {
  return std::make_shared<MethodOptions>();
}
bool ln_supports(const Layer & l) { return dynamic_cast<const TunerLayer *>(&l) == nullptr; }

std::shared_ptr<TunerLayer> ln_inject(const AdapterConfig &, const std::string &, const std::string & adapter,
                                      const LayerPtr & target) {
  auto layer = method_layer<LNTuningLayer>(target);
  layer->add_adapter(adapter);
  return layer;
}

}  // namespace

TunerMethod ln_tuning_method() {
  return TunerMethod{{"LN_TUNING", "ln_tuning_", &ln_defaults, &ln_parse}, &ln_supports, &ln_inject,
                     &DefaultTargets::ln_tuning};
}

}  // namespace peft
