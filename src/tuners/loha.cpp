// LoHa (PEFT §2.7): dW = scale * (w1_a w1_b) * (w2_a w2_b), a Hadamard product of two rank-r products.
#include "peft/error.h"
#include "peft/tuners/lycoris.h"
#include "peft/tuners/registry.h"

namespace peft {

LoHaLinear::LoHaLinear(LayerPtr base) : LycorisLinear(std::move(base)) {
  w1a_ = &dict("hada_w1_a");
  w1b_ = &dict("hada_w1_b");
  w2a_ = &dict("hada_w2_a");
  w2b_ = &dict("hada_w2_b");
}

void LoHaLinear::add_adapter(const std::string & name, const LycorisSettings & s, const std::string & init) {
  const int64_t in = linear().in_features(), out = linear().out_features();
  at::NoGradGuard g;
  w1a_->add_param(name, kaiming_uniform({out, s.r}));
  w1b_->add_param(name, kaiming_uniform({s.r, in}));
  w2a_->add_param(name, kaiming_uniform({out, s.r}));
  w2b_->add_param(name, init == "false" ? kaiming_uniform({s.r, in}) : at::zeros({s.r, in}));
  add_settings(name, s);
}

at::Tensor LoHaLinear::raw_delta(const std::string & n) const {
  return at::matmul(w1a_->get(n), w1b_->get(n)) * at::matmul(w2a_->get(n), w2b_->get(n));
}

// ---- the method (LoKr shares the config handling) ----

nlohmann::json lycoris_defaults();

namespace {

nlohmann::json loha_defaults() { return lycoris_defaults(); }

}  // namespace

nlohmann::json lycoris_defaults() {
  return {{"r", 8},
          {"alpha", 8},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"exclude_modules", nullptr},
          {"rank_dropout", 0.0},
          {"module_dropout", 0.0},
          {"use_effective_conv2d", false},
          {"init_weights", true},
          {"rank_pattern", nlohmann::json::object()},
          {"alpha_pattern", nlohmann::json::object()}};
}

void lycoris_validate(const AdapterConfig & c, const std::string & src) {
  const auto & f = c.fields;
  PEFT_CHECK(f["r"].is_number_integer() && f["r"].get<int64_t>() > 0, src, ": field 'r' must be a positive integer, got ",
             f["r"].dump());
  PEFT_CHECK(f["alpha"].is_number(), src, ": field 'alpha' must be a number");
  for (const char * k : {"rank_dropout", "module_dropout"}) {
    PEFT_CHECK(f[k].is_number() && f[k].get<double>() >= 0 && f[k].get<double>() < 1, src, ": field '", k,
               "' must be in [0, 1)");
  }
  PEFT_CHECK(!f.value("use_effective_conv2d", false), src, ": 'use_effective_conv2d' (conv layers) is not supported");
  for (const char * k : {"rank_pattern", "alpha_pattern"}) {
    PEFT_CHECK(f[k].is_object(), src, ": field '", k, "' must be an object");
  }
}

static void loha_validate(const AdapterConfig & c, const std::string & src) {
  lycoris_validate(c, src);
  const std::string init = c.init_setting("init_weights");
  PEFT_CHECK(init == "true" || init == "false", src, ": init_weights '", init, "' is not supported (true, false)");
}

bool lycoris_supports(const Layer & l) { return dynamic_cast<const Linear *>(&l) != nullptr; }

static std::shared_ptr<TunerLayer> loha_inject(const AdapterConfig & cfg, const std::string & path,
                                               const std::string & adapter, const LayerPtr & target) {
  auto layer = std::dynamic_pointer_cast<LoHaLinear>(target);
  if (!layer) layer = std::make_shared<LoHaLinear>(target);
  layer->add_adapter(adapter, lycoris_settings_for(cfg, path), cfg.init_setting("init_weights"));
  return layer;
}

TunerMethod loha_method() {
  return TunerMethod{"LOHA", "hada_", &loha_defaults, &loha_validate, &lycoris_supports, &loha_inject,
                     nullptr};
}

}  // namespace peft
