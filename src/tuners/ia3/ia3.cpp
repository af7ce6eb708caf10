// IA3 on Linear layers (PEFT §2.5) and the IA3 method entry.
#include "tuners/ia3/ia3.h"

#include <algorithm>

#include "peft/error.h"
#include "peft/util/text.h"
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
  store_merged(linear(), W, b, safe, n);
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

std::shared_ptr<const MethodOptions> ia3_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<IA3Options>();
  o->init_ones = f.boolean("init_ia3_weights");
  // fan_in_fan_out: PEFT sets it per layer (true on a Conv1D, false on a Linear, with a warning), so it
  // changes nothing; the Conv1D layer itself shows adapters the Linear layout
  (void)f.boolean("fan_in_fan_out");
  const auto & ff = f.at("feedforward_modules");
  if (ff.is_string()) {
    o->feedforward_regex = ff.get<std::string>();
  } else if (ff.is_array()) {
    for (const auto & m : ff) {
      PEFT_CHECK(m.is_string(), src, ": field 'feedforward_modules' holds a non-string");
      o->feedforward_list.push_back(m.get<std::string>());
    }
    for (const auto & m : o->feedforward_list) {  // PEFT: a subset of a list target_modules
      if (c.target_list.empty()) break;
      PEFT_CHECK(std::find(c.target_list.begin(), c.target_list.end(), m) != c.target_list.end(), src,
                 ": feedforward module '", m, "' is not in target_modules");
    }
  } else {
    PEFT_CHECK(ff.is_null(), src, ": field 'feedforward_modules' must be a list or a string");
  }
  return o;
}

}  // namespace

// PEFT: a list entry matches when the module name ends with it (no dot boundary); a string full-matches.
bool IA3Options::is_feedforward(const std::string & path) const {
  if (feedforward_regex) return Regex(*feedforward_regex).full_match(path);
  for (const auto & e : feedforward_list) {
    if (ends_with(path, e)) return true;
  }
  return false;
}

namespace {

std::shared_ptr<TunerLayer> ia3_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                       const LayerPtr & target) {
  auto layer = method_layer<IA3Linear>(target);
  const auto & o = cfg.opts<IA3Options>();
  layer->add_adapter(adapter, o.is_feedforward(path), o.init_ones);
  return layer;
}

void ia3_complete(AdapterConfig & cfg, const DefaultTargets * defaults) {
  if (!cfg.field("feedforward_modules").is_null() || !defaults) return;
  cfg.set_field("feedforward_modules", defaults->ia3_feedforward);
}

}  // namespace

TunerMethod ia3_method() {
  TunerMethod m{{"IA3", "ia3_", &ia3_defaults, &ia3_parse}, &supports_linear, &ia3_inject, &DefaultTargets::ia3,
                &ia3_complete};
  m.conv1d = true;
  return m;
}

}  // namespace peft
