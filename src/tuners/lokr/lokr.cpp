// LoKr (PEFT §2.8): dW = scale * kron(W1, W2), W1 (out_l, in_m) and W2 (out_k, in_n), each either a full
// matrix or a rank-r product, with (out_l, out_k) and (in_m, in_n) from PEFT's factorization.
#include "peft/error.h"
#include "peft/tuners/lycoris.h"
#include "peft/tuners/registry.h"

namespace peft {

std::pair<int64_t, int64_t> lokr_factorization(int64_t dim, int64_t factor) {
  if (factor > 0 && dim % factor == 0) return {factor, dim / factor};  // not reordered (PEFT quirk)
  if (factor == -1) factor = dim;
  int64_t m = 1, n = dim;
  const int64_t length = m + n;
  while (m < n) {
    int64_t nm = m + 1;
    while (dim % nm != 0) ++nm;
    const int64_t nn = dim / nm;
    if (nm + nn > length || nm > factor) break;
    m = nm;
    n = nn;
  }
  if (m > n) std::swap(m, n);
  return {m, n};
}

LoKrLinear::LoKrLinear(LayerPtr base) : LycorisLinear(std::move(base)) {
  w1_ = &dict("lokr_w1");
  w1a_ = &dict("lokr_w1_a");
  w1b_ = &dict("lokr_w1_b");
  w2_ = &dict("lokr_w2");
  w2a_ = &dict("lokr_w2_a");
  w2b_ = &dict("lokr_w2_b");
}

void LoKrLinear::add_adapter(const std::string & name, const LycorisSettings & s, const std::string & init,
                             bool decompose_both, int64_t decompose_factor) {
  const auto in = lokr_factorization(linear().in_features(), decompose_factor);
  const auto out = lokr_factorization(linear().out_features(), decompose_factor);
  const int64_t out_l = out.first, out_k = out.second, in_m = in.first, in_n = in.second;
  const bool use_w1 = !(decompose_both && s.r < std::max(out_l, in_m) / 2);
  const bool use_w2 = !(s.r < std::max(out_k, in_n) / 2);
  // init "true": the w1 side is zero (a no-op); "lycoris": the w2 side is; "false": nothing is
  const bool zero1 = init == "true", zero2 = init == "lycoris";
  at::NoGradGuard g;
  if (use_w1) {
    w1_->add_param(name, zero1 ? at::zeros({out_l, in_m}) : kaiming_uniform({out_l, in_m}));
  } else {
    w1a_->add_param(name, zero1 ? at::zeros({out_l, s.r}) : kaiming_uniform({out_l, s.r}));
    w1b_->add_param(name, kaiming_uniform({s.r, in_m}));
  }
  if (use_w2) {
    w2_->add_param(name, zero2 ? at::zeros({out_k, in_n}) : kaiming_uniform({out_k, in_n}));
  } else {
    w2a_->add_param(name, kaiming_uniform({out_k, s.r}));
    w2b_->add_param(name, zero2 ? at::zeros({s.r, in_n}) : kaiming_uniform({s.r, in_n}));
  }
  add_settings(name, s);
}

at::Tensor LoKrLinear::raw_delta(const std::string & n) const {
  at::Tensor W1 = w1_->contains(n) ? w1_->get(n) : at::matmul(w1a_->get(n), w1b_->get(n));
  at::Tensor W2 = w2_->contains(n) ? w2_->get(n) : at::matmul(w2a_->get(n), w2b_->get(n));
  return at::kron(W1, W2);
}

// ---- the method ----

namespace {

nlohmann::json lokr_defaults() {
  nlohmann::json j = lycoris_defaults();
  j.update({{"decompose_both", false}, {"decompose_factor", -1}, {"rank_dropout_scale", false}});
  return j;
}

std::shared_ptr<const MethodOptions> lokr_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<LycorisOptions>(LycorisOptions::read(c, src, {"true", "false", "lycoris"}));
  o->rank_dropout_scale = f.boolean("rank_dropout_scale");
  o->decompose_both = f.boolean("decompose_both");
  o->decompose_factor = f.integer("decompose_factor", -1);
  return o;
}

std::shared_ptr<TunerLayer> lokr_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = method_layer<LoKrLinear>(target);
  const auto & o = cfg.opts<LycorisOptions>();
  layer->add_adapter(adapter, o.for_module(path), o.init, o.decompose_both, o.decompose_factor);
  return layer;
}

}  // namespace

TunerMethod lokr_method() {
  return TunerMethod{{"LOKR", "lokr_", &lokr_defaults, &lokr_parse}, &supports_linear, &lokr_inject};
}

}  // namespace peft
