// AdaLoRA on Linear (PEFT §2.3) and the ADALORA method entry.
#include "peft/tuners/adalora.h"

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"
#include "peft/util/runtime.h"

namespace peft {

AdaLoraLinear::AdaLoraLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "AdaLoRA needs a Linear base layer");
  A_ = &dict("lora_A");
  E_ = &dict("lora_E");
  B_ = &dict("lora_B");
}

void AdaLoraLinear::add_adapter(const std::string & name, int64_t r, int64_t init_r, double alpha, double dropout,
                                bool init_default) {
  const int64_t in = linear().in_features(), out = linear().out_features();
  check_memory_for(static_cast<uint64_t>(r) * static_cast<uint64_t>(in + out + 1) * 4,
                   str("AdaLoRA adapter '", name, "' (r=", r, ")"));
  at::NoGradGuard g;
  if (init_default) {  // A, B ~ N(0, 0.02), E = 0: a no-op at start
    A_->add_param(name, at::normal(0.0, 0.02, {r, in}));
    E_->add_param(name, at::zeros({r, 1}));
    B_->add_param(name, at::normal(0.0, 0.02, {out, r}));
  } else {
    A_->add_param(name, at::randn({r, in}));
    E_->add_param(name, at::randn({r, 1}));
    B_->add_param(name, at::randn({out, r}));
  }
  dropout_[name] = dropout;
  track_adapter(name);
  const double s = alpha > 0 ? alpha : static_cast<double>(r);
  set_scaling(name, s / (static_cast<double>(init_r) + 1e-5));  // ranknum stays init_r, even after pruning
}

void AdaLoraLinear::forget(const std::string & name) { dropout_.erase(name); }

std::string AdaLoraLinear::adapter_signature(const std::string & n) const {
  return str("r", A_->get(n).size(0), ",p", dropout_.at(n));
}

at::Tensor AdaLoraLinear::delta_weight(const std::string & n) const {
  return math::lora_delta(A_->get(n) * E_->get(n), B_->get(n), scaling(n));
}

at::Tensor AdaLoraLinear::forward_active(const at::Tensor & x) {
  at::Tensor y = base_layer_->forward(x);
  for (const auto & n : active_here()) {
    y = ops::lora_add(y, x, A_->get(n) * E_->get(n), B_->get(n), c10::nullopt, scaling(n), dropout_.at(n), is_training());
  }
  return y;
}

void AdaLoraLinear::merge_one(const std::string & n, bool safe) { merge_delta(linear(), delta_weight(n), 1, safe, n); }

void AdaLoraLinear::unmerge_one(const std::string & n) { merge_delta(linear(), delta_weight(n), -1, false, n); }

// ---- the method ----

namespace {

nlohmann::json adalora_defaults() {
  nlohmann::json j = lora_config_defaults();
  j.update({{"init_r", 12},
            {"target_r", 8},
            {"tinit", 0},
            {"tfinal", 0},
            {"deltaT", 1},
            {"beta1", 0.85},
            {"beta2", 0.85},
            {"orth_reg_weight", 0.5},
            {"total_step", nullptr},
            {"rank_pattern", nullptr}});
  return j;
}

std::shared_ptr<const MethodOptions> adalora_parse(const AdapterConfig & c, const std::string & src) {
  auto o = std::make_shared<AdaLoraOptions>();
  {
    AdapterConfig as_lora = c;  // the LoRA fields; AdaLoRA's rank_pattern means something else (below)
    as_lora.fields["rank_pattern"] = nlohmann::json::object();
    o->lora = LoraOptions::read(as_lora, src);
  }
  FieldReader f(c, src);
  f.unsupported("layer_replication", "layer replication (implemented for LORA adapters)");
  PEFT_CHECK(!o->lora.use_dora, src, ": AdaLoRA does not support 'use_dora'");
  o->init_r = f.integer("init_r", 1);
  o->target_r = f.integer("target_r", 1);
  o->delta_t = f.integer("deltaT", 1);
  PEFT_CHECK(f.at("total_step").is_number_integer() && f.at("total_step").get<int64_t>() > 0, src,
             ": field 'total_step' is required and must be > 0");
  o->total_step = f.integer("total_step", 1);
  o->tinit = f.integer("tinit", 0);
  o->tfinal = f.integer("tfinal", 0);
  PEFT_CHECK(o->tinit < o->total_step - o->tfinal, src,
             ": 'tinit' must be < total_step - tfinal (there must be a budgeting phase)");
  for (const char * k : {"beta1", "beta2"}) {
    const double b = f.number(k);
    PEFT_CHECK(b > 0 && b < 1, src, ": field '", k, "' must be in (0, 1)");
  }
  o->beta1 = f.number("beta1");
  o->beta2 = f.number("beta2");
  o->orth_reg_weight = f.number("orth_reg_weight");
  PEFT_CHECK(o->orth_reg_weight >= 0, src, ": field 'orth_reg_weight' must be >= 0");
  // a saved rank_pattern ("<path>.lora_E" -> keep mask) gives each module its kept rank
  const auto & rp = f.at("rank_pattern");
  PEFT_CHECK(rp.is_null() || rp.is_object(), src, ": field 'rank_pattern' must be an object");
  if (rp.is_object()) {
    for (auto it = rp.begin(); it != rp.end(); ++it) {
      PEFT_CHECK(it.value().is_array(), src, ": rank_pattern['", it.key(), "'] must be a list of booleans");
      int64_t kept = 0;
      for (const auto & keep : it.value()) {
        PEFT_CHECK(keep.is_boolean(), src, ": rank_pattern['", it.key(), "'] must be a list of booleans");
        kept += keep.get<bool>() ? 1 : 0;
      }
      o->kept_rank[it.key()] = kept;
    }
  }
  return o;
}

std::shared_ptr<TunerLayer> adalora_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                           const LayerPtr & target) {
  const auto & o = cfg.opts<AdaLoraOptions>();
  auto kept = o.kept_rank.find(path + ".lora_E");
  const int64_t r = kept == o.kept_rank.end() ? o.init_r : kept->second;
  auto layer = method_layer<AdaLoraLinear>(target);
  layer->add_adapter(adapter, r, o.init_r, o.lora.alpha, o.lora.dropout, o.lora.init != "false");
  return layer;
}

// save_pretrained keeps only the rows rank_pattern keeps (upstream's resize_state_dict_by_rank_pattern);
// a tensor that already has the kept rank (an adapter loaded truncated) is written as it is
void adalora_to_file(const AdapterConfig & cfg, std::map<std::string, at::Tensor> & tensors) {
  const auto & rp = cfg.field("rank_pattern");
  if (!rp.is_object()) return;
  for (auto it = rp.begin(); it != rp.end(); ++it) {
    const std::string module = it.key().substr(0, it.key().rfind('.'));  // "<module>.lora_E" -> "<module>"
    std::vector<int64_t> kept;
    for (size_t i = 0; i < it.value().size(); ++i) {
      if (it.value()[i].get<bool>()) kept.push_back(static_cast<int64_t>(i));
    }
    const int64_t full = static_cast<int64_t>(it.value().size()), rank = static_cast<int64_t>(kept.size());
    for (const char * w : {"lora_A", "lora_E", "lora_B"}) {
      auto t = tensors.find("base_model.model." + module + "." + w);
      PEFT_CHECK(t != tensors.end(), "rank_pattern['", it.key(), "'] names no module of this adapter");
      const int64_t dim = std::string(w) == "lora_B" ? 1 : 0, rows = t->second.size(dim);
      if (rows == rank) continue;
      PEFT_CHECK(rows == full, "rank_pattern['", it.key(), "'] has ", full, " entries, ", t->first, " has rank ", rows);
      t->second = t->second.index_select(dim, at::tensor(kept, at::kLong));
    }
  }
}

// float32 A (r, in), E (r, 1), B (out, r) at the rank the module starts with
double adalora_bytes(const AdapterConfig & cfg, const std::string & path, const Layer & plain) {
  const auto * l = dynamic_cast<const LinearBase *>(&plain);
  if (!l) return 0;
  const auto & o = cfg.opts<AdaLoraOptions>();
  auto kept = o.kept_rank.find(path + ".lora_E");
  const double r = static_cast<double>(kept == o.kept_rank.end() ? o.init_r : kept->second);
  return 4 * r * static_cast<double>(l->in_features() + l->out_features() + 1);
}

}  // namespace

TunerMethod adalora_method() {
  TunerMethod m{{"ADALORA", "lora_", &adalora_defaults, &adalora_parse}, &supports_linear, &adalora_inject,
                &DefaultTargets::adalora};
  m.schema.string_targets_refuse_layer_filter = true;  // (PEFT's AdaLoraConfig, a LoraConfig)
  m.to_file = &adalora_to_file;
  m.bytes = &adalora_bytes;
  m.size_fields = {"init_r", "rank_pattern"};
  return m;
}

}  // namespace peft
