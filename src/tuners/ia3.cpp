// IA3 on Linear layers (PEFT §2.5) and the IA3 method entry.
#include "peft/tuners/ia3.h"

#include "peft/error.h"
#include "peft/tuners/registry.h"
#include "peft/util/regex.h"

namespace peft {

IA3Linear::IA3Linear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "IA3Linear needs a Linear base layer");
  l_ = &dict("ia3_l");
}

LinearBase & IA3Linear::linear() const { return static_cast<LinearBase &>(*base_layer_); }
at::Tensor IA3Linear::vector(const std::string & n) const { return l_->get(n); }

void IA3Linear::add_adapter(const std::string & name, bool feedforward, bool init_ones) {
  const int64_t in = linear().in_features(), out = linear().out_features();
  std::vector<int64_t> shape = feedforward ? std::vector<int64_t>{1, in} : std::vector<int64_t>{out, 1};
  at::Tensor l;
  {
    at::NoGradGuard g;
    l = init_ones ? at::ones(shape) : at::randn(shape);
  }
  l_->add_param(name, l);
  feedforward_[name] = feedforward;
  track_adapter(name);
}

void IA3Linear::forget(const std::string & name) { feedforward_.erase(name); }

std::string IA3Linear::adapter_signature(const std::string & n) const { return feedforward_.at(n) ? "ff" : "out"; }

at::Tensor IA3Linear::forward_active(const at::Tensor & x) {
  // vectors of the active adapters multiply; input-side (feed-forward) ones scale x, the others y
  at::Tensor xin = x;
  std::vector<at::Tensor> out_scales;
  for (const auto & n : active_here()) {
    at::Tensor l = vector(n).flatten();
    if (feedforward_.at(n)) xin = (xin * l).to(x.scalar_type());
    else out_scales.push_back(l);
  }
  at::Tensor y = base_layer_->forward(xin);
  for (const auto & l : out_scales) y = (y * l).to(y.scalar_type());
  return y;
}

void IA3Linear::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  at::Tensor l = vector(n);  // (O, 1) scales rows, (1, I) scales columns
  at::Tensor W = linear().dense_weight().to(at::kFloat) * l;
  at::Tensor b;
  const at::Tensor bias = linear().bias_tensor();
  if (!feedforward_.at(n) && bias.defined()) b = bias.to(at::kFloat) * l.flatten();
  if (safe) {
    check_finite(W, "merging adapter '" + n + "'");
    if (b.defined()) check_finite(b, "merging the bias of adapter '" + n + "'");
  }
  linear().store_weight(W);
  if (b.defined()) linear().store_bias(b);
}

void IA3Linear::unmerge_one(const std::string & n) {
  at::NoGradGuard g;
  at::Tensor l = vector(n) + 1e-8;  // inexact, as PEFT
  linear().store_weight(linear().dense_weight().to(at::kFloat) / l);
  const at::Tensor bias = linear().bias_tensor();
  if (!feedforward_.at(n) && bias.defined()) linear().store_bias(bias.to(at::kFloat) / l.flatten());
}

// ---- the method ----

namespace {

nlohmann::json ia3_defaults() {
  return {{"feedforward_modules", nullptr}, {"fan_in_fan_out", false}, {"init_ia3_weights", true},
          {"exclude_modules", nullptr}};
}

void ia3_validate(const AdapterConfig & c, const std::string & src) {
  const auto & f = c.fields;
  PEFT_CHECK(f["init_ia3_weights"].is_boolean(), src, ": field 'init_ia3_weights' must be true or false");
  const auto & ff = f["feedforward_modules"];
  PEFT_CHECK(ff.is_null() || ff.is_string() || ff.is_array(), src, ": field 'feedforward_modules' must be a list or a string");
  if (ff.is_array() && !c.target_list.empty()) {
    for (const auto & m : ff) {
      PEFT_CHECK(m.is_string(), src, ": field 'feedforward_modules' holds a non-string");
      PEFT_CHECK(std::find(c.target_list.begin(), c.target_list.end(), m.get<std::string>()) != c.target_list.end(), src,
                 ": feedforward module '", m.get<std::string>(), "' is not in target_modules");
    }
  }
}

// PEFT: a list entry matches when the module name ends with it (no dot boundary); a string full-matches.
bool is_feedforward(const AdapterConfig & c, const std::string & path) {
  const auto & ff = c.fields["feedforward_modules"];
  if (ff.is_string()) return Regex(ff.get<std::string>()).full_match(path);
  if (!ff.is_array()) return false;
  for (const auto & m : ff) {
    const std::string e = m.get<std::string>();
    if (path.size() >= e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}

bool ia3_supports(const Layer & l) { return dynamic_cast<const Linear *>(&l) != nullptr; }

std::shared_ptr<TunerLayer> ia3_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                       const LayerPtr & target) {
  auto layer = std::dynamic_pointer_cast<IA3Linear>(target);
  if (!layer) layer = std::make_shared<IA3Linear>(target);
  layer->add_adapter(adapter, is_feedforward(cfg, path), cfg.fields["init_ia3_weights"].get<bool>());
  return layer;
}

void ia3_complete(AdapterConfig & cfg, const DefaultTargets * defaults) {
  if (!cfg.fields["feedforward_modules"].is_null() || !defaults) return;
  cfg.fields["feedforward_modules"] = defaults->ia3_feedforward;
}

}  // namespace

TunerMethod ia3_method() {
  return TunerMethod{"IA3", "ia3_", &ia3_defaults, &ia3_validate, &ia3_supports, &ia3_inject, &DefaultTargets::ia3,
                     &ia3_complete};
}

}  // namespace peft
