// VeRA on Linear (PEFT §2.10) and the VERA method entry.
#include "peft/tuners/vera.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"

namespace peft {

std::pair<at::Tensor, at::Tensor> vera_projections(int64_t r, int64_t max_in, int64_t max_out, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  auto kaiming = [&](int64_t rows, int64_t cols) {  // fan_in = cols, gain sqrt(2): bound sqrt(6 / fan_in)
    const double bound = std::sqrt(6.0 / static_cast<double>(cols));
    return at::empty({rows, cols}).uniform_(-bound, bound, gen);
  };
  at::NoGradGuard g;
  at::Tensor A = kaiming(r, max_in);
  at::Tensor B = kaiming(max_out, r);
  return {A, B};
}

VeRALinear::VeRALinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "VeRA needs a Linear base layer");
  lb_ = &dict("vera_lambda_b");
  ld_ = &dict("vera_lambda_d");
  buffers_ = register_module("vera_shared", std::make_shared<torch::nn::Module>());
}

void VeRALinear::add_adapter(const std::string & name, const at::Tensor & A, const at::Tensor & B, double dropout,
                             double d_initial, bool init_default) {
  const int64_t in = linear().in_features(), out = linear().out_features(), r = A.size(0);
  PEFT_CHECK(A.size(1) >= in && B.size(0) >= out && B.size(1) == r, "VeRA projections ", A.sizes(), " / ", B.sizes(),
             " are too small for a ", out, "x", in, " layer");
  at::NoGradGuard g;
  lb_->add_param(name, init_default ? at::zeros({out}) : at::ones({out}));
  ld_->add_param(name, init_default ? at::full({r}, d_initial) : at::randn({r}));
  dropout_[name] = dropout;
  shared_[name] = {A, B};
  track_adapter(name);
  auto holder = buffers_->register_module(name, std::make_shared<torch::nn::Module>());
  holder->register_buffer("A", A);
  holder->register_buffer("B", B);
}

void VeRALinear::forget(const std::string & name) {
  dropout_.erase(name);
  if (shared_.erase(name)) buffers_->unregister_module(name);
}

std::string VeRALinear::adapter_signature(const std::string & n) const { return str("p", dropout_.at(n)); }

at::Tensor VeRALinear::A_of(const std::string & n) const {
  return shared_.at(n).first.narrow(1, 0, linear().in_features());
}
at::Tensor VeRALinear::B_of(const std::string & n) const {
  return shared_.at(n).second.narrow(0, 0, linear().out_features());
}

at::Tensor VeRALinear::delta_weight(const std::string & n) const {
  return math::vera_delta(A_of(n), B_of(n), ld_->get(n), lb_->get(n));
}

at::Tensor VeRALinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    y = ops::vera_add(y, x, A_of(n), B_of(n), ld_->get(n), lb_->get(n), dropout_.at(n), is_training());
  }
  return y;
}

void VeRALinear::merge_one(const std::string & n, bool safe) { merge_delta(linear(), delta_weight(n), 1, safe, n); }

void VeRALinear::unmerge_one(const std::string & n) { merge_delta(linear(), delta_weight(n), -1, false, n); }

// ---- the method ----

namespace {

nlohmann::json vera_defaults() {
  return {{"r", 256},
          {"projection_prng_key", 0},
          {"save_projection", true},
          {"vera_dropout", 0.0},
          {"d_initial", 0.1},
          {"fan_in_fan_out", false},
          {"bias", "none"},
          {"init_weights", true},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr}};
}

void vera_validate(const AdapterConfig & c, const std::string & src) {
  const auto & f = c.fields;
  PEFT_CHECK(f["r"].is_number_integer() && f["r"].get<int64_t>() > 0, src, ": field 'r' must be a positive integer");
  PEFT_CHECK(f["projection_prng_key"].is_number_integer(), src, ": field 'projection_prng_key' must be an integer");
  PEFT_CHECK(f["vera_dropout"].is_number() && f["vera_dropout"].get<double>() >= 0 && f["vera_dropout"].get<double>() < 1,
             src, ": field 'vera_dropout' must be in [0, 1)");
  PEFT_CHECK(f["d_initial"].is_number(), src, ": field 'd_initial' must be a number");
  PEFT_CHECK(f["save_projection"].is_boolean(), src, ": field 'save_projection' must be true or false");
}

bool vera_supports(const Layer & l) { return dynamic_cast<const Linear *>(&l) != nullptr; }

void vera_shared(AdapterConfig & cfg, const std::vector<LayerPtr> & targets) {
  int64_t max_in = 0, max_out = 0;
  for (const auto & t : targets) {
    auto lin = std::dynamic_pointer_cast<Linear>(t);
    if (!lin) continue;
    max_in = std::max(max_in, lin->in_features());
    max_out = std::max(max_out, lin->out_features());
  }
  auto AB = vera_projections(cfg.fields["r"].get<int64_t>(), max_in, max_out,
                             static_cast<uint64_t>(cfg.fields["projection_prng_key"].get<int64_t>()));
  cfg.shared = {{"vera_A", AB.first}, {"vera_B", AB.second}};
  cfg.shared_persistent = cfg.fields["save_projection"].get<bool>();
}

std::shared_ptr<TunerLayer> vera_inject(const AdapterConfig & cfg, const std::string &, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = std::dynamic_pointer_cast<VeRALinear>(target);
  if (!layer) layer = std::make_shared<VeRALinear>(target);
  const auto & init = cfg.fields["init_weights"];
  layer->add_adapter(adapter, cfg.shared.at("vera_A"), cfg.shared.at("vera_B"), cfg.fields["vera_dropout"].get<double>(),
                     cfg.fields["d_initial"].get<double>(), !(init.is_boolean() && !init.get<bool>()));
  return layer;
}

}  // namespace

TunerMethod vera_method() {
  return TunerMethod{"VERA", "vera_lambda_", &vera_defaults, &vera_validate, &vera_supports, &vera_inject,
                     &DefaultTargets::lora, nullptr, &vera_shared};
}

}  // namespace peft
