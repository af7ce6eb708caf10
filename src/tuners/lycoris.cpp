// What LoHa and LoKr share: settings, module dropout, rank dropout, merging (PEFT's LycorisLayer).
#include "peft/tuners/lycoris.h"

#include <tuple>

#include "peft/error.h"

namespace peft {

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

LycorisOptions LycorisOptions::read(const AdapterConfig & c, const std::string & src, const std::vector<std::string> & inits) {
  FieldReader f(c, src);
  LycorisOptions o;
  o.r = f.integer("r", 1);
  o.alpha = f.number("alpha");
  o.patterns = RankPatterns::parse(c, src);
  o.rank_dropout = f.fraction("rank_dropout");
  o.module_dropout = f.fraction("module_dropout");
  // use_effective_conv2d concerns Conv2d layers only: on Linear targets PEFT ignores it, and so does this
  f.boolean("use_effective_conv2d");
  o.init = f.init("init_weights", inits);
  return o;
}

LycorisSettings LycorisOptions::for_module(const std::string & path) const {
  LycorisSettings s;
  std::tie(s.r, s.alpha) = patterns.for_module(path, r, alpha);
  s.rank_dropout = rank_dropout;
  s.module_dropout = module_dropout;
  s.rank_dropout_scale = rank_dropout_scale;
  return s;
}

LycorisLinear::LycorisLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "LoHa/LoKr need a Linear base layer");
}

void LycorisLinear::forget(const std::string & name) { settings_.erase(name); }


std::string LycorisLinear::adapter_signature(const std::string & n) const {
  const auto & s = settings(n);
  return str("r", s.r, ",rd", s.rank_dropout, ",md", s.module_dropout);
}

void LycorisLinear::add_settings(const std::string & name, const LycorisSettings & s) {
  settings_[name] = s;
  set_scaling(name, s.alpha / s.r);
  track_adapter(name);
}

void LycorisLinear::rescale(const std::string & n, const AdapterConfig & cfg, const std::string & path, double factor) {
  LycorisSettings s = cfg.opts<LycorisOptions>().for_module(path);
  settings_.at(n).alpha = s.alpha;
  set_scaling(n, factor * s.alpha / settings(n).r);
}

at::Tensor LycorisLinear::delta_weight(const std::string & n) {
  const auto & s = settings(n);
  at::Tensor w = raw_delta(n) * scaling(n);
  if (is_training() && s.rank_dropout > 0) {
    // each output row kept with probability 1 - p, kept rows rescaled by 1 / mean(mask)
    at::Tensor keep = (at::rand({w.size(0)}) > s.rank_dropout).to(w.scalar_type());
    if (s.rank_dropout_scale) keep = keep / keep.mean();
    w = w * keep.unsqueeze(1);
  }
  return w;
}

at::Tensor LycorisLinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    const double md = settings(n).module_dropout;
    // module dropout: in training, skip this adapter with probability p (one draw per layer and call)
    if (is_training() && md > 0 && at::rand({1}).item<double>() <= md) continue;
    at::Tensor d = delta_weight(n);
    y = y + at::linear(x.to(d.scalar_type()), d).to(y.scalar_type());
  }
  return y;
}

void LycorisLinear::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  // the plain delta: no rank dropout, whatever the mode
  merge_delta(linear(), raw_delta(n) * scaling(n), 1, safe, n);
}

void LycorisLinear::unmerge_one(const std::string & n) {
  at::NoGradGuard g;
  merge_delta(linear(), raw_delta(n) * scaling(n), -1, false, n);
}

}  // namespace peft
