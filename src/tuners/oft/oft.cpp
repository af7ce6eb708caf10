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


std::string OrthoLinear::adapter_signature(const std::string & n) const {
  const auto & s = settings(n);
  return str("b", s.block_size, s.neumann ? ",neumann" : ",exact", s.neumann_terms, ",p", s.dropout, ",f", s.factors);
}

at::Tensor OrthoLinear::forward_active(const at::Tensor & x) {
  // rotations of the active adapters in order, then the base linear without bias, the scales, the bias
  at::Tensor xr = x;
  at::Tensor s;
  for (const auto & n : active_here()) {
    at::Tensor Q = is_training() ? training_blocks(n) : blocks(n);
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

at::Tensor OrthoLinear::training_blocks(const std::string & n) const {
  at::Tensor Q = blocks(n);
  const OrthoSettings & st = settings(n);
  if (st.dropout > 0 && !st.block_share) Q = drop_blocks(Q, st.dropout);  // (PEFT skips a shared block)
  return Q;
}

at::Tensor OrthoLinear::drop_blocks(const at::Tensor & Q, double p) {
  // BOFT multiplicative dropout: floor(p * R) random blocks of Q (R, b, b) become the identity
  const int64_t drop = static_cast<int64_t>(std::floor(p * Q.size(0)));
  at::Tensor mask = at::zeros({Q.size(0)}, Q.options());
  mask.index_fill_(0, at::randperm(Q.size(0)).narrow(0, 0, drop), 1.0);
  mask = mask.view({-1, 1, 1});
  return Q * (1 - mask) + eye_like(Q) * mask;
}

void OrthoLinear::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  at::Tensor Q = blocks(n).to(at::kFloat);  // (R, b, b)
  at::Tensor Wm = math::rotate_weight(linear().dense_weight().to(at::kFloat), Q);  // W BD(Q)^T
  at::Tensor sc = scale(n);
  if (sc.defined()) Wm = Wm * sc.to(at::kFloat).view({-1, 1});
  store_merged(linear(), Wm, at::Tensor(), safe, n);
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
  if (s.coft) {
    // constrained OFT: each block's skew matrix is kept within a Frobenius ball of radius eps / sqrt(rows).
    // PEFT projects oft_R in place (no grad) before each use; here the value is the projected one and the
    // gradient passes straight through, which is what PEFT's gradient is
    at::Tensor proj;
    {
      at::NoGradGuard g;
      const double eps = s.eps / std::sqrt(static_cast<double>(v.size(0)));
      at::Tensor norm = at::linalg_norm(S, "fro", {1, 2}, true);
      proj = at::where(norm <= eps, S, eps * (S / norm));
    }
    S = S + (proj - S).detach();
  }
  at::Tensor Q = s.neumann ? cayley_neumann(S, s.neumann_terms) : cayley(S);
  return s.block_share ? Q.expand({s.blocks, b, b}) : Q;
}

// ---- BOFT ----

BOFTLinear::BOFTLinear(LayerPtr base) : OrthoLinear(std::move(base)) {
  R_ = &dict("boft_R");
  s_ = &dict("boft_s");
}

void BOFTLinear::add_adapter(const std::string & name, const OrthoSettings & s, bool init_zero) {
  const int64_t b = s.block_size, out = linear().out_features(), N = s.factors;
  at::NoGradGuard g;
  R_->add_param(name, init_zero ? at::zeros({N, s.blocks, b, b}) : at::normal(0.0, 0.1, {N, s.blocks, b, b}));
  s_->add_param(name, init_zero ? at::ones({out, 1}) : at::normal(1.0, 0.1, {out, 1}));
  settings_[name] = s;
  track_adapter(name);
}

at::Tensor BOFTLinear::factor_blocks(const std::string & n) const {
  at::Tensor R = R_->get(n);  // (N, D, b, b)
  // the Cayley transform runs in float32 (PEFT notes it must)
  const at::Tensor S = 0.5 * (R - R.transpose(2, 3)).to(at::kFloat);
  return cayley(S.flatten(0, 1)).view(S.sizes());
}

namespace {

// x @ P_i and x @ P_i^T for butterfly factor i (PEFT's block_butterfly_perm): within each of the D / 2^i
// groups of 2^(i+1) chunks of b/2 features, P_i^T takes the even chunks first, then the odd ones; both are
// reshapes and transposes, so no index tensor enters a graph. Factor 0 is the identity.
at::Tensor butterfly(const at::Tensor & x, int64_t i, int64_t D, int64_t b, bool inverse) {
  if (i == 0) return x;
  const int64_t half = int64_t(1) << i, groups = D >> i, r = b / 2;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<int64_t> v = shape;
  v.insert(v.end(), {groups, inverse ? 2 : half, inverse ? half : 2, r});
  return x.reshape(v).transpose(-3, -2).reshape(x.sizes());
}

}  // namespace

at::Tensor BOFTLinear::chain(const at::Tensor & Qs) const {
  // PEFT's rotation M = M_{N-1} ... M_0 with M_i = P_i BD(Q_i) P_i^T, used as x @ M: formed as the rows of
  // I @ M, one (1, n, n) block, so that the forward, merging and the compiled fold treat it as OFT's blocks
  const int64_t N = Qs.size(0), D = Qs.size(1), b = Qs.size(2), n = D * b;
  at::Tensor X = at::eye(n, Qs.options());
  for (int64_t i = N - 1; i >= 0; --i) {
    X = butterfly(X, i, D, b, /*inverse=*/true);   // X @ P_i
    X = ops::block_rotate(X, Qs[i]);               // @ BD(Q_i)
    X = butterfly(X, i, D, b, /*inverse=*/false);  // @ P_i^T
  }
  return X.unsqueeze(0);
}

at::Tensor BOFTLinear::blocks(const std::string & n) const {
  at::Tensor Qs = factor_blocks(n);
  return Qs.size(0) == 1 ? Qs[0] : chain(Qs);
}

at::Tensor BOFTLinear::training_blocks(const std::string & n) const {
  const OrthoSettings & st = settings(n);
  at::Tensor Qs = factor_blocks(n);
  if (st.dropout > 0) {
    // PEFT's MultiplicativeDropoutLayer: blocks of one random factor become the identity
    const int64_t f = Qs.size(0) == 1 ? 0 : at::randint(Qs.size(0), {1}, at::kLong).item<int64_t>();
    std::vector<at::Tensor> parts = Qs.unbind(0);
    parts[f] = drop_blocks(parts[f], st.dropout);
    Qs = at::stack(parts);
  }
  return Qs.size(0) == 1 ? Qs[0] : chain(Qs);
}

at::Tensor BOFTLinear::scale(const std::string & n) const { return s_->get(n); }

// ---- the methods ----

namespace {

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

std::shared_ptr<const MethodOptions> oft_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  PEFT_CHECK(c.fields.contains("oft_block_size"), src, ": missing 'oft_block_size' (a pre-0.14 OFT adapter?)");
  auto o = std::make_shared<OFTOptions>();
  o->r = f.integer("r", 0);
  o->block_size = f.integer("oft_block_size", 0);
  PEFT_CHECK((o->r == 0) != (o->block_size == 0), src, ": exactly one of 'r' and 'oft_block_size' must be non-zero");
  o->neumann = f.boolean("use_cayley_neumann");
  o->neumann_terms = f.integer("num_cayley_neumann_terms", 1);
  o->block_share = f.boolean("block_share");
  o->module_dropout = f.fraction("module_dropout");
  o->coft = f.boolean("coft");
  o->eps = f.number("eps");
  // PEFT's COFT also rewrites the stored oft_R at every forward, which changes later optimizer steps
  PEFT_CHECK(!o->coft || c.inference_mode, src, ": training with 'coft' (constrained OFT) is not supported yet; "
                                                "coft adapters load for inference");
  PEFT_CHECK(!f.boolean("fan_in_fan_out"), src, ": 'fan_in_fan_out' (Conv1D weights) is not supported yet");
  o->init_zero = f.init("init_weights", {"true", "false"}) == "true";
  return o;
}

bool linear_only(const Layer & l) { return dynamic_cast<const LinearBase *>(&l) != nullptr; }

std::shared_ptr<TunerLayer> oft_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                       const LayerPtr & target) {
  auto layer = method_layer<OFTLinear>(target);
  const auto & o = cfg.opts<OFTOptions>();
  const int64_t n = layer->linear().in_features();
  OrthoSettings s;
  s.block_size = o.block_size > 0 ? nearest_divisor(n, o.block_size) : n / nearest_divisor(n, o.r);
  s.blocks = n / s.block_size;
  s.neumann = o.neumann;
  s.neumann_terms = o.neumann_terms;
  s.block_share = o.block_share;
  s.coft = o.coft;
  s.eps = o.eps;
  // module_dropout: PEFT builds OFT's multiplicative dropout layer but its forward never calls it, so it
  // changes nothing, here either
  layer->add_adapter(adapter, s, o.init_zero);
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

std::shared_ptr<const MethodOptions> boft_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<BOFTOptions>();
  o->block_size = f.integer("boft_block_size", 0);
  o->block_num = f.integer("boft_block_num", 0);
  PEFT_CHECK((o->block_size == 0) != (o->block_num == 0), src,
             ": exactly one of 'boft_block_size' and 'boft_block_num' must be non-zero");
  o->factors = f.integer("boft_n_butterfly_factor", 1);  // (at least 1; what fits is checked per layer)
  o->dropout = f.fraction("boft_dropout");
  PEFT_CHECK(!f.boolean("fan_in_fan_out"), src, ": 'fan_in_fan_out' (Conv1D weights) is not supported yet");
  o->init_zero = f.init("init_weights", {"true", "false"}) == "true";
  return o;
}

std::shared_ptr<TunerLayer> boft_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = method_layer<BOFTLinear>(target);
  const auto & o = cfg.opts<BOFTOptions>();
  const int64_t n = layer->linear().in_features();
  const int64_t b = o.block_size, nb = o.block_num, extra = o.factors - 1;  // PEFT's checks, in its order
  PEFT_CHECK(extra >= 0, "BOFT: boft_n_butterfly_factor ", o.factors, " must be a positive integer");
  if (b == 0 && extra > 0) {
    PEFT_CHECK(extra <= static_cast<int64_t>(std::floor(std::log2(static_cast<double>(nb)))) && nb % (int64_t(1) << extra) == 0,
               "BOFT at '", path, "': boft_n_butterfly_factor ", o.factors, " does not fit boft_block_num ", nb,
               " (it must be a multiple of 2^", extra, ")");
  }
  if (b > 0 && extra > 0) {
    PEFT_CHECK(n % (b << extra) == 0, "BOFT at '", path, "': in_features ", n, " is not a multiple of boft_block_size ",
               b, " x 2^", extra, " (boft_n_butterfly_factor ", o.factors, ")");
  }
  PEFT_CHECK(b > 0 ? n % b == 0 : n % nb == 0, "BOFT at '", path, "': in_features ", n, " is not divisible by the block ",
             b > 0 ? "size " : "count ", b > 0 ? b : nb);
  OrthoSettings s;
  s.block_size = b > 0 ? b : n / nb;
  s.blocks = n / s.block_size;
  s.factors = o.factors;
  PEFT_CHECK(extra == 0 || (s.blocks % 2 == 0 && s.block_size % 2 == 0), "BOFT at '", path, "': with ", o.factors,
             " butterfly factors the block count (", s.blocks, ") and size (", s.block_size, ") must be even");
  s.neumann = false;
  s.dropout = o.dropout;
  layer->add_adapter(adapter, s, o.init_zero);
  return layer;
}

}  // namespace

TunerMethod oft_method() {
  return TunerMethod{{"OFT", "oft_", &oft_defaults, &oft_parse}, &linear_only, &oft_inject, &DefaultTargets::lora};
}

TunerMethod boft_method() {
  return TunerMethod{{"BOFT", "boft_", &boft_defaults, &boft_parse}, &linear_only, &boft_inject, &DefaultTargets::lora};
}

}  // namespace peft
