// DeLoRA (decoupled low-rank adaptation, PEFT's tuners/delora) on Linear layers and the DELORA method entry.
//
// A low-rank update whose size is bounded by a trainable lambda: per rank component i the product of B's
// column i and A's row i is normalised by their norms, and the input columns are scaled by the base
// weight's column norms, taken once when the adapter is created (delora_w_norm, a saved buffer):
//   dW = B diag(lambda / r / (|A_i| |B^i|)) A diag(w_norm),   norms clamped at 1e-4,
//   y  = base(x) + B (s * (A (drop(x) * w_norm))),            s = lambda / r / (|A_i| |B^i|).
// Tensors as PEFT names them: delora_A (r, in), delora_B (out, r), delora_lambda (1) (parameters) and
// delora_w_norm (in) (a buffer). The layer writes the update as LoRA's op with the factor
// diag(s) A diag(w_norm) in place of A (scale 1): the same sum, computed from the weights alone, so a
// compiled inference graph hoists the factor and folds the whole update into the base weight (no op or fold
// rule of its own). Merge/unmerge: W +- dW. Several active adapters add. Mixed-adapter batches are refused
// (PEFT's DeLoRA ignores adapter_names and runs the active adapters on every row). The options and layer
// are private to this file (nothing else needs them).
#include <cmath>

#include "peft/error.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"
#include "peft/tuners/targeting.h"

namespace peft {

/// A DELORA config's options, parsed once.
struct DeloraOptions : MethodOptions {
  int64_t r = 8;
  double lambda = 15;        // delora_lambda: the initial bound of the update
  double dropout = 0;        // module_dropout (PEFT: a Dropout on the adapter's input)
  bool init_weights = true;  // true: A kaiming-uniform, B zeros (no change); false: both kaiming-uniform
  ModulePattern rank_pattern, lambda_pattern;
};

class DeloraLinear : public TunerLayer {
 public:
  explicit DeloraLinear(LayerPtr base) : TunerLayer(std::move(base)) {
    PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "DeloraLinear needs a Linear base layer");
    A_ = &dict("delora_A");
    B_ = &dict("delora_B");
    lambda_ = &dict("delora_lambda");
    // one child per adapter holding its buffer: children can be unregistered, buffers cannot
    norms_ = register_module("delora_w_norm", std::make_shared<torch::nn::Module>());
  }

  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }

  void add_adapter(const std::string & name, int64_t r, double lambda, double dropout, bool init_weights) {
    const int64_t in = linear().in_features(), out = linear().out_features();
    at::Tensor A, B, w_norm;
    {
      at::NoGradGuard g;
      // PEFT: A kaiming-uniform (a = sqrt(5)), then B zeros or kaiming-uniform, from the global generator
      A = kaiming_uniform({r, in});
      B = init_weights ? at::zeros({out, r}) : kaiming_uniform({out, r});
      // the base weight's column norms now (in its dtype, as PEFT, then float32 as PEFT's adapter upcast)
      w_norm = linear().dense_weight().detach().norm(2, {0}).to(at::kFloat).contiguous();
    }
    A_->add_param(name, A);
    B_->add_param(name, B);
    lambda_->add_param(name, at::full({1}, lambda, at::kFloat));
    norms_->register_module(name, std::make_shared<torch::nn::Module>())->register_buffer("w_norm", w_norm);
    w_norm_[name] = w_norm;  // the same tensor: a load writes into it in place
    settings_[name] = {r, dropout};
    set_scaling(name, 1.0);  // LoRA's op scale; DeLoRA's own scale is in the factor
    track_adapter(name);
  }

  std::string adapter_signature(const std::string & n) const override {
    const Setting & s = setting_of(settings_, n);
    return str("r", s.r, ",p", s.dropout);
  }

  /// PEFT's delora_w_norm is a persistent buffer: in the file as <module>.delora_w_norm, never trained.
  std::vector<std::pair<std::string, at::Tensor>> adapter_buffers(const std::string & n) const override {
    return {{"delora_w_norm." + n, w_norm_.at(n)}};
  }

 protected:
  at::Tensor forward_active(const at::Tensor & x) override {
    at::Tensor y = base_layer_->forward(x);
    for (const auto & n : active_here()) {
      y = ops::lora_add(y, x, factor(n), B_->get(n), c10::nullopt, scaling(n), setting_of(settings_, n).dropout,
                        is_training());
    }
    return y;
  }

  void merge_one(const std::string & n, bool safe) override { merge_delta(linear(), delta(n), 1, safe, n); }
  void unmerge_one(const std::string & n) override { merge_delta(linear(), delta(n), -1, false, n); }

  void forget(const std::string & name) override {
    settings_.erase(name);
    if (w_norm_.erase(name)) norms_->unregister_module(name);
  }

 private:
  /// diag(lambda / r / (|A_i| |B^i|)) A diag(w_norm), (r, in): what B multiplies (the update is B times it).
  at::Tensor factor(const std::string & n) const {
    const at::Tensor A = A_->get(n), B = B_->get(n);
    const at::Tensor a = A.norm(2, {1}).clamp_min(1e-4), b = B.norm(2, {0}).clamp_min(1e-4);
    const at::Tensor s = lambda_->get(n) / static_cast<double>(setting_of(settings_, n).r) / (a * b);
    return A * s.unsqueeze(1) * w_norm_.at(n).to(A.scalar_type()).unsqueeze(0);
  }
  at::Tensor delta(const std::string & n) const { return at::matmul(B_->get(n), factor(n)).detach(); }

  struct Setting {
    int64_t r;  // PEFT divides by the configured rank
    double dropout;
  };
  std::map<std::string, Setting> settings_;
  std::map<std::string, at::Tensor> w_norm_;
  AdapterDict *A_, *B_, *lambda_;
  std::shared_ptr<torch::nn::Module> norms_;
};

// ---- the method ----

namespace {

nlohmann::json delora_defaults() {
  return {{"r", 8},
          {"delora_lambda", 15},
          {"module_dropout", 0.0},
          {"exclude_modules", nullptr},
          {"bias", "none"},
          {"init_weights", true},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"rank_pattern", nlohmann::json::object()},
          {"lambda_pattern", nlohmann::json::object()}};
}

std::shared_ptr<const MethodOptions> delora_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<DeloraOptions>();
  o->r = f.integer("r", 1);
  o->lambda = f.number("delora_lambda");
  o->dropout = f.number("module_dropout");
  PEFT_CHECK(o->dropout >= 0 && o->dropout <= 1, src, ": field 'module_dropout' must be in [0, 1], got ", o->dropout);
  o->init_weights = f.boolean("init_weights");
  o->rank_pattern = ModulePattern::parse(c, "rank_pattern", src);
  o->lambda_pattern = ModulePattern::parse(c, "lambda_pattern", src);
  // PEFT: a rank from rank_pattern must be a positive integer too (its layer refuses it when created)
  for (const auto & kv : c.field("rank_pattern").items()) {
    PEFT_CHECK(kv.value().is_number_integer() && kv.value().get<int64_t>() > 0, src, ": rank_pattern['", kv.key(),
               "'] must be a positive integer, got ", kv.value().dump());
  }
  // fields other methods have and PEFT's DeloraConfig does not: PEFT drops them when it loads the file, here
  // they would add adapted layers
  for (const char * k : {"target_parameters", "trainable_token_indices"}) {
    PEFT_CHECK(c.field(k).is_null(), src, ": field '", k, "' is not a field of PEFT's DeloraConfig (set to ",
               c.field(k).dump(), ")");
  }
  return o;
}

std::shared_ptr<TunerLayer> delora_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                          const LayerPtr & target) {
  const auto & o = cfg.opts<DeloraOptions>();
  // PEFT matches rank_pattern / lambda_pattern against the module's full name
  const auto r = static_cast<int64_t>(o.rank_pattern.for_module(path, static_cast<double>(o.r)));
  const double lambda = o.lambda_pattern.for_module(path, o.lambda);
  auto layer = method_layer<DeloraLinear>(target);
  layer->add_adapter(adapter, r, lambda, o.dropout, o.init_weights);
  return layer;
}

}  // namespace

TunerMethod delora_method() {
  TunerMethod m{{"DELORA", "delora_", &delora_defaults, &delora_parse}, &supports_linear, &delora_inject,
                &DefaultTargets::lora};
  // PEFT's DeloraConfig refuses layers_to_transform beside a string target_modules (and layers_pattern
  // without layers_to_transform, the default)
  m.schema.string_targets_refuse_layer_filter = true;
  m.bytes = [](const AdapterConfig & cfg, const std::string & path, const Layer & plain) -> double {
    const auto * l = dynamic_cast<const LinearBase *>(&plain);  // float32 A (r, in), B (out, r), lambda, w_norm (in)
    if (!l) return 0.0;
    const auto & o = cfg.opts<DeloraOptions>();
    const double r = o.rank_pattern.for_module(path, static_cast<double>(o.r));
    const double in = static_cast<double>(l->in_features()), out = static_cast<double>(l->out_features());
    return 4.0 * (r * (in + out) + 1.0 + in);
  };
  m.size_fields = {"r", "rank_pattern"};
  return m;
}

}  // namespace peft
