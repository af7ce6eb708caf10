// MiSS on Linear layers (PEFT's tuners/miss) and the MISS method entry.
#include "tuners/miss/miss.h"

#include <cmath>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/tuners/registry.h"

namespace peft {

MissLinear::MissLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "MissLinear needs a Linear base layer");
  block_ = &dict("miss_block");
}

LinearBase & MissLinear::linear() const { return static_cast<LinearBase &>(*base_layer_); }
at::Tensor MissLinear::block(const std::string & n) const { return block_->get(n); }

void MissLinear::add_adapter(const std::string & name, const MissOptions & o) {
  const int64_t in = linear().in_features(), out = linear().out_features(), r = o.r;
  std::vector<int64_t> shape = {r, out};
  if (o.mode == "bat") {
    PEFT_CHECK(in % r == 0 && out % r == 0, "MiSS init_weights='bat': the weight (", out, " x ", in,
               ") must be fully divisible into [", r, ", ", r, "] blocks (as PEFT)");
    shape = {out / r, r, r};
  } else if (o.mode == "mini") {
    PEFT_CHECK(out % o.mini_r == 0, "MiSS init_weights='mini': out_features ", out, " must be divisible by mini_r ",
               o.mini_r, " (as PEFT)");
    shape = {r, o.mini_r};
  }
  at::Tensor b;
  {
    at::NoGradGuard g;
    if (o.zero_init) {
      b = at::zeros(shape);
    } else {  // kaiming_uniform(a=sqrt(5)): bound 1/sqrt(fan_in), fan_in = out (the block's second dimension)
      const double bound = 1.0 / std::sqrt(static_cast<double>(shape[1]));
      b = at::empty(shape).uniform_(-bound, bound);
    }
  }
  block_->add_param(name, b);
  settings_[name] = {o.mode, o.dropout};
  track_adapter(name);
}

void MissLinear::forget(const std::string & name) { settings_.erase(name); }

std::string MissLinear::adapter_signature(const std::string & n) const {
  return settings_.at(n).mode + str("p", settings_.at(n).dropout);
}

at::Tensor MissLinear::delta_weight(const std::string & n) const {
  at::Tensor B = block(n);
  if (settings_.at(n).mode == "mini") B = B.repeat({1, linear().out_features() / B.size(1)});
  return math::miss_delta(B, linear().in_features());
}

at::Tensor MissLinear::forward_active(const at::Tensor & x) {
  const std::vector<std::string> names = active_here();
  bool bat = false;
  for (const auto & n : names) bat = bat || settings_.at(n).mode == "bat";
  if (bat) {
    // PEFT: the weight with each adapter's block transform added in turn, then one linear
    at::Tensor W = linear().dense_weight().to(at::kFloat);
    for (const auto & n : names) {
      if (settings_.at(n).mode == "bat") W = W + math::miss_bat_delta(W, block(n));
      else W = W + delta_weight(n);
    }
    at::Tensor b = linear().bias_tensor();
    if (b.defined()) b = b.to(W.scalar_type());
    return at::linear(x.to(W.scalar_type()), W, b).to(x.scalar_type());
  }
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : names) {
    const double p = settings_.at(n).dropout;
    at::Tensor xin = p > 0 && is_training() ? at::dropout(x, p, true) : x;
    // the block sums of x times B, written as x times the tiled weight: one linear the compile layer folds
    y = y + at::linear(xin.to(at::kFloat), delta_weight(n)).to(y.scalar_type());
  }
  return y;
}

void MissLinear::merge_one(const std::string & n, bool safe) {
  if (settings_.at(n).mode != "bat") {
    merge_delta(linear(), delta_weight(n), 1, safe, n);
    return;
  }
  at::NoGradGuard g;
  const at::Tensor W = linear().dense_weight().to(at::kFloat);
  const at::Tensor merged = W + math::miss_bat_delta(W, block(n));
  store_merged(linear(), merged, at::Tensor(), safe, n);
}

void MissLinear::unmerge_one(const std::string & n) {
  if (settings_.at(n).mode != "bat") {
    merge_delta(linear(), delta_weight(n), -1, false, n);
    return;
  }
  at::NoGradGuard g;
  linear().store_weight(math::miss_bat_unmerge(linear().dense_weight().to(at::kFloat), block(n)));
}

// ---- the method ----

namespace {

nlohmann::json miss_defaults() { return {{"r", 64}, {"mini_r", 1}, {"miss_dropout", 0.0}, {"init_weights", true}}; }

std::shared_ptr<const MethodOptions> miss_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<MissOptions>();
  o->r = f.integer("r", 1);
  o->mini_r = f.integer("mini_r", 1);
  o->dropout = f.fraction("miss_dropout");
  const std::string init = f.init("init_weights", {"true", "false", "bat", "mini"});
  o->mode = init == "bat" || init == "mini" ? init : "miss";
  o->zero_init = init != "false";
  return o;
}

std::shared_ptr<TunerLayer> miss_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = method_layer<MissLinear>(target);
  layer->add_adapter(adapter, cfg.opts<MissOptions>());
  return layer;
}

}  // namespace

TunerMethod miss_method() {
  TunerMethod m{{"MISS", "miss_", &miss_defaults, &miss_parse}, &supports_linear, &miss_inject, &DefaultTargets::lora};
  m.schema.string_targets_refuse_layer_filter = true;
  m.schema.layers_pattern_needs_layers = false;  // (PEFT's MissConfig lacks that check)
  m.bytes = [](const AdapterConfig & cfg, const std::string &, const Layer & plain) -> double {
    const auto * l = dynamic_cast<const LinearBase *>(&plain);  // float32 (r, out), (out / r, r, r) or (r, mini_r)
    if (!l) return 0.0;
    const auto & o = cfg.opts<MissOptions>();
    return 4.0 * static_cast<double>(o.r) * static_cast<double>(o.mode == "mini" ? o.mini_r : l->out_features());
  };
  m.size_fields = {"r", "mini_r"};
  return m;
}

}  // namespace peft
