// LoHa (PEFT §2.7): dW = scale * (w1_a w1_b) * (w2_a w2_b), a Hadamard product of two rank-r products.
#include "peft/error.h"
#include "peft/tuners/lycoris.h"
#include "peft/tuners/registry.h"
#include "peft/util/runtime.h"

namespace peft {

LoHaLinear::LoHaLinear(LayerPtr base) : LycorisLinear(std::move(base)) {
  w1a_ = &dict("hada_w1_a");
  w1b_ = &dict("hada_w1_b");
  w2a_ = &dict("hada_w2_a");
  w2b_ = &dict("hada_w2_b");
}

void LoHaLinear::add_adapter(const std::string & name, const LycorisSettings & s, const std::string & init) {
  const int64_t in = linear().in_features(), out = linear().out_features();
  check_memory_for(2 * static_cast<uint64_t>(s.r) * static_cast<uint64_t>(in + out) * 4,
                   str("LoHa adapter '", name, "' (r=", s.r, ")"));
  at::NoGradGuard g;
  w1a_->add_param(name, kaiming_uniform({out, s.r}));
  w1b_->add_param(name, kaiming_uniform({s.r, in}));
  w2a_->add_param(name, kaiming_uniform({out, s.r}));
  w2b_->add_param(name, init == "false" ? kaiming_uniform({s.r, in}) : at::zeros({s.r, in}));
  add_settings(name, s);
}

at::Tensor LoHaLinear::raw_delta(const std::string & n) const {
  return at::matmul(w1a_->get(n), w1b_->get(n)) * at::matmul(w2a_->get(n), w2b_->get(n));
}

// ---- the method ----

namespace {

std::shared_ptr<const MethodOptions> loha_parse(const AdapterConfig & c, const std::string & src) {
  return std::make_shared<LycorisOptions>(LycorisOptions::read(c, src, {"true", "false"}));
}

std::shared_ptr<TunerLayer> loha_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = method_layer<LoHaLinear>(target);
  const auto & o = cfg.opts<LycorisOptions>();
  layer->add_adapter(adapter, o.for_module(path), o.init);
  return layer;
}

// float32 w1_a, w2_a (out, r) and w1_b, w2_b (r, in)
double loha_bytes(const AdapterConfig & cfg, const std::string & path, const Layer & plain) {
  const auto * l = dynamic_cast<const LinearBase *>(&plain);
  if (!l) return 0;
  const double r = static_cast<double>(cfg.opts<LycorisOptions>().for_module(path).r);
  return 4 * 2 * r * static_cast<double>(l->in_features() + l->out_features());
}

}  // namespace

TunerMethod loha_method() {
  TunerMethod m{{"LOHA", "hada_", &lycoris_defaults, &loha_parse}, &supports_linear, &loha_inject};
  m.bytes = &loha_bytes;
  m.size_fields = {"r", "rank_pattern"};
  return m;
}

}  // namespace peft
