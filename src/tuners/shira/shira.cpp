// SHiRA on Linear layers (PEFT's tuners/shira) and the SHIRA method entry.
#include "tuners/shira/shira.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GeneratorImpl.h>

#include "peft/error.h"
#include "peft/tuners/registry.h"

namespace peft {

ShiraLinear::ShiraLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "SHiRA needs a Linear base layer");
  values_ = &dict("shira_weight");
  indices_ = register_module("shira_indices", std::make_shared<torch::nn::Module>());
}

void ShiraLinear::add_adapter(const std::string & name, const ShiraOptions & o) {
  const int64_t in = linear().in_features(), out = linear().out_features(), n = o.r * (in + out);
  PEFT_CHECK(n <= in * out, "SHiRA: the set rank ", o.r, " results in more shira params than the total number of params ",
             "in the base layer ", in * out, " and this is not allowed");
  at::Tensor idx, values;
  {
    at::NoGradGuard g;
    // PEFT's random_mask: randperm(out * in, generator)[:n] of a fresh torch.Generator (its default seed
    // unless random_seed), the chosen positions then read back row-major (torch.where on the mask)
    const uint64_t seed = o.random_seed ? static_cast<uint64_t>(*o.random_seed) : c10::default_rng_seed_val;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const at::Tensor flat = std::get<0>(at::randperm(out * in, gen, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, n).sort());
    idx = at::stack({at::floor_divide(flat, in), at::remainder(flat, in)}).to(at::kInt);
    values = o.init_zero ? at::zeros({n}) : at::randn({n});
  }
  values_->add_param(name, values);
  indices_->register_module(name, std::make_shared<torch::nn::Module>())->register_buffer("indices", idx);
  index_[name] = idx;  // the same tensor: a load writes into it in place
  set_scaling(name, 1.0);
  track_adapter(name);
}

void ShiraLinear::forget(const std::string & name) {
  if (index_.erase(name)) indices_->unregister_module(name);
}

std::string ShiraLinear::adapter_signature(const std::string & n) const {
  return str("n", values_->get(n).size(0));
}

at::Tensor ShiraLinear::indices(const std::string & n) const { return index_.at(n); }

std::vector<std::pair<std::string, at::Tensor>> ShiraLinear::adapter_buffers(const std::string & n) const {
  return {{"shira_indices." + n, indices(n)}};  // PEFT's key: <module>.shira_indices
}

void ShiraLinear::check_loaded(const std::string & n, const std::string & file) const {
  const at::Tensor idx = indices(n);
  if (idx.numel() == 0) return;
  const at::Tensor rows = idx.select(0, 0), cols = idx.select(0, 1);
  PEFT_CHECK(rows.min().item<int64_t>() >= 0 && rows.max().item<int64_t>() < linear().out_features() &&
                 cols.min().item<int64_t>() >= 0 && cols.max().item<int64_t>() < linear().in_features(),
             file, ": shira_indices of adapter '", n, "' point outside the ", linear().out_features(), "x",
             linear().in_features(), " weight");
}

void ShiraLinear::rescale(const std::string & n, const AdapterConfig &, const std::string &, double factor) {
  set_scaling(n, factor);
}

at::Tensor ShiraLinear::delta_weight(const std::string & n) const {
  const at::Tensor idx = indices(n).to(at::kLong);
  const at::Tensor v = values_->get(n);
  // the sparse COO tensor PEFT adds to the weight, made dense (functional: a compiled graph folds it)
  return at::index_put(at::zeros({linear().out_features(), linear().in_features()}, v.options()),
                       {idx.select(0, 0), idx.select(0, 1)}, v * scaling(n).to(v.scalar_type()), /*accumulate=*/true);
}

at::Tensor ShiraLinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  const auto act = active_here();
  if (act.empty()) return y;
  at::Tensor dW;  // PEFT adds every active adapter's change to one weight
  for (const auto & n : act) dW = dW.defined() ? dW + delta_weight(n) : delta_weight(n);
  return y + at::linear(x.to(dW.scalar_type()), dW).to(y.scalar_type());
}

void ShiraLinear::merge_one(const std::string & n, bool safe) { merge_delta(linear(), delta_weight(n), 1, safe, n); }

void ShiraLinear::unmerge_one(const std::string & n) { merge_delta(linear(), delta_weight(n), -1, false, n); }

// ---- the method ----

namespace {

nlohmann::json shira_defaults() {
  return {{"r", 32},        {"mask_type", "random"}, {"random_seed", nullptr},
          {"fan_in_fan_out", false}, {"init_weights", true}};
}

std::shared_ptr<const MethodOptions> shira_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<ShiraOptions>();
  o->r = f.integer("r", 1);
  const nlohmann::json & mt = f.at("mask_type");
  PEFT_CHECK(mt.is_string() && mt.get<std::string>() == "random", src, ": 'mask_type' ", mt.dump(),
             " is not supported (only \"random\"; a custom mask_fn is Python code and is not saved in the config)");
  if (!f.at("random_seed").is_null()) o->random_seed = f.integer("random_seed", 0);
  o->init_zero = f.boolean("init_weights");
  PEFT_CHECK(!f.boolean("fan_in_fan_out"), src, ": 'fan_in_fan_out' (Conv1D weights) is not supported yet");
  return o;
}

std::shared_ptr<TunerLayer> shira_inject(const AdapterConfig & cfg, const std::string &, const std::string & adapter,
                                         const LayerPtr & target) {
  auto layer = method_layer<ShiraLinear>(target);
  layer->add_adapter(adapter, cfg.opts<ShiraOptions>());
  return layer;
}

}  // namespace

TunerMethod shira_method() {
  return TunerMethod{{"SHIRA", "shira_", &shira_defaults, &shira_parse}, &supports_linear, &shira_inject,
                     &DefaultTargets::lora};
}

}  // namespace peft
