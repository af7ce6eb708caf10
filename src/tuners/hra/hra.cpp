// HRA on Linear layers (PEFT's tuners/hra) and the HRA method entry.
#include "tuners/hra/hra.h"

#include <cmath>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/tuners/registry.h"

namespace peft {

HRALinear::HRALinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "HRALinear needs a Linear base layer");
  u_ = &dict("hra_u");
}

LinearBase & HRALinear::linear() const { return static_cast<LinearBase &>(*base_layer_); }
at::Tensor HRALinear::u(const std::string & n) const { return u_->get(n); }

void HRALinear::add_adapter(const std::string & name, const HRAOptions & o) {
  const int64_t in = linear().in_features();
  at::Tensor u;
  {
    at::NoGradGuard g;
    // PEFT: kaiming-uniform columns; with init_weights and an even r each column twice, so that the
    // reflections cancel in pairs and the adapter starts as the identity
    const int64_t cols = o.init_weights && o.r % 2 == 0 ? o.r / 2 : o.r;
    const double bound = 1.0 / std::sqrt(static_cast<double>(cols));  // kaiming_uniform(a=sqrt(5)), fan_in = cols
    u = at::empty({in, cols}).uniform_(-bound, bound);
    if (cols != o.r) u = u.repeat_interleave(2, 1);
  }
  u_->add_param(name, u);
  apply_gs_[name] = o.apply_gs;
  track_adapter(name);
}

void HRALinear::forget(const std::string & name) { apply_gs_.erase(name); }

std::string HRALinear::adapter_signature(const std::string & n) const {
  return "r" + std::to_string(u(n).size(1)) + (apply_gs_.at(n) ? "gs" : "");
}

at::Tensor HRALinear::forward_active(const at::Tensor & x) {
  at::Tensor H;  // the active adapters' rotations, multiplied in order
  for (const auto & n : active_here()) {
    at::Tensor R = math::hra_rotation(u(n), apply_gs_.at(n), /*reverse=*/false);
    H = H.defined() ? at::mm(H, R) : R;
  }
  if (!H.defined()) return base_layer_->forward(x);
  const at::Tensor W = at::mm(linear().dense_weight().to(H.scalar_type()), H);
  at::Tensor b = linear().bias_tensor();
  if (b.defined()) b = b.to(W.scalar_type());
  return at::linear(x.to(W.scalar_type()), W, b).to(x.scalar_type());
}

void HRALinear::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  const at::Tensor R = math::hra_rotation(u(n), apply_gs_.at(n), false);
  const at::Tensor W = at::mm(linear().dense_weight().to(R.scalar_type()), R);
  store_merged(linear(), W, at::Tensor(), safe, n);
}

void HRALinear::unmerge_one(const std::string & n) {
  at::NoGradGuard g;
  const at::Tensor R = math::hra_rotation(u(n), apply_gs_.at(n), /*reverse=*/true);
  linear().store_weight(at::mm(linear().dense_weight().to(R.scalar_type()), R));
}

// ---- the method ----

namespace {

nlohmann::json hra_defaults() { return {{"r", 8}, {"apply_GS", false}, {"init_weights", true}}; }

std::shared_ptr<const MethodOptions> hra_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<HRAOptions>();
  o->r = f.integer("r", 1);
  o->apply_gs = f.boolean("apply_GS");
  o->init_weights = f.boolean("init_weights");
  return o;
}

std::shared_ptr<TunerLayer> hra_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                       const LayerPtr & target) {
  auto layer = method_layer<HRALinear>(target);
  layer->add_adapter(adapter, cfg.opts<HRAOptions>());
  return layer;
}

}  // namespace

TunerMethod hra_method() {
  TunerMethod m{{"HRA", "hra_", &hra_defaults, &hra_parse}, &supports_linear, &hra_inject, &DefaultTargets::lora};
  m.schema.string_targets_refuse_layer_filter = true;
  m.bytes = [](const AdapterConfig & cfg, const std::string &, const Layer & plain) -> double {
    const auto * l = dynamic_cast<const LinearBase *>(&plain);  // float32 u (in, r)
    return l ? 4.0 * static_cast<double>(cfg.opts<HRAOptions>().r) * static_cast<double>(l->in_features()) : 0.0;
  };
  m.size_fields = {"r"};
  return m;
}

}  // namespace peft
