// add_weighted_adapter for LoRA, with PEFT's merge operators (task arithmetic, magnitude pruning, TIES).
#include "peft/tuners/lora-weighted.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

#include "peft/error.h"
#include "peft/peft-model.h"
#include "peft/tuners/lora.h"
#include "tuners/ia3/ia3-weighted.h"

namespace peft {

namespace {

// ---- PEFT's merge operators over stacked task tensors ----

at::Tensor weighted_sum(const at::Tensor & stacked, const at::Tensor & w) {
  std::vector<int64_t> shape(stacked.dim(), 1);
  shape[0] = w.size(0);
  return (stacked * w.view(shape)).sum(0);
}

at::Tensor magnitude_prune_one(const at::Tensor & t, double density) {
  if (density >= 1) return t;
  const int64_t k = static_cast<int64_t>(density * t.numel());
  at::Tensor mask = at::zeros({t.numel()}, t.options());
  if (k > 0) mask.index_fill_(0, std::get<1>(t.abs().reshape({-1}).topk(k)), 1.0);
  return t * mask.view(t.sizes());
}

// dare: each entry kept with probability density, the kept ones divided by density (PEFT's random_pruning)
at::Tensor random_prune_one(const at::Tensor & t, double density, at::Generator & gen) {
  if (density >= 1) return t;
  return t * at::bernoulli(at::full_like(t, density), gen) / density;
}

// The merge operator of a combination type: the svd variants use the operator before the suffix.
std::string operator_of(const std::string & type) {
  if (type == "svd") return "linear";
  const std::string suffix = "_svd";
  if (type.size() > suffix.size() && type.compare(type.size() - suffix.size(), suffix.size(), suffix) == 0)
    return type.substr(0, type.size() - suffix.size());
  return type;
}

at::Tensor merge(const std::vector<at::Tensor> & ts, const at::Tensor & w, const WeightedAdapterOptions & o,
                 at::Generator & gen) {
  const std::string op = operator_of(o.combination_type);
  if (op == "linear") return weighted_sum(at::stack(ts), w);
  const bool dare = op == "dare_linear" || op == "dare_ties";
  std::vector<at::Tensor> pruned;
  for (const auto & t : ts) pruned.push_back(dare ? random_prune_one(t, o.density, gen) : magnitude_prune_one(t, o.density));
  at::Tensor stacked = at::stack(pruned);
  if (op == "magnitude_prune" || op == "dare_linear") return weighted_sum(stacked, w);
  // ties, dare_ties: majority sign per entry on the pruned, unweighted tensors, then the mean of the agreeing ones
  at::Tensor sign = stacked.sign();
  at::Tensor mag = o.majority_sign_method == "frequency" ? sign.sum(0) : stacked.sum(0);
  at::Tensor majority = at::where(mag >= 0, at::ones_like(mag), -at::ones_like(mag));
  at::Tensor agree = (sign == majority).to(stacked.scalar_type());
  std::vector<int64_t> shape(stacked.dim(), 1);
  shape[0] = w.size(0);
  at::Tensor mixed = (stacked * w.view(shape) * agree).sum(0);
  return mixed / agree.sum(0).clamp_min(1.0);
}

struct Pair {
  at::Tensor A, B;  // (R, in) and (out, R) for Linear; (R, V) and (D, R) for Embedding
  at::Tensor scale;
};

Pair sources_of(TunerLayer & layer, const std::string & a) {
  if (auto l = dynamic_cast<LoraLinear *>(&layer)) return {l->lora_A(a), l->lora_B(a), l->scaling(a)};
  auto e = dynamic_cast<LoraEmbedding *>(&layer);
  return {e->lora_embedding_A(a), e->lora_embedding_B(a), e->scaling(a)};
}

// PEFT's get_delta_weight is (V, D) on an embedding and (in, out) on a Conv1D (fan_in_fan_out): the
// transpose of B A (the orientation the *_svd operators work on)
bool layer_is_transposed(TunerLayer & layer) {
  if (dynamic_cast<LoraEmbedding *>(&layer)) return true;
  auto l = dynamic_cast<LoraLinear *>(&layer);
  return l && dynamic_cast<const Conv1D *>(&l->linear()) != nullptr;
}

}  // namespace

void add_weighted_adapter(PeftModel & model, const std::vector<std::string> & adapters,
                          const std::vector<double> & weights, const std::string & name,
                          const WeightedAdapterOptions & opts_in) {
  for (const auto & n : model.adapter_names()) {
    if (n == name) return;  // PEFT: silently a no-op when the name exists
  }
  PEFT_CHECK(!adapters.empty() && adapters.size() == weights.size(), "add_weighted_adapter: ", adapters.size(),
             " adapters and ", weights.size(), " weights");
  const std::vector<std::string> known = model.adapter_names();
  for (const auto & a : adapters) {
    PEFT_CHECK(std::find(known.begin(), known.end(), a) != known.end(), "add_weighted_adapter: no adapter '", a, "'");
  }
  if (model.adapter_config(adapters[0]).peft_type == "IA3") {
    // IA3: PEFT's linear combination of the vectors (no other combination type, no options)
    for (const auto & a : adapters) {
      PEFT_CHECK(model.adapter_config(a).peft_type == "IA3", "add_weighted_adapter: '", a, "' is ",
                 model.adapter_config(a).peft_type, ", '", adapters[0], "' is IA3: one method at a time");
    }
    const WeightedAdapterOptions defaults;
    PEFT_CHECK(opts_in.combination_type == "linear" || opts_in.combination_type == defaults.combination_type,
               "add_weighted_adapter: IA3 adapters combine linearly (combination_type linear), not '",
               opts_in.combination_type, "'");
    PEFT_CHECK(opts_in.density < 0 && opts_in.svd_rank < 0 && opts_in.svd_clamp < 0 && opts_in.seed < 0,
               "add_weighted_adapter: IA3's linear combination takes no density, seed or svd options");
    add_weighted_ia3(model, adapters, weights, name);
    return;
  }
  WeightedAdapterOptions o = opts_in;
  if (adapters.size() == 1) o.combination_type = "linear";  // as PEFT
  const std::string & type = o.combination_type;
  static const std::vector<std::string> kTypes = {"svd",         "cat",      "linear",          "ties",
                                                  "ties_svd",    "dare_linear", "dare_ties",     "dare_linear_svd",
                                                  "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"};
  if (std::find(kTypes.begin(), kTypes.end(), type) == kTypes.end()) {
    std::string all;
    for (const auto & t : kTypes) all += (all.empty() ? "" : ", ") + t;
    fail(str("combination_type '", type, "' is not supported (", all, ")"));
  }
  const std::string op = operator_of(type);
  if (op != "linear" && op != "cat") {
    PEFT_CHECK(o.density >= 0, "combination_type '", type, "' needs a density >= 0");
  }
  PEFT_CHECK(o.majority_sign_method == "total" || o.majority_sign_method == "frequency",
             "majority_sign_method '", o.majority_sign_method, "' is not total or frequency");
  at::Generator gen = o.seed >= 0 ? at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(o.seed))
                                  : at::detail::getDefaultCPUGenerator();
  std::vector<int64_t> ranks;
  for (const auto & a : adapters) {
    const AdapterConfig & c = model.adapter_config(a);
    PEFT_CHECK(c.peft_type == "LORA", "add_weighted_adapter combines LoRA adapters; '", a, "' is ", c.peft_type);
    const auto & o = c.opts<LoraOptions>();
    int64_t r = o.r;
    for (const auto & kv : o.patterns.rank) r = std::max<int64_t>(r, static_cast<int64_t>(kv.second));
    ranks.push_back(r);
  }
  int64_t new_rank = ranks[0];
  if (type == "cat") {
    new_rank = 0;
    for (auto r : ranks) new_rank += r;
  } else if (type == "svd" || op != type) {  // svd and the *_svd variants
    new_rank = o.svd_rank > 0 ? o.svd_rank : *std::max_element(ranks.begin(), ranks.end());
  } else {
    for (auto r : ranks) PEFT_CHECK(r == ranks[0], "combination_type '", type, "' needs adapters of equal rank");
  }
  // the new config: the first source's, with r = lora_alpha = new rank and the targets of all sources
  nlohmann::json j = model.adapter_config(adapters[0]).fields;
  j["r"] = new_rank;
  j["lora_alpha"] = new_rank;
  j["rank_pattern"] = nlohmann::json::object();
  j["alpha_pattern"] = nlohmann::json::object();
  bool all_lists = true;
  std::vector<std::string> targets;
  std::string regex;
  for (const auto & a : adapters) {
    const auto & t = model.adapter_config(a).field("target_modules");
    if (t.is_array()) {
      for (const auto & x : t) {
        if (std::find(targets.begin(), targets.end(), x.get<std::string>()) == targets.end()) targets.push_back(x);
      }
    } else {
      all_lists = false;
      regex += (regex.empty() ? "(" : "|(") + t.get<std::string>() + ")";
    }
  }
  PEFT_CHECK(all_lists || targets.empty(), "add_weighted_adapter: target_modules must be all lists or all strings");
  j["target_modules"] = all_lists ? nlohmann::json(targets) : nlohmann::json(regex);
  model.add_adapter(name, AdapterConfig::from_json(j, "add_weighted_adapter"));

  at::NoGradGuard g;
  for (const auto & entry : model.tuner_layers()) {
    TunerLayer & layer = *entry.second;
    if (!layer.has_adapter(name) || (!dynamic_cast<LoraLinear *>(&layer) && !dynamic_cast<LoraEmbedding *>(&layer))) continue;
    Pair target = sources_of(layer, name);
    target.A.zero_();
    target.B.zero_();
    std::vector<Pair> src;
    std::vector<double> w;
    for (size_t i = 0; i < adapters.size(); ++i) {
      if (!layer.has_adapter(adapters[i])) continue;
      src.push_back(sources_of(layer, adapters[i]));
      w.push_back(weights[i]);
    }
    if (src.empty()) continue;
    if (type == "cat") {
      int64_t row = 0;
      for (size_t i = 0; i < src.size(); ++i) {
        const int64_t r = src[i].A.size(0);
        target.A.narrow(0, row, r).copy_(src[i].A * (w[i] * src[i].scale.item<double>()));
        target.B.narrow(1, row, r).copy_(src[i].B);
        row += r;
      }
    } else if (type == "svd" || op != type) {
      // PEFT's operators see each source's get_delta_weight: (V, D) on an embedding and (in, out) on a
      // Conv1D (fan_in_fan_out), the transpose of B A; DARE's masks are drawn over that layout, so the
      // merge runs on it and its result is transposed back for the SVD, as there
      const bool transposed = layer_is_transposed(layer);
      std::vector<at::Tensor> deltas;
      std::vector<double> c;
      for (size_t i = 0; i < src.size(); ++i) {
        const double s = src[i].scale.item<double>();
        at::Tensor d = at::matmul(src[i].B, src[i].A) * s;  // (out, in) or (D, V)
        deltas.push_back(transposed ? d.t().contiguous() : d);
        c.push_back(w[i] * s);  // PEFT scales once more here
      }
      at::Tensor delta = merge(deltas, at::tensor(c, at::kDouble).to(deltas[0].scalar_type()), o, gen);
      if (transposed) delta = delta.t().contiguous();
      auto usv = at::linalg_svd(delta, o.svd_full_matrices);
      const int64_t r = std::min<int64_t>(new_rank, std::get<1>(usv).size(0));
      at::Tensor U = std::get<0>(usv).narrow(1, 0, r) * std::get<1>(usv).narrow(0, 0, r).unsqueeze(0);
      at::Tensor Vh = std::get<2>(usv).narrow(0, 0, r);
      if (o.svd_clamp >= 0) {
        at::Tensor q = at::quantile(at::cat({U.flatten(), Vh.flatten()}), o.svd_clamp);
        U = U.clamp(-q, q);
        Vh = Vh.clamp(-q, q);
      }
      target.A.narrow(0, 0, r).copy_(Vh);
      target.B.narrow(1, 0, r).copy_(U);
    } else {
      std::vector<at::Tensor> As, Bs;
      std::vector<double> wa, wb;
      for (size_t i = 0; i < src.size(); ++i) {
        const double cval = w[i] * src[i].scale.item<double>();
        wa.push_back((cval < 0 ? -1.0 : 1.0) * std::sqrt(std::abs(cval)));
        wb.push_back(std::sqrt(std::abs(cval)));
        As.push_back(src[i].A);
        Bs.push_back(src[i].B);
      }
      target.A.copy_(merge(As, at::tensor(wa, at::kDouble).to(As[0].scalar_type()), o, gen));
      target.B.copy_(merge(Bs, at::tensor(wb, at::kDouble).to(Bs[0].scalar_type()), o, gen));
    }
  }
}

}  // namespace peft
