// LoRA on Linear and Embedding (PEFT §2.1), DoRA on Linear (§2.2), and the LORA method entry.
#include "peft/tuners/lora.h"

#include <algorithm>
#include <cmath>

#include <tuple>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/lora-loftq.h"
#include "peft/tuners/registry.h"
#include "peft/tuners/routing.h"
#include "peft/tuners/targeting.h"
#include "peft/util/regex.h"
#include "peft/util/runtime.h"

namespace peft {

// ---- config ----

namespace {

nlohmann::json lora_defaults() {
  return {{"r", 8},
          {"bias", "none"},
          {"exclude_modules", nullptr},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"alora_invocation_tokens", nullptr},
          {"arrow_config", nullptr},
          {"kasa_config", nullptr},
          {"lora_ga_config", nullptr},
          {"monteclora_config", nullptr},
          {"qalora_group_size", 16},
          {"use_bdlora", nullptr},
          {"use_qalora", false},
          {"velora_config", nullptr},
          {"lora_alpha", 8},
          {"lora_dropout", 0.0},
          {"use_rslora", false},
          {"use_dora", false},
          {"lora_bias", false},
          {"fan_in_fan_out", false},
          {"init_lora_weights", true},
          {"rank_pattern", nlohmann::json::object()},
          {"alpha_pattern", nlohmann::json::object()},
          {"layer_replication", nullptr},
          {"megatron_config", nullptr},
          {"megatron_core", "megatron.core"},
          {"loftq_config", nlohmann::json::object()},
          {"eva_config", nullptr},
          {"corda_config", nullptr},
          {"target_parameters", nullptr},
          {"trainable_token_indices", nullptr},
          {"ensure_weight_tying", false}};
}

std::shared_ptr<const MethodOptions> lora_parse(const AdapterConfig & c, const std::string & src) {
  return std::make_shared<LoraOptions>(LoraOptions::read(c, src));
}

}  // namespace

nlohmann::json lora_config_defaults() { return lora_defaults(); }

LoraOptions LoraOptions::read(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  LoraOptions o;
  o.r = f.integer("r", 1);
  o.alpha = f.number("lora_alpha");
  o.dropout = f.fraction("lora_dropout");
  o.use_rslora = f.boolean("use_rslora");
  o.use_dora = f.boolean("use_dora");
  o.lora_bias = f.boolean("lora_bias");
  {
    // "pissa_niter_N": PiSSA by randomized SVD with N power iterations (PEFT reads N after "_niter_")
    const auto & v = f.at("init_lora_weights");
    const std::string prefix = "pissa_niter_";
    if (v.is_string() && v.get<std::string>().rfind(prefix, 0) == 0) {
      const std::string n = v.get<std::string>().substr(prefix.size());
      PEFT_CHECK(!n.empty() && n.size() < 6 && n.find_first_not_of("0123456789") == std::string::npos, src,
                 ": init_lora_weights '", v.get<std::string>(), "': expected 'pissa_niter_' and a number of iterations");
      o.init = "pissa_niter";
      o.niter = std::stoll(n);
    } else {
      o.init = f.init("init_lora_weights", {"true", "false", "gaussian", "orthogonal", "pissa", "pissa_niter_N", "olora", "loftq"});
      PEFT_CHECK(o.init != "pissa_niter_N", src, ": init_lora_weights 'pissa_niter_N': N is the number of iterations (e.g. pissa_niter_4)");
    }
  }
  if (o.init == "loftq") {
    // PEFT's LoraConfig: loftq_config must be given; loftq_init: 4 or 8 bits, at least one iteration
    const auto & q = f.at("loftq_config");
    PEFT_CHECK(q.is_object() && !q.empty(), src, ": `loftq_config` must be specified when `init_lora_weights` is 'loftq'");
    for (const char * k : {"loftq_bits", "loftq_iter"}) {
      PEFT_CHECK(q.contains(k) && q[k].is_number_integer(), src, ": loftq_config needs an integer '", k, "'");
    }
    o.loftq_bits = q["loftq_bits"].get<int64_t>();
    o.loftq_iter = q["loftq_iter"].get<int64_t>();
    PEFT_CHECK(o.loftq_bits == 4 || o.loftq_bits == 8, src, ": loftq_config.loftq_bits ", o.loftq_bits,
               ": only nf4 (4) and int8 (8) quantization is supported (as PEFT)");
    PEFT_CHECK(o.loftq_iter > 0, src, ": loftq_config.loftq_iter must be greater than 0");
  }
  if (o.lora_bias) {
    PEFT_CHECK(!o.use_dora, src, ": 'lora_bias' cannot be combined with 'use_dora'");
    PEFT_CHECK(o.init == "true" || o.init == "false", src, ": 'lora_bias' requires init_lora_weights true or false");
  }
  o.patterns = RankPatterns::parse(c, src);
  o.target_parameters = c.target_parameters;
  // fan_in_fan_out: PEFT sets it per layer (true on a Conv1D, false on a Linear, with a warning), so it
  // changes nothing; the Conv1D layer itself shows adapters the Linear layout
  const bool fan_in_fan_out = f.boolean("fan_in_fan_out");
  if (!c.target_parameters.empty()) {
    // PEFT's ParamWrapper refuses what cannot be factored out of the parameter (its messages)
    PEFT_CHECK(o.dropout == 0, src, ": lora.ParamWrapper does not work with lora_dropout != 0 (target_parameters)");
    PEFT_CHECK(!fan_in_fan_out, src, ": lora.ParamWrapper does not work with fan_in_fan_out (target_parameters)");
    PEFT_CHECK(!o.lora_bias, src, ": lora.ParamWrapper does not work with lora_bias=True (target_parameters)");
    PEFT_CHECK(!o.use_dora, src, ": lora.ParamWrapper does not work with use_dora=True (target_parameters)");
    for (const auto & t : c.target_parameters) {
      const bool weight = t == "weight" || (t.size() > 7 && t.compare(t.size() - 7, 7, ".weight") == 0);
      PEFT_CHECK(weight, src, ": target_parameters '", t, "': only the weights of Linear layers are supported here ",
                 "('<module>.weight'; mixture-of-experts parameters and others are not yet)");
    }
  }
  // PEFT options that change what it computes and that are not implemented here: refused by name
  f.unsupported("alora_invocation_tokens", "activated LoRA");
  f.unsupported("arrow_config", "Arrow routing");
  f.unsupported("kasa_config", "KaSA");
  f.unsupported("lora_ga_config", "LoRA-GA initialisation");
  f.unsupported("monteclora_config", "MonteCLoRA");
  f.unsupported("velora_config", "VeLoRA");
  f.unsupported("use_bdlora", "BD-LoRA");
  f.unsupported("use_qalora", "QA-LoRA", false);
  if (!f.at("layer_replication").is_null()) {
    const auto & v = f.at("layer_replication");
    PEFT_CHECK(v.is_array(), src, ": field 'layer_replication' must be a list of [start, end] pairs, got ", v.dump());
    for (const auto & r : v) {
      PEFT_CHECK(r.is_array() && r.size() == 2 && r[0].is_number_integer() && r[1].is_number_integer(), src,
                 ": field 'layer_replication' must be a list of [start, end] pairs of layer indices, got ", r.dump());
      o.layer_replication.emplace_back(r[0].get<int64_t>(), r[1].get<int64_t>());
    }
  }
  f.unsupported("ensure_weight_tying", "tied adapter weights", false);
  f.unsupported("megatron_config", "Megatron parallel layers");
  return o;
}

LoraSettings LoraOptions::for_module(const std::string & path) const {
  // PEFT's _create_and_replace matches rank_pattern / alpha_pattern against current_key: for a parameter
  // target the parameter's full name (targeting's rule: "<module>.weight" equal to an entry or ending
  // with "." + it; a module matched both ways is refused there)
  std::string key = path;
  const std::string weight = path + ".weight";
  for (const auto & t : target_parameters) {
    if (weight == t || (weight.size() > t.size() && weight.compare(weight.size() - t.size() - 1, t.size() + 1, "." + t) == 0)) {
      key = weight;
      break;
    }
  }
  LoraSettings s;
  std::tie(s.r, s.alpha) = patterns.for_module(key, r, alpha);
  s.scaling = use_rslora ? s.alpha / std::sqrt(static_cast<double>(s.r)) : s.alpha / s.r;
  s.dropout = dropout;
  s.use_dora = use_dora;
  s.lora_bias = lora_bias;
  s.init = init;
  s.niter = niter;
  s.loftq_bits = loftq_bits;
  s.loftq_iter = loftq_iter;
  return s;
}

// ---- initialisation helpers (PyTorch's defaults, on the global generator) ----

namespace {

at::Tensor linear_default(int64_t out, int64_t in) { return kaiming_uniform({out, in}); }

std::string settings_signature(const LoraSettings & s) {
  // the scale itself is read live from its tensor, so it is not part of the signature
  return str("r", s.r, ",p", s.dropout, s.use_dora ? ",dora" : "", s.lora_bias ? ",bias" : "");
}

}  // namespace

// ---- LoraLayer ----

void LoraLayer::forget(const std::string & name) { settings_.erase(name); }


std::string LoraLayer::adapter_signature(const std::string & n) const { return settings_signature(settings(n)); }

void LoraLayer::rescale(const std::string & n, const AdapterConfig & cfg, const std::string & path, double factor) {
  LoraSettings s = cfg.opts<LoraOptions>().for_module(path);
  settings_.at(n).alpha = s.alpha;
  settings_.at(n).scaling = s.scaling;
  set_scaling(n, factor * s.scaling);
}

std::string LoraLayer::dora_refusal(const std::string & name) const {
  return settings(name).use_dora ? "PEFT: \"Cannot pass `adapter_names` when DoRA is enabled\"" : "";
}

void LoraLayer::add_settings(const std::string & name, const LoraSettings & s) {
  settings_[name] = s;
  set_scaling(name, s.scaling);
  track_adapter(name);
}

// ---- LoraLinear ----

LoraLinear::LoraLinear(LayerPtr base) : LoraLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "LoraLinear needs a linear base layer");
  dicts_.A = &dict("lora_A");
  dicts_.B = &dict("lora_B");
  dicts_.M = &dict("lora_magnitude_vector");
}

LinearBase & LoraLinear::linear() const { return static_cast<LinearBase &>(*base_layer_); }

void LoraLinear::add_adapter(const std::string & name, const LoraSettings & s) {
  const int64_t in = linear().in_features(), out = linear().out_features();
  const auto opts = linear().dense_options();  // (not dense_weight(): a quantized base would dequantize)
  check_memory_for(static_cast<uint64_t>(s.r) * static_cast<uint64_t>(in + out) * 4,
                   str("LoRA adapter '", name, "' (r=", s.r, ", ", out, "x", in, " layer)"));
  at::Tensor A, B, bB;
  {
    at::NoGradGuard g;
    // PEFT's update_layer first builds lora_A and lora_B as nn.Linear, each drawing its default init from
    // the global generator (weights, then lora_B's bias), whatever init_lora_weights says; the init then
    // draws again or replaces them. The same draws here in that order, so that a seeded generator gives
    // upstream's tensors, and what is drawn next (another layer's init, add_weighted_adapter's DARE masks)
    // starts from upstream's generator state.
    A = linear_default(s.r, in);
    B = linear_default(out, s.r);
    if (s.lora_bias) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(s.r));
      bB = at::empty({out}).uniform_(-bound, bound);
    }
    if (s.init == "false") {
      // nn.Linear's init stays
    } else if (s.init == "orthogonal") {
      // PEFT's orthogonal_init: A and B from the odd / even rows of a random orthogonal (r, r) matrix
      PEFT_CHECK(s.r % 2 == 0, "orthogonal initialization requires an even LoRA rank, got ", s.r);
      at::Tensor Q = std::get<0>(at::linalg_qr(at::randn({s.r, s.r})));
      at::Tensor q_odd = Q.slice(0, 0, s.r, 2), q_even = Q.slice(0, 1, s.r, 2);
      A = at::randn({in, s.r / 2}).mm(q_odd).t().contiguous() / 10.0;
      B = at::randn({s.r / 2, out}).t().mm(q_even).contiguous() / 10.0;
    } else if (s.init == "loftq") {
      // PEFT's loftq_init: the base keeps the quantized-then-dequantized weight, A and B factor what
      // quantization lost (bitsandbytes' formats: include/peft/quant/formats.h)
      PEFT_CHECK(dynamic_cast<const Linear *>(&linear()) != nullptr,
                 "init_lora_weights 'loftq' needs a float base weight: LoftQ quantizes it itself (the base keeps the ",
                 "dequantized weight, which quantizes back exactly). To put a LoftQ adapter on a quantized base, set ",
                 "init_lora_weights to true in its adapter_config.json, as PEFT's LoftQ example does before saving; to start ",
                 "a new adapter on a quantized base from LoftQ's factors, use replace_lora_weights_loftq (peft train --loftq-from)");
      const at::Tensor W = linear().dense_weight();
      auto f = loftq_factors(W, s.r, s.loftq_bits, s.loftq_iter);
      A = f.A;
      B = f.B;
      linear().store_weight(f.base.to(W.scalar_type()));
    } else if (s.init == "pissa" || s.init == "pissa_niter" || s.init == "olora") {
      // PEFT's pissa_init / olora_init: A and B from the base weight's principal directions (exact or
      // randomized SVD) or its QR factors, and the base keeps only the residual W - scaling * B A
      PEFT_CHECK(s.init == "olora" || dynamic_cast<const Linear *>(&linear()) != nullptr, "init_lora_weights '",
                 s.init == "pissa_niter" ? str("pissa_niter_", s.niter) : s.init,
                 "' needs a float base weight (as PEFT: initialise PiSSA unquantized, then quantize the residual model)");
      // (pissa_niter: svd_lowrank's Gaussian is drawn after the nn.Linear draws above, as upstream)
      const at::Tensor W = linear().dense_weight().to(at::kFloat);
      std::tie(A, B) = s.init == "pissa"       ? math::pissa_factors(W, s.r, s.scaling)
                       : s.init == "olora"     ? math::olora_factors(W, s.r)
                                               : math::pissa_lowrank_factors(W, s.r, s.niter, s.scaling);
      linear().store_weight(W - s.scaling * at::mm(B, A));
    } else {
      // reset_lora_parameters: A redrawn (kaiming_uniform_ as nn.Linear, or normal_ with std 1/r), B and its bias zero
      A = s.init == "gaussian" ? at::normal(0.0, 1.0 / s.r, {s.r, in}) : linear_default(s.r, in);
      B = at::zeros({out, s.r});
      if (bB.defined()) bB = at::zeros({out});
    }
  }
  // adapter tensors are float32 by default even on a bf16 base (PEFT's autocast_adapter_dtype)
  const auto aopts = opts.dtype(at::kFloat);
  dicts_.A->add_weight(name, A.to(aopts));
  dicts_.B->add_weight(name, B.to(aopts), bB.defined() ? bB.to(aopts) : bB);
  add_settings(name, s);
  if (s.use_dora) {
    at::NoGradGuard g;
    dicts_.M->add_weight(name, math::dora_weight_norm(linear().dense_weight(), lora_A(name), lora_B(name), scaling(name)));
  }
}

void LoraLinear::forget(const std::string & name) {
  LoraLayer::forget(name);
  dora_norm_cache_.erase(name);
}

at::Tensor LoraLinear::lora_A(const std::string & n) const {
  return dicts_.A->get(n);
}
at::Tensor LoraLinear::lora_B(const std::string & n) const {
  return dicts_.B->get(n);
}
at::Tensor LoraLinear::lora_B_bias(const std::string & n) const {
  return dicts_.B->bias(n);
}
at::Tensor LoraLinear::magnitude(const std::string & n) const {
  return dicts_.M->get(n);
}

at::Tensor LoraLinear::delta_weight(const std::string & n) const {
  return math::lora_delta(lora_A(n), lora_B(n), scaling(n));
}

at::Tensor LoraLinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    const LoraSettings & s = settings(n);
    at::Tensor bB = lora_B_bias(n);
    if (s.use_dora) {
      at::Tensor b = linear().bias_tensor();
      y = ops::dora_add(y, x, linear().dense_weight(), b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt,
                        lora_A(n), lora_B(n), magnitude(n), scaling(n), s.dropout, is_training());
    } else {
      y = ops::lora_add(y, x, lora_A(n), lora_B(n), bB.defined() ? c10::optional<at::Tensor>(bB) : c10::nullopt,
                        scaling(n), s.dropout, is_training());
    }
  }
  return y;
}

at::Tensor LoraLinear::forward_mixed(const at::Tensor & x) {
  // every adapter on the whole batch, kept per row by the routing: one shape for any assignment
  at::Tensor y = base_layer_->forward(x);
  const RowRouting & r = routing();
  std::vector<std::string> names;
  std::vector<int64_t> rows;
  for (const auto & kv : settings_) {
    // DoRA adapters: no row uses them (PeftModel::mixed_rows refuses such rows, as PEFT does)
    if (kv.second.use_dora) continue;
    auto it = r.index->find(kv.first);
    if (it == r.index->end()) continue;
    names.push_back(kv.first);
    rows.push_back(it->second);
  }
  if (names.empty()) return y;
  const auto dtype = lora_A(names.front()).scalar_type();
  const bool one_dtype = std::all_of(names.begin(), names.end(), [&](const std::string & n) {
    return lora_A(n).scalar_type() == dtype && lora_B(n).scalar_type() == dtype;
  });
  if (names.size() == 1 || !one_dtype) {
    for (const auto & n : names)
      y = math::lora_add_rows(y, x, lora_A(n), lora_B(n), lora_B_bias(n), scaling(n), r.mask(n, y.dim()));
    return y;
  }
  // all adapters in two GEMMs (each adapter's weights read once), their rows of the routing selected
  std::vector<at::Tensor> As, Bs, biases, scales;
  for (const auto & n : names) {
    As.push_back(lora_A(n));
    Bs.push_back(lora_B(n));
    biases.push_back(lora_B_bias(n));
    scales.push_back(scaling(n));
  }
  if (std::none_of(biases.begin(), biases.end(), [](const at::Tensor & b) { return b.defined(); })) {
    // each row only its adapters' factors (B transposed: contiguous rows to accumulate), routed by the
    // model's routing tensor itself: a compiled graph computes the transposes and the stacked scalings once
    // and adds no op per layer
    std::vector<at::Tensor> BTs;
    for (const at::Tensor & B : Bs) BTs.push_back(B.t().contiguous());
    return ops::lora_mixed_add(y, x.to(dtype), As, BTs, r.rows->to(dtype), rows, at::stack(scales).to(dtype));
  }
  std::vector<at::Tensor> picked;
  for (int64_t i : rows) picked.push_back(r.rows->select(0, i));
  const at::Tensor routing = at::stack(picked);
  return math::lora_add_mixed(y, x, As, Bs, biases, scales, routing);
}

void LoraLinear::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  const LoraSettings & s = settings(n);
  at::Tensor W = linear().dense_weight();
  at::Tensor merged;
  if (s.use_dora) {
    // PEFT merges DoRA against the current weight (earlier merged adapters included)
    at::Tensor norm = math::dora_weight_norm(W.to(at::kFloat), lora_A(n), lora_B(n), scaling(n));
    dora_norm_cache_[n] = norm.clone();
    merged = math::dora_weight(W, lora_A(n), lora_B(n), magnitude(n), scaling(n), norm);
  } else {
    merged = W.to(at::kFloat) + delta_weight(n);
  }
  at::Tensor bias_new;
  at::Tensor bB = lora_B_bias(n);
  if (bB.defined()) {
    PEFT_CHECK(linear().bias_tensor().defined(), "cannot merge lora_bias of adapter '", n,
               "' into a base layer without bias");
    bias_new = linear().bias_tensor().to(at::kFloat) + bB * scaling(n);
  }
  store_merged(linear(), merged, bias_new, safe, n);
}

void LoraLinear::unmerge_one(const std::string & n) {
  at::NoGradGuard g;
  const LoraSettings & s = settings(n);
  at::Tensor W = linear().dense_weight().to(at::kFloat);
  if (s.use_dora) {
    at::Tensor norm = dora_norm_cache_.at(n);
    linear().store_weight(W / (magnitude(n) / norm).unsqueeze(1) - delta_weight(n));
    dora_norm_cache_.erase(n);
  } else {
    linear().store_weight(W - delta_weight(n));
  }
  at::Tensor bB = lora_B_bias(n);
  if (bB.defined()) linear().store_bias(linear().bias_tensor().to(at::kFloat) - bB * scaling(n));
}

namespace {
// t with dimension `dim` zero-padded to `size`
at::Tensor pad_dim(const at::Tensor & t, int64_t dim, int64_t size) {
  PEFT_CHECK(t.size(dim) <= size, "cannot pad a rank of ", t.size(dim), " down to ", size);
  std::vector<int64_t> shape = t.sizes().vec();
  shape[dim] = size;
  at::Tensor out = at::zeros(shape, t.options());
  out.narrow(dim, 0, t.size(dim)).copy_(t);
  return out;
}
}  // namespace

void LoraLinear::pad_rank_impl(const std::string & n, int64_t rank) {
  at::NoGradGuard g;
  at::Tensor A = pad_dim(lora_A(n), 0, rank), B = pad_dim(lora_B(n), 1, rank), bias = lora_B_bias(n);
  dicts_.A->remove(n);
  dicts_.B->remove(n);
  dicts_.A->add_weight(n, A);
  dicts_.B->add_weight(n, B, bias.defined() ? bias.detach().clone() : bias);
  settings_.at(n).r = rank;  // the scale stays alpha / (original r)
}

// ---- LoraEmbedding ----

LoraEmbedding::LoraEmbedding(LayerPtr base) : LoraLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<Embedding>(base_layer_), "LoraEmbedding needs an Embedding base layer");
  A_ = &dict("lora_embedding_A");
  B_ = &dict("lora_embedding_B");
  M_ = &dict("lora_magnitude_vector");
}

Embedding & LoraEmbedding::embedding() const { return static_cast<Embedding &>(*base_layer_); }

void LoraEmbedding::add_adapter(const std::string & name, const LoraSettings & s) {
  PEFT_CHECK(!s.lora_bias, "lora_bias is not supported on embedding layers");
  PEFT_CHECK(s.init != "loftq", "init_lora_weights 'loftq' on an embedding layer is not supported (PEFT's Embedding ",
             "calls loftq_init without its config and fails); leave embeddings out of target_modules");
  const int64_t V = embedding().weight.size(0), D = embedding().weight.size(1);
  check_memory_for(static_cast<uint64_t>(s.r) * static_cast<uint64_t>(V + D) * 4,
                   str("LoRA adapter '", name, "' (r=", s.r, ", ", V, "x", D, " embedding)"));
  at::Tensor A, B;
  {
    at::NoGradGuard g;
    // PEFT's Embedding.update_layer: randn A, randn B from the global generator; any init but false then
    // resets them (A zero, B normal_: a third draw). The same draws, in that order.
    A = at::randn({s.r, V});
    B = at::randn({D, s.r});
    if (s.init != "false") {
      A = at::zeros({s.r, V});
      B = at::randn({D, s.r});
    }
  }
  A_->add_param(name, A);
  B_->add_param(name, B);
  add_settings(name, s);
  if (s.use_dora) {
    // PEFT's DoraEmbeddingVariant.init: m = the norm of each dimension of E + s (B A)^T over the vocabulary
    at::NoGradGuard g;
    M_->add_weight(name, math::dora_embedding_norm(embedding().weight, A_->get(name), B_->get(name), scaling(name)));
  }
}

void LoraEmbedding::forget(const std::string & name) {
  LoraLayer::forget(name);
  dora_norm_cache_.erase(name);
}

at::Tensor LoraEmbedding::delta_weight(const std::string & n) const {
  return math::lora_embedding_delta(A_->get(n), B_->get(n), scaling(n));
}

at::Tensor LoraEmbedding::forward_active(const at::Tensor & ids) {
  at::Tensor y = base_layer_->forward(ids);
  for (const auto & n : active_here()) {  // dropout is never applied on embeddings (PEFT)
    if (settings(n).use_dora) {
      y = ops::dora_embedding_add(y, ids, embedding().weight, A_->get(n), B_->get(n), magnitude(n), scaling(n),
                                  embedding().padding_idx);
    } else {
      y = ops::lora_embedding_add(y, ids, A_->get(n), B_->get(n), scaling(n), embedding().padding_idx);
    }
  }
  return y;
}

at::Tensor LoraEmbedding::forward_mixed(const at::Tensor & ids) {
  at::Tensor y = base_layer_->forward(ids);
  const RowRouting & r = routing();
  for (const auto & kv : settings_) {
    // DoRA adapters: no row uses them (PeftModel::mixed_rows refuses such rows, as PEFT does)
    if (kv.second.use_dora) continue;
    at::Tensor m = r.mask(kv.first, y.dim());
    if (!m.defined()) continue;
    at::Tensor d = math::lora_embedding_product(ids, A_->get(kv.first), B_->get(kv.first), scaling(kv.first),
                                                embedding().padding_idx);
    y = y + (d * m).to(y.scalar_type());
  }
  return y;
}

void LoraEmbedding::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  at::Tensor E = embedding().weight.to(at::kFloat);
  at::Tensor merged;
  if (settings(n).use_dora) {
    // PEFT merges DoRA against the current weight (earlier merged adapters included) and caches that norm
    at::Tensor norm = math::dora_embedding_norm(E, A_->get(n), B_->get(n), scaling(n));
    merged = math::dora_embedding_weight(E, A_->get(n), B_->get(n), magnitude(n), scaling(n), norm);
    if (safe) check_finite(merged, "merging adapter '" + n + "'");
    dora_norm_cache_[n] = norm.clone();
  } else {
    merged = E + delta_weight(n);
    if (safe) check_finite(merged, "merging adapter '" + n + "'");
  }
  embedding().weight.copy_(merged);
}

void LoraEmbedding::unmerge_one(const std::string & n) {
  at::NoGradGuard g;
  at::Tensor E = embedding().weight.to(at::kFloat);
  if (settings(n).use_dora) {
    embedding().weight.copy_(E / (magnitude(n) / dora_norm_cache_.at(n)).unsqueeze(0) - delta_weight(n));
    dora_norm_cache_.erase(n);
  } else {
    embedding().weight.copy_(E - delta_weight(n));
  }
}

void LoraEmbedding::pad_rank_impl(const std::string & n, int64_t rank) {
  at::NoGradGuard g;
  at::Tensor A = pad_dim(A_->get(n), 0, rank), B = pad_dim(B_->get(n), 1, rank);
  A_->remove(n);
  B_->remove(n);
  A_->add_param(n, A);
  B_->add_param(n, B);
  settings_.at(n).r = rank;
}

// ---- the method ----

namespace {

bool lora_supports(const Layer & l) {
  return dynamic_cast<const LinearBase *>(&l) != nullptr || dynamic_cast<const Embedding *>(&l) != nullptr;
}

std::shared_ptr<TunerLayer> lora_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target) {
  LoraSettings s = cfg.opts<LoraOptions>().for_module(path);
  if (auto existing = std::dynamic_pointer_cast<LoraLinear>(target)) {
    existing->add_adapter(adapter, s);
    return existing;
  }
  if (auto existing = std::dynamic_pointer_cast<LoraEmbedding>(target)) {
    existing->add_adapter(adapter, s);
    return existing;
  }
  if (std::dynamic_pointer_cast<LinearBase>(target)) {
    auto l = std::make_shared<LoraLinear>(target);
    l->add_adapter(adapter, s);
    return l;
  }
  if (std::dynamic_pointer_cast<Embedding>(target)) {
    auto l = std::make_shared<LoraEmbedding>(target);
    l->add_adapter(adapter, s);
    return l;
  }
  fail(str("LoRA cannot adapt module '", path, "' (supported: Linear, Embedding)"));
}

// float32 A (r, in) and B (out, r), DoRA's magnitude and lora_bias (out); on embeddings (r, V) and (D, r)
double lora_bytes(const AdapterConfig & cfg, const std::string & path, const Layer & plain) {
  const LoraSettings s = cfg.opts<LoraOptions>().for_module(path);
  const double r = static_cast<double>(s.r);
  if (const auto * l = dynamic_cast<const LinearBase *>(&plain)) {
    const double in = static_cast<double>(l->in_features()), out = static_cast<double>(l->out_features());
    return 4 * (r * (in + out) + (s.use_dora ? out : 0) + (s.lora_bias ? out : 0));
  }
  if (const auto * e = dynamic_cast<const Embedding *>(&plain)) {
    const double V = static_cast<double>(e->weight.size(0)), D = static_cast<double>(e->weight.size(1));
    return 4 * (r * (V + D) + (s.use_dora ? D : 0));
  }
  return 0;
}

}  // namespace

TunerMethod lora_method() {
  TunerMethod m{{"LORA", "lora_", &lora_defaults, &lora_parse}, &lora_supports, &lora_inject, &DefaultTargets::lora};
  m.schema.string_targets_refuse_layer_filter = true;  // (PEFT's LoraConfig)
  m.conv1d = true;
  m.layer_map = [](const AdapterConfig & cfg) { return cfg.opts<LoraOptions>().layer_replication; };
  m.bytes = &lora_bytes;
  m.size_fields = {"r", "rank_pattern"};
  return m;
}

}  // namespace peft
