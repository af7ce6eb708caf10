// RandLoRA on Linear layers (PEFT's tuners/randlora) and the RANDLORA method entry.
#include "tuners/randlora/randlora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"

namespace peft {

namespace {

int64_t bases_for(int64_t in, int64_t out, int64_t r) { return (std::min(in, out) + r - 1) / r; }  // full rank

}  // namespace

RandLoraLinear::RandLoraLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "RandLoRA needs a Linear base layer");
  lambda_ = &dict("randlora_lambda");
  gamma_ = &dict("randlora_gamma");
  buffers_ = register_module("randlora_shared", std::make_shared<torch::nn::Module>());
}

void RandLoraLinear::add_adapter(const std::string & name, const at::Tensor & A, const at::Tensor & B,
                                 const RandLoraOptions & o) {
  const int64_t in = linear().in_features(), out = linear().out_features(), nb = bases_for(in, out, o.r);
  const int64_t lo = std::min(in, out), hi = std::max(in, out);
  PEFT_CHECK(A.dim() == 3 && B.dim() == 3 && A.size(0) >= o.r && A.size(2) >= lo && B.size(0) >= hi &&
                 B.size(1) >= nb && B.size(2) == A.size(0),
             "RandLoRA bases ", A.sizes(), " / ", B.sizes(), " are too small for a ", out, "x", in, " layer with r=", o.r);
  {
    at::NoGradGuard g;
    // PEFT: lambda randn, gamma ones / max(in, out); init_weights then zeroes lambda and sets gamma to 1 / max(gamma's shape)
    lambda_->add_param(name, o.init_default ? at::zeros({o.r, nb}) : at::randn({o.r, nb}));
    gamma_->add_param(name, at::full({nb, lo}, o.init_default ? 1.0 / static_cast<double>(std::max(nb, lo))
                                                               : 1.0 / static_cast<double>(hi)));
  }
  settings_[name] = {A, B, o.dropout};
  set_scaling(name, o.alpha / static_cast<double>(o.r));
  track_adapter(name);
  auto holder = buffers_->register_module(name, std::make_shared<torch::nn::Module>());
  holder->register_buffer("A", A);
  holder->register_buffer("B", B);
}

void RandLoraLinear::forget(const std::string & name) {
  if (settings_.erase(name)) buffers_->unregister_module(name);
}

std::string RandLoraLinear::adapter_signature(const std::string & n) const {
  return str("p", settings_.at(n).dropout);
}

std::vector<std::pair<std::string, at::Tensor>> RandLoraLinear::adapter_buffers(const std::string & n) const {
  return {{"randlora_A." + n, settings_.at(n).A}, {"randlora_B." + n, settings_.at(n).B}};
}

void RandLoraLinear::rescale(const std::string & n, const AdapterConfig & cfg, const std::string &, double factor) {
  const auto & o = cfg.opts<RandLoraOptions>();
  set_scaling(n, factor * o.alpha / static_cast<double>(o.r));
}

std::pair<at::Tensor, at::Tensor> RandLoraLinear::factors(const std::string & n) const {
  const Settings & s = settings_.at(n);
  return math::randlora_factors(s.A, s.B, lambda_->get(n), gamma_->get(n), linear().in_features(),
                                linear().out_features());
}

at::Tensor RandLoraLinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    const auto PQ = factors(n);
    y = ops::lora_add(y, x, PQ.first, PQ.second, c10::nullopt, scaling(n), settings_.at(n).dropout, is_training());
  }
  return y;
}

void RandLoraLinear::merge_one(const std::string & n, bool safe) {
  const auto PQ = factors(n);
  merge_delta(linear(), at::matmul(PQ.second, PQ.first) * scaling(n), 1, safe, n);
}

void RandLoraLinear::unmerge_one(const std::string & n) {
  const auto PQ = factors(n);
  merge_delta(linear(), at::matmul(PQ.second, PQ.first) * scaling(n), -1, false, n);
}

// ---- the method ----

namespace {

nlohmann::json randlora_defaults() {
  return {{"r", 32},         {"randlora_alpha", 640},    {"randlora_dropout", 0.0}, {"projection_prng_key", 0},
          {"save_projection", true}, {"sparse", false},  {"very_sparse", false},    {"fan_in_fan_out", false},
          {"bias", "none"},  {"init_weights", true},     {"layers_to_transform", nullptr}, {"layers_pattern", nullptr}};
}

std::shared_ptr<const MethodOptions> randlora_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<RandLoraOptions>();
  o->r = f.integer("r", 1);
  o->alpha = f.number("randlora_alpha");
  o->dropout = f.fraction("randlora_dropout");
  o->prng_key = f.integer("projection_prng_key", std::numeric_limits<int64_t>::min());
  o->sparse = f.boolean("sparse");
  o->very_sparse = f.boolean("very_sparse");
  o->init_default = f.boolean("init_weights");
  // PEFT regenerates unsaved bases from the key in bfloat16 with torch's generator: not reproduced here
  PEFT_CHECK(f.boolean("save_projection"), src, ": 'save_projection' false is not supported (the bases must be in the "
                                                "adapter file)");
  PEFT_CHECK(!f.boolean("fan_in_fan_out"), src, ": 'fan_in_fan_out' (Conv1D weights) is not supported yet");
  return o;
}

// New bases as PEFT makes them (its shapes and normalisation; the values are this library's draw: a file
// always carries its bases): A (r, 1, min_dim) kaiming-uniform, B (max_dim, bases, r) from `bases` kaiming
// pieces, each divided by its standard deviation; sparse bases are -1/0/1 with probability 1/(2s) each.
void randlora_shared(AdapterConfig & cfg, const std::vector<LayerPtr> & targets) {
  const auto & o = cfg.opts<RandLoraOptions>();
  int64_t out = 0, in = 0;
  for (const auto & t : targets) {
    auto lin = std::dynamic_pointer_cast<LinearBase>(t);
    if (!lin) continue;
    out = std::max(out, lin->out_features());
    in = std::max(in, lin->in_features());
  }
  const int64_t lo = std::min(in, out), hi = std::max(in, out), nb = bases_for(in, out, o.r);
  at::NoGradGuard g;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(o.prng_key));
  at::Tensor A, B;
  if (o.sparse || o.very_sparse) {
    const double s = o.very_sparse ? std::sqrt(static_cast<double>(lo)) : 3.0;
    auto ternary = [&](at::IntArrayRef shape) {
      const at::Tensor u = at::empty(shape).uniform_(0, 1, gen);
      return (u > 1 - 1 / (2 * s)).to(at::kFloat) - (u < 1 / (2 * s)).to(at::kFloat);
    };
    A = ternary({o.r, 1, lo});
    B = ternary({hi, nb, o.r});
  } else {
    auto kaiming = [&](at::IntArrayRef shape, int64_t fan_in) {  // gain sqrt(2 / (1 + 5)), a = sqrt(5)
      const double bound = std::sqrt(3.0) * std::sqrt(2.0 / 6.0) / std::sqrt(static_cast<double>(fan_in));
      return at::empty(shape).uniform_(-bound, bound, gen);
    };
    A = kaiming({o.r, 1, lo}, lo);
    std::vector<at::Tensor> pieces;
    for (int64_t b = 0; b < nb; ++b) pieces.push_back(kaiming({hi, 1, o.r}, o.r));
    B = at::cat(pieces, 1);
  }
  cfg.shared = {{"randlora_A", A / A.std()}, {"randlora_B", B / B.std()}};
  cfg.shared_persistent = true;
}

std::shared_ptr<TunerLayer> randlora_inject(const AdapterConfig & cfg, const std::string &, const std::string & adapter,
                                            const LayerPtr & target) {
  auto layer = method_layer<RandLoraLinear>(target);
  layer->add_adapter(adapter, cfg.shared.at("randlora_A"), cfg.shared.at("randlora_B"), cfg.opts<RandLoraOptions>());
  return layer;
}

}  // namespace

TunerMethod randlora_method() {
  TunerMethod m{{"RANDLORA", "randlora_", &randlora_defaults, &randlora_parse}, &supports_linear, &randlora_inject,
                &DefaultTargets::lora, nullptr, &randlora_shared};
  m.schema.layers_pattern_needs_layers = false;  // (PEFT's RandLoraConfig has no checks of its layer filter)
  return m;
}

}  // namespace peft
