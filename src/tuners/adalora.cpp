// AdaLoRA on Linear (PEFT §2.3) and the ADALORA method entry.
#include "peft/tuners/adalora.h"

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"

namespace peft {

AdaLoraLinear::AdaLoraLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "AdaLoRA needs a Linear base layer");
  A_ = &dict("lora_A");
  E_ = &dict("lora_E");
  B_ = &dict("lora_B");
}

void AdaLoraLinear::add_adapter(const std::string & name, int64_t r, int64_t init_r, double alpha, double dropout,
                                bool init_default) {
  const int64_t in = linear().in_features(), out = linear().out_features();
  at::NoGradGuard g;
  if (init_default) {  // A, B ~ N(0, 0.02), E = 0: a no-op at start
    A_->add_param(name, at::normal(0.0, 0.02, {r, in}));
    E_->add_param(name, at::zeros({r, 1}));
    B_->add_param(name, at::normal(0.0, 0.02, {out, r}));
  } else {
    A_->add_param(name, at::randn({r, in}));
    E_->add_param(name, at::randn({r, 1}));
    B_->add_param(name, at::randn({out, r}));
  }
  dropout_[name] = dropout;
  track_adapter(name);
  const double s = alpha > 0 ? alpha : static_cast<double>(r);
  set_scaling(name, s / (static_cast<double>(init_r) + 1e-5));  // ranknum stays init_r, even after pruning
}

void AdaLoraLinear::forget(const std::string & name) { dropout_.erase(name); }

std::string AdaLoraLinear::adapter_signature(const std::string & n) const {
  return str("r", A_->get(n).size(0), ",p", dropout_.at(n));
}

at::Tensor AdaLoraLinear::delta_weight(const std::string & n) const {
  return math::lora_delta(A_->get(n) * E_->get(n), B_->get(n), scaling(n));
}

at::Tensor AdaLoraLinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    y = ops::lora_add(y, x, A_->get(n) * E_->get(n), B_->get(n), c10::nullopt, scaling(n), dropout_.at(n), is_training());
  }
  return y;
}

void AdaLoraLinear::merge_one(const std::string & n, bool safe) { merge_delta(linear(), delta_weight(n), 1, safe, n); }

void AdaLoraLinear::unmerge_one(const std::string & n) { merge_delta(linear(), delta_weight(n), -1, false, n); }

// ---- the method ----

nlohmann::json lora_config_defaults();
void lora_config_validate(const AdapterConfig & c, const std::string & src);

namespace {

nlohmann::json adalora_defaults() {
  nlohmann::json j = lora_config_defaults();
  j.update({{"init_r", 12},
            {"target_r", 8},
            {"tinit", 0},
            {"tfinal", 0},
            {"deltaT", 1},
            {"beta1", 0.85},
            {"beta2", 0.85},
            {"orth_reg_weight", 0.5},
            {"total_step", nullptr},
            {"rank_pattern", nullptr}});
  return j;
}

void adalora_validate(const AdapterConfig & c, const std::string & src) {
  AdapterConfig as_lora = c;
  as_lora.fields["rank_pattern"] = nlohmann::json::object();
  lora_config_validate(as_lora, src);
  const auto & f = c.fields;
  PEFT_CHECK(!f["use_dora"].get<bool>(), src, ": AdaLoRA does not support 'use_dora'");
  for (const char * k : {"init_r", "target_r", "deltaT"}) {
    PEFT_CHECK(f[k].is_number_integer() && f[k].get<int64_t>() > 0, src, ": field '", k, "' must be a positive integer");
  }
  PEFT_CHECK(f["total_step"].is_number_integer() && f["total_step"].get<int64_t>() > 0, src,
             ": field 'total_step' is required and must be > 0");
  PEFT_CHECK(f["tinit"].get<int64_t>() < f["total_step"].get<int64_t>() - f["tfinal"].get<int64_t>(), src,
             ": 'tinit' must be < total_step - tfinal (there must be a budgeting phase)");
  for (const char * k : {"beta1", "beta2"}) {
    PEFT_CHECK(f[k].is_number() && f[k].get<double>() > 0 && f[k].get<double>() < 1, src, ": field '", k, "' must be in (0, 1)");
  }
  PEFT_CHECK(f["orth_reg_weight"].is_number() && f["orth_reg_weight"].get<double>() >= 0, src,
             ": field 'orth_reg_weight' must be >= 0");
  PEFT_CHECK(f["rank_pattern"].is_null() || f["rank_pattern"].is_object(), src, ": field 'rank_pattern' must be an object");
}

bool adalora_supports(const Layer & l) { return dynamic_cast<const Linear *>(&l) != nullptr; }

std::shared_ptr<TunerLayer> adalora_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                           const LayerPtr & target) {
  const auto & f = cfg.fields;
  const int64_t init_r = f["init_r"].get<int64_t>();
  int64_t r = init_r;
  // a saved rank_pattern ("<path>.lora_E" -> keep mask) gives each module its kept rank
  if (f["rank_pattern"].is_object() && f["rank_pattern"].contains(path + ".lora_E")) {
    r = 0;
    for (const auto & keep : f["rank_pattern"][path + ".lora_E"]) r += keep.get<bool>() ? 1 : 0;
  }
  auto layer = std::dynamic_pointer_cast<AdaLoraLinear>(target);
  if (!layer) layer = std::make_shared<AdaLoraLinear>(target);
  const auto & init = f["init_lora_weights"];
  layer->add_adapter(adapter, r, init_r, f["lora_alpha"].get<double>(), f["lora_dropout"].get<double>(),
                     !(init.is_boolean() && !init.get<bool>()));
  return layer;
}

}  // namespace

TunerMethod adalora_method() {
  return TunerMethod{"ADALORA", "lora_", &adalora_defaults, &adalora_validate, &adalora_supports, &adalora_inject,
                     &DefaultTargets::adalora};
}

}  // namespace peft
