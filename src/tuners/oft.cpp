// OFT and BOFT on Linear (PEFT §2.9, §2.4) and their method entries.
#include "peft/tuners/oft.h"

#include <cmath>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"

namespace peft {

namespace {

at::Tensor eye_like(const at::Tensor & S) {
  return at::eye(S.size(-1), S.options()).unsqueeze(0).expand(S.sizes());
}

// (I - S)(I + S)^-1 for each block
at::Tensor cayley(const at::Tensor & S) {
  at::Tensor I = eye_like(S);
  return at::matmul(I - S, at::linalg_inv(I + S));
}

// PEFT's truncated series: T=1: I; T=2: I + 2S; T>=3: I + 2 sum_{k=1}^{max(T,4)-2} S^k + S^{max(T,4)-1}
at::Tensor cayley_neumann(const at::Tensor & S, int64_t T) {
  at::Tensor Q = eye_like(S).clone();
  if (T <= 1) return Q;
  Q = Q + 2.0 * S;
  if (T == 2) return Q;
  const int64_t last = std::max<int64_t>(T, 4) - 1;
  at::Tensor P = S;
  for (int64_t k = 2; k < last; ++k) {
    P = at::matmul(P, S);
    Q = Q + 2.0 * P;
  }
  return Q + at::matmul(P, S);
}

// PEFT adjusts a block size (or count) that does not divide n to the nearest divisor, smaller on ties
int64_t nearest_divisor(int64_t n, int64_t want) {
  if (want >= n) return n;
  for (int64_t d = 0; d < n; ++d) {
    if (want - d >= 1 && n % (want - d) == 0) return want - d;
    if (n % (want + d) == 0) return want + d;
  }
  return n;
}

}  // namespace

// ---- OrthoLinear ----

OrthoLinear::OrthoLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "OFT/BOFT need a Linear base layer");
}

void OrthoLinear::forget(const std::string & name) { settings_.erase(name); }

const OrthoSettings & OrthoLinear::settings(const std::string & name) const {
  auto it = settings_.find(name);
  PEFT_CHECK(it != settings_.end(), "no adapter '", name, "' in this layer");
  return it->second;
}

std::string OrthoLinear::adapter_signature(const std::string & n) const {
  const auto & s = settings(n);
  return str("b", s.block_size, s.neumann ? ",neumann" : ",exact", s.neumann_terms, ",p", s.dropout);
}

at::Tensor OrthoLinear::forward_active(const at::Tensor & x) {
  // rotations of the active adapters in order, then the base linear without bias, the scales, the bias
  at::Tensor xr = x;
  at::Tensor s;
  for (const auto & n : active_here()) {
    at::Tensor Q = blocks(n);
    const OrthoSettings & st = settings(n);
    if (is_training() && st.dropout > 0) {
      // BOFT multiplicative dropout: floor(p * R) random blocks become the identity
      const int64_t drop = static_cast<int64_t>(std::floor(st.dropout * Q.size(0)));
      at::Tensor mask = at::zeros({Q.size(0)}, Q.options());
      mask.index_fill_(0, at::randperm(Q.size(0)).narrow(0, 0, drop), 1.0);
      mask = mask.view({-1, 1, 1});
      Q = Q * (1 - mask) + eye_like(Q) * mask;
    }
    xr = ops::block_rotate(xr, Q);
    at::Tensor sc = scale(n);
    if (sc.defined()) s = s.defined() ? s * sc.flatten() : sc.flatten();
  }
  at::Tensor y = linear().apply_weight(xr);
  if (s.defined()) y = (y * s).to(y.scalar_type());
  at::Tensor bias = linear().bias_tensor();
  if (bias.defined()) y = y + bias;
  return y;
}

void OrthoLinear::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  at::Tensor Q = blocks(n).to(at::kFloat);  // (R, b, b)
  at::Tensor Wm = math::rotate_weight(linear().dense_weight().to(at::kFloat), Q);  // W BD(Q)^T
  at::Tensor sc = scale(n);
  if (sc.defined()) Wm = Wm * sc.to(at::kFloat).view({-1, 1});
  if (safe) check_finite(Wm, "merging adapter '" + n + "'");
  linear().store_weight(Wm);
}

void OrthoLinear::unmerge_one(const std::string & n) {
  at::NoGradGuard g;
  at::Tensor Q = blocks(n).to(at::kFloat);
  at::Tensor W = linear().dense_weight().to(at::kFloat);
  at::Tensor sc = scale(n);
  if (sc.defined()) W = W / sc.to(at::kFloat).view({-1, 1});
  // a true inverse: Neumann blocks are only approximately orthogonal
  linear().store_weight(math::rotate_weight(W, at::linalg_inv(Q)));
}

// ---- OFT ----

OFTLinear::OFTLinear(LayerPtr base) : OrthoLinear(std::move(base)) { R_ = &dict("oft_R"); }

void OFTLinear::add_adapter(const std::string & name, const OrthoSettings & s, bool init_zero) {
  const int64_t b = s.block_size, packed = b * (b - 1) / 2;
  const int64_t rows = s.block_share ? 1 : s.blocks;
  at::NoGradGuard g;
  R_->add_weight(name, init_zero ? at::zeros({rows, packed}) : at::normal(0.0, 0.1, {rows, packed}));
  settings_[name] = s;
  track_adapter(name);
}

at::Tensor OFTLinear::blocks(const std::string & n) const {
  const OrthoSettings & s = settings(n);
  const int64_t b = s.block_size;
  at::Tensor v = R_->get(n);  // (rows, b(b-1)/2): strict upper triangle, row-major
  at::Tensor idx = at::triu_indices(b, b, 1, at::TensorOptions().dtype(at::kLong));
  at::Tensor flat = idx[0] * b + idx[1];
  at::Tensor U = at::zeros({v.size(0), b * b}, v.options()).index_add(1, flat, v).view({v.size(0), b, b});
  at::Tensor S = U - U.transpose(1, 2);
  at::Tensor Q = s.neumann ? cayley_neumann(S, s.neumann_terms) : cayley(S);
  return s.block_share ? Q.expand({s.blocks, b, b}) : Q;
}

// ---- BOFT ----

BOFTLinear::BOFTLinear(LayerPtr base) : OrthoLinear(std::move(base)) {
  R_ = &dict("boft_R");
  s_ = &dict("boft_s");
}

void BOFTLinear::add_adapter(const std::string & name, const OrthoSettings & s, bool init_zero) {
  const int64_t b = s.block_size, out = linear().out_features();
  at::NoGradGuard g;
  R_->add_param(name, init_zero ? at::zeros({1, s.blocks, b, b}) : at::normal(0.0, 0.1, {1, s.blocks, b, b}));
  s_->add_param(name, init_zero ? at::ones({out, 1}) : at::normal(1.0, 0.1, {out, 1}));
  settings_[name] = s;
  track_adapter(name);
}

at::Tensor BOFTLinear::blocks(const std::string & n) const {
  at::Tensor R = R_->get(n)[0];  // one butterfly factor: (R, b, b)
  // the Cayley transform runs in float32 (PEFT notes it must)
  return cayley(0.5 * (R - R.transpose(1, 2)).to(at::kFloat));
}

at::Tensor BOFTLinear::scale(const std::string & n) const { return s_->get(n); }

// ---- the methods ----

namespace {

int64_t int_field(const AdapterConfig & c, const char * k, const std::string & src) {
  PEFT_CHECK(c.fields[k].is_number_integer() && c.fields[k].get<int64_t>() >= 0, src, ": field '", k,
             "' must be a non-negative integer");
  return c.fields[k].get<int64_t>();
}

nlohmann::json oft_defaults() {
  return {{"r", 0},
          {"oft_block_size", 32},
          {"use_cayley_neumann", true},
          {"num_cayley_neumann_terms", 5},
          {"coft", false},
          {"eps", 6e-5},
          {"block_share", false},
          {"module_dropout", 0.0},
          {"bias", "none"},
          {"init_weights", true},
          {"fan_in_fan_out", false},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"exclude_modules", nullptr}};
}

void oft_validate(const AdapterConfig & c, const std::string & src) {
  PEFT_CHECK(c.fields.contains("oft_block_size"), src, ": missing 'oft_block_size' (a pre-0.14 OFT adapter?)");
  const int64_t r = int_field(c, "r", src), b = int_field(c, "oft_block_size", src);
  PEFT_CHECK((r == 0) != (b == 0), src, ": exactly one of 'r' and 'oft_block_size' must be non-zero");
  PEFT_CHECK(int_field(c, "num_cayley_neumann_terms", src) >= 1, src, ": 'num_cayley_neumann_terms' must be >= 1");
  PEFT_CHECK(!c.fields["coft"].get<bool>(), src, ": 'coft' (constrained OFT) is not supported yet");
}

bool linear_only(const Layer & l) { return dynamic_cast<const Linear *>(&l) != nullptr; }

std::shared_ptr<TunerLayer> oft_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                       const LayerPtr & target) {
  auto layer = std::dynamic_pointer_cast<OFTLinear>(target);
  if (!layer) layer = std::make_shared<OFTLinear>(target);
  const int64_t n = layer->linear().in_features();
  OrthoSettings s;
  const int64_t r = cfg.fields["r"].get<int64_t>(), b = cfg.fields["oft_block_size"].get<int64_t>();
  s.block_size = b > 0 ? nearest_divisor(n, b) : n / nearest_divisor(n, r);
  s.blocks = n / s.block_size;
  s.neumann = cfg.fields["use_cayley_neumann"].get<bool>();
  s.neumann_terms = cfg.fields["num_cayley_neumann_terms"].get<int64_t>();
  s.block_share = cfg.fields["block_share"].get<bool>();
  const auto & init = cfg.fields["init_weights"];
  layer->add_adapter(adapter, s, !(init.is_boolean() && !init.get<bool>()));
  return layer;
}

nlohmann::json boft_defaults() {
  return {{"boft_block_size", 4},
          {"boft_block_num", 0},
          {"boft_n_butterfly_factor", 1},
          {"boft_dropout", 0.0},
          {"bias", "none"},
          {"init_weights", true},
          {"fan_in_fan_out", false},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"exclude_modules", nullptr}};
}

void boft_validate(const AdapterConfig & c, const std::string & src) {
  const int64_t b = int_field(c, "boft_block_size", src), nb = int_field(c, "boft_block_num", src);
  PEFT_CHECK((b == 0) != (nb == 0), src, ": exactly one of 'boft_block_size' and 'boft_block_num' must be non-zero");
  PEFT_CHECK(c.fields["boft_n_butterfly_factor"].get<int64_t>() == 1, src,
             ": 'boft_n_butterfly_factor' > 1 is not supported yet (as upstream without its CUDA extension)");
  const double p = c.fields["boft_dropout"].get<double>();
  PEFT_CHECK(p >= 0 && p < 1, src, ": 'boft_dropout' must be in [0, 1)");
}

std::shared_ptr<TunerLayer> boft_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = std::dynamic_pointer_cast<BOFTLinear>(target);
  if (!layer) layer = std::make_shared<BOFTLinear>(target);
  const int64_t n = layer->linear().in_features();
  const int64_t b = cfg.fields["boft_block_size"].get<int64_t>(), nb = cfg.fields["boft_block_num"].get<int64_t>();
  PEFT_CHECK(b > 0 ? n % b == 0 : n % nb == 0, "BOFT at '", path, "': in_features ", n, " is not divisible by the block ",
             b > 0 ? "size " : "count ", b > 0 ? b : nb);
  OrthoSettings s;
  s.block_size = b > 0 ? b : n / nb;
  s.blocks = n / s.block_size;
  s.neumann = false;
  s.dropout = cfg.fields["boft_dropout"].get<double>();
  const auto & init = cfg.fields["init_weights"];
  layer->add_adapter(adapter, s, !(init.is_boolean() && !init.get<bool>()));
  return layer;
}

}  // namespace

TunerMethod oft_method() {
  return TunerMethod{"OFT", "oft_", &oft_defaults, &oft_validate, &linear_only, &oft_inject, &DefaultTargets::lora};
}

TunerMethod boft_method() {
  return TunerMethod{"BOFT", "boft_", &boft_defaults, &boft_validate, &linear_only, &boft_inject, &DefaultTargets::lora};
}

}  // namespace peft
