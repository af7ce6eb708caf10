// VeRA on Linear (PEFT §2.10) and the VERA method entry.
#include "peft/tuners/vera.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>

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

std::shared_ptr<const MethodOptions> vera_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<VeraOptions>();
  o->r = f.integer("r", 1);
  o->prng_key = f.integer("projection_prng_key", std::numeric_limits<int64_t>::min());
  o->save_projection = f.boolean("save_projection");
  o->dropout = f.fraction("vera_dropout");
  o->d_initial = f.number("d_initial");
  PEFT_CHECK(!f.boolean("fan_in_fan_out"), src, ": 'fan_in_fan_out' (Conv1D weights) is not supported yet");
  o->init_default = f.init("init_weights", {"true", "false"}) == "true";
  return o;
}

void vera_shared(AdapterConfig & cfg, const std::vector<LayerPtr> & targets) {
  int64_t max_in = 0, max_out = 0;
  for (const auto & t : targets) {
    auto lin = std::dynamic_pointer_cast<LinearBase>(t);
    if (!lin) continue;
    max_in = std::max(max_in, lin->in_features());
    max_out = std::max(max_out, lin->out_features());
  }
  const auto & o = cfg.opts<VeraOptions>();
  auto AB = vera_projections(o.r, max_in, max_out, static_cast<uint64_t>(o.prng_key));
  cfg.shared = {{"vera_A", AB.first}, {"vera_B", AB.second}};
  cfg.shared_persistent = o.save_projection;
}

std::shared_ptr<TunerLayer> vera_inject(const AdapterConfig & cfg, const std::string &, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = method_layer<VeRALinear>(target);
  const auto & o = cfg.opts<VeraOptions>();
  layer->add_adapter(adapter, cfg.shared.at("vera_A"), cfg.shared.at("vera_B"), o.dropout, o.d_initial, o.init_default);
  return layer;
}

}  // namespace

TunerMethod vera_method() {
  // PEFT names VeRA's bias mode "vera_only" (its parameter prefix is "vera_lambda_")
  return TunerMethod{{"VERA", "vera_lambda_", &vera_defaults, &vera_parse, "vera_only"}, &supports_linear, &vera_inject,
                     &DefaultTargets::lora, nullptr, &vera_shared};
}

}  // namespace peft
