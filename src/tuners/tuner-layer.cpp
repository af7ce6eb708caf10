#include "peft/tuners/tuner-layer.h"

#include <algorithm>
#include <cmath>

#include "peft/error.h"
#include "peft/tuners/routing.h"

namespace peft {

// ---- AdapterDict ----

namespace {
class WeightHolder : public torch::nn::Module {
 public:
  WeightHolder(at::Tensor w, at::Tensor b) {
    weight = register_parameter("weight", std::move(w));
    if (b.defined()) bias = register_parameter("bias", std::move(b));
  }
  at::Tensor weight, bias;
};
}  // namespace

at::Tensor AdapterDict::add_param(const std::string & adapter, at::Tensor t) {
  at::Tensor p = register_parameter(adapter, std::move(t));
  tensors_[adapter] = p;
  return p;
}

at::Tensor AdapterDict::add_weight(const std::string & adapter, at::Tensor w, at::Tensor b) {
  auto h = register_module(adapter, std::make_shared<WeightHolder>(std::move(w), std::move(b)));
  tensors_[adapter] = h->weight;
  if (h->bias.defined()) biases_[adapter] = h->bias;
  return h->weight;
}

bool AdapterDict::contains(const std::string & adapter) const { return tensors_.count(adapter) != 0; }

at::Tensor AdapterDict::get(const std::string & adapter) const {
  auto it = tensors_.find(adapter);
  PEFT_CHECK(it != tensors_.end(), "no adapter '", adapter, "' here");
  return it->second;
}

at::Tensor AdapterDict::bias(const std::string & adapter) const {
  auto it = biases_.find(adapter);
  return it == biases_.end() ? at::Tensor() : it->second;
}

void AdapterDict::remove(const std::string & adapter) {
  if (parameters_.contains(adapter)) parameters_.erase(adapter);
  if (named_children().contains(adapter)) unregister_module(adapter);
  tensors_.erase(adapter);
  biases_.erase(adapter);
}

// ---- ScaleDict ----

void ScaleDict::set(const std::string & adapter, double value) {
  auto it = values_.find(adapter);
  if (it != values_.end()) {
    at::NoGradGuard g;
    it->second.fill_(value);
    return;
  }
  // one child per adapter holding a buffer "value": children can be unregistered, buffers cannot
  auto holder = register_module(adapter, std::make_shared<torch::nn::Module>());
  values_[adapter] = holder->register_buffer("value", at::full({}, value, at::kFloat));
}

at::Tensor ScaleDict::get(const std::string & adapter) const {
  auto it = values_.find(adapter);
  PEFT_CHECK(it != values_.end(), "no scale for adapter '", adapter, "'");
  return it->second;
}

void ScaleDict::remove(const std::string & adapter) {
  if (values_.erase(adapter)) unregister_module(adapter);
}

// ---- TunerLayer ----

TunerLayer::TunerLayer(LayerPtr base, const std::string & base_name)
    : base_layer_(std::move(base)), state_(std::make_shared<AdapterState>()) {
  register_layer(base_name, base_layer_);
  scales_ = register_module("scaling", std::make_shared<ScaleDict>()).get();
}

void TunerLayer::attach(std::shared_ptr<AdapterState> state) {
  if (state == state_) return;
  state_ = std::move(state);
  state_->touch();
}

AdapterDict & TunerLayer::dict(const std::string & name) {
  for (const auto & c : named_children()) {
    if (c.key() == name) return *std::static_pointer_cast<AdapterDict>(c.value());
  }
  return *register_module(name, std::make_shared<AdapterDict>());
}

void TunerLayer::track_adapter(const std::string & name) {
  names_.insert(name);
  touch();
}

std::vector<std::string> TunerLayer::active_here() const {
  std::vector<std::string> out;
  for (const auto & a : active()) {
    if (has_adapter(a)) out.push_back(a);
  }
  return out;
}

std::string TunerLayer::mixed_batch_refusal(const std::string &) const {
  return str(name(), " has no per-row forward (upstream PEFT takes adapter_names for LoRA and RoAd)");
}

at::Tensor TunerLayer::forward_mixed(const at::Tensor & x) {
  fail(str("mixed-adapter batches cannot run through ", name(), ": ", mixed_batch_refusal("")));
}

at::Tensor TunerLayer::forward(const at::Tensor & x) {
  if (disabled()) {
    if (!merged_.empty()) unmerge_all();  // PEFT: a disabled layer unmerges in its forward
    return base_layer_->forward(x);
  }
  if (routing().active()) {  // mixed-adapter batch: the rows choose, not the active set
    PEFT_CHECK(merged_.empty(), "mixed-adapter batches are not possible while adapters are merged");
    return forward_mixed(x);
  }
  if (!merged_.empty() || active_here().empty()) return base_layer_->forward(x);
  return forward_active(x);
}

bool TunerLayer::is_merged(const std::string & name) const {
  return std::find(merged_.begin(), merged_.end(), name) != merged_.end();
}

void TunerLayer::merge(const std::vector<std::string> & names, bool safe) {
  for (const auto & n : names) {
    if (!has_adapter(n) || is_merged(n)) continue;
    touch();  // before: a merge that fails half-way has still changed weights
    merge_one(n, safe);
    merged_.push_back(n);
  }
}

void TunerLayer::unmerge_all() {
  while (!merged_.empty()) unmerge_last();
}

void TunerLayer::unmerge_last() {
  PEFT_CHECK(!merged_.empty(), "nothing is merged into this layer");
  touch();
  unmerge_one(merged_.back());
  merged_.pop_back();
}

void TunerLayer::restore_merged(std::vector<std::string> merged) {
  merged_ = std::move(merged);
  touch();
}

void TunerLayer::delete_adapter(const std::string & name) {
  PEFT_CHECK(!is_merged(name), "adapter '", name, "' is merged; unmerge it before deleting");
  if (!has_adapter(name)) return;
  for (const auto & c : named_children()) {
    if (auto d = std::dynamic_pointer_cast<AdapterDict>(c.value())) d->remove(name);
  }
  scales_->remove(name);
  forget(name);
  names_.erase(name);
  touch();
}

void TunerLayer::pad_rank(const std::string & name, int64_t rank) {
  PEFT_CHECK(has_adapter(name), "no adapter '", name, "' in this layer");
  PEFT_CHECK(!is_merged(name), "adapter '", name, "' is merged; unmerge it before padding its rank");
  pad_rank_impl(name, rank);
  touch();  // new tensors: graphs captured with the old ones must not be replayed
}

std::vector<std::pair<std::string, at::Tensor>> TunerLayer::adapter_parameters(const std::string & name) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto & c : named_children()) {
    if (c.value() == base_layer_) continue;
    for (const auto & p : c.value()->named_parameters(true)) {
      const std::string path = c.key() + "." + p.key();
      const std::string mid = "." + name + ".";
      const std::string end = "." + name;
      if (path.find(mid) != std::string::npos ||
          (path.size() >= end.size() && path.compare(path.size() - end.size(), end.size(), end) == 0)) {
        out.emplace_back(path, p.value());
      }
    }
  }
  return out;
}

LayerStateKey TunerLayer::state_key(const std::string & path) const {
  LayerStateKey k;
  k.path = path;
  for (const auto & a : active_here()) k.active.emplace_back(a, adapter_signature(a));
  k.merged = merged_;
  return k;
}

void TunerLayer::pad_rank_impl(const std::string &, int64_t) {
  fail(str(name(), " has no rank to pad (hot-swap preparation is for LoRA)"));
}

LayerPtr TunerLayer::clone_layer() const { fail("adapter layers cannot be deep-copied"); }

at::Tensor kaiming_uniform(const std::vector<int64_t> & shape) {
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
  return at::empty(shape).uniform_(-bound, bound);
}

void merge_delta(LinearBase & base, const at::Tensor & delta, double sign, bool safe, const std::string & adapter) {
  at::NoGradGuard g;
  store_merged(base, base.dense_weight().to(at::kFloat) + sign * delta.to(at::kFloat), at::Tensor(), safe, adapter);
}

void store_merged(LinearBase & base, const at::Tensor & weight, const at::Tensor & bias, bool safe,
                  const std::string & adapter) {
  if (safe) {
    check_finite(weight, "merging adapter '" + adapter + "'");
    if (bias.defined()) check_finite(bias, "merging the bias of adapter '" + adapter + "'");
  }
  base.store_weight(weight);
  if (bias.defined()) base.store_bias(bias);
}

void check_finite(const at::Tensor & t, const std::string & what) {
  PEFT_CHECK(at::isfinite(t).all().item<bool>(), "safe merge refused: ", what,
             " would contain non-finite values (NaN or Inf)");
}

}  // namespace peft
