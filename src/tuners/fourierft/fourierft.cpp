// FourierFT on Linear layers (PEFT's tuners/fourierft) and the FOURIERFT method entry.
#include "tuners/fourierft/fourierft.h"

#include <ATen/CPUGeneratorImpl.h>

#include "peft/error.h"
#include "peft/tuners/registry.h"

namespace peft {

FourierFTLinear::FourierFTLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "FourierFTLinear needs a Linear base layer");
  spectrum_ = &dict("fourierft_spectrum");
}

LinearBase & FourierFTLinear::linear() const { return static_cast<LinearBase &>(*base_layer_); }

void FourierFTLinear::add_adapter(const std::string & name, int64_t n, double scaling, int64_t seed, bool init_zero) {
  const int64_t in = linear().in_features(), out = linear().out_features();
  PEFT_CHECK(n > 0 && n <= in * out, "FourierFT: n_frequency ", n, " must be in [1, ", in * out,
             "] (the product of the layer's input and output dimensions)");
  at::Tensor positions, spectrum;
  {
    at::NoGradGuard g;
    // PEFT: torch.randperm(out * in, generator=torch.Generator().manual_seed(seed))[:n]
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
    positions = at::randperm(out * in, gen, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, n);
    spectrum = init_zero ? at::zeros({n}) : at::randn({n});
  }
  spectrum_->add_param(name, spectrum);
  settings_[name] = {at::floor_divide(positions, in), at::remainder(positions, in), scaling, seed};
  track_adapter(name);
}

void FourierFTLinear::forget(const std::string & name) { settings_.erase(name); }

std::string FourierFTLinear::adapter_signature(const std::string & n) const {
  return str("n", settings_.at(n).rows.size(0), "s", settings_.at(n).scaling, "seed", settings_.at(n).seed);
}

at::Tensor FourierFTLinear::delta_weight(const std::string & n) const {
  const Settings & s = settings_.at(n);
  const at::Tensor spectrum = spectrum_->get(n);
  // functional index_put (no in-place write), so that a compiled graph computes the delta once
  const at::Tensor dense = at::index_put(at::zeros({linear().out_features(), linear().in_features()}),
                                         {s.rows, s.cols}, spectrum.to(at::kFloat));
  return (at::real(at::fft_ifft2(dense)) * s.scaling).to(spectrum.scalar_type());
}

at::Tensor FourierFTLinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    const at::Tensor dW = delta_weight(n);
    y = y + at::linear(x.to(dW.scalar_type()), dW).to(y.scalar_type());
  }
  return y;
}

void FourierFTLinear::merge_one(const std::string & n, bool safe) { merge_delta(linear(), delta_weight(n), 1, safe, n); }

void FourierFTLinear::unmerge_one(const std::string & n) { merge_delta(linear(), delta_weight(n), -1, false, n); }

// ---- the method ----

namespace {

nlohmann::json fourierft_defaults() {
  return {{"n_frequency", 1000},   {"scaling", 150.0},           {"random_loc_seed", 777},
          {"fan_in_fan_out", false}, {"init_weights", false},    {"n_frequency_pattern", nlohmann::json::object()}};
}

std::shared_ptr<const MethodOptions> fourierft_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<FourierFTOptions>();
  o->n_frequency = f.integer("n_frequency", 1);
  o->scaling = f.number("scaling");
  o->random_loc_seed = f.integer("random_loc_seed", 0);
  o->init_zero = f.boolean("init_weights");
  PEFT_CHECK(!f.boolean("fan_in_fan_out"), src, ": 'fan_in_fan_out' (Conv1D weights) is not supported yet");
  o->n_frequency_pattern = ModulePattern::parse(c, "n_frequency_pattern", src);
  return o;
}

std::shared_ptr<TunerLayer> fourierft_inject(const AdapterConfig & cfg, const std::string & path,
                                             const std::string & adapter, const LayerPtr & target) {
  auto layer = method_layer<FourierFTLinear>(target);
  const auto & o = cfg.opts<FourierFTOptions>();
  const auto n = static_cast<int64_t>(o.n_frequency_pattern.for_module(path, static_cast<double>(o.n_frequency)));
  layer->add_adapter(adapter, n, o.scaling, o.random_loc_seed, o.init_zero);
  return layer;
}

}  // namespace

TunerMethod fourierft_method() {
  TunerMethod m{{"FOURIERFT", "fourierft_", &fourierft_defaults, &fourierft_parse}, &supports_linear,
                &fourierft_inject, &DefaultTargets::lora};
  m.schema.string_targets_refuse_layer_filter = true;
  return m;
}

}  // namespace peft
