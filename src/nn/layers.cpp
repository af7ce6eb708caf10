#include "peft/nn/layers.h"

#include "peft/ops/decoder-ops.h"
#include "peft/ops/linear-16bit.h"

namespace peft {

namespace {
// clone_layer of a layer with `weight` and `bias` (maybe undefined): `to` (the same shape) gets copies of
// their values and their requires_grad
template <class L> LayerPtr copy_weight_and_bias(const L & from, std::shared_ptr<L> to) {
  {
    at::NoGradGuard g;
    to->weight.copy_(from.weight);
    if (from.bias.defined()) to->bias.copy_(from.bias);
  }
  to->weight.set_requires_grad(from.weight.requires_grad());
  if (from.bias.defined()) to->bias.set_requires_grad(from.bias.requires_grad());
  return to;
}
}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias) {
  weight = register_parameter("weight", at::empty({out_features, in_features}));
  if (has_bias) bias = register_parameter("bias", at::zeros({out_features}));
}

// a frozen bfloat16 / float16 weight is computed in float32 by peft::linear_16bit (LibTorch 1.13's bfloat16
// matmul on CPU goes to oneDNN, which without AVX-512 has no kernel for it: it fails under ONEDNN_MAX_CPU_ISA=AVX2)
namespace {

// x W^T + b: a frozen 16-bit W through peft::linear_16bit (computed in float32); a 16-bit W under float32
// activations (float16 weights) that ATen multiplies (a trained weight) in x's dtype
at::Tensor linear_with(const at::Tensor & x, const at::Tensor & weight, const at::Tensor & bias) {
  if (ops::linear_16bit_takes(weight, bias))
    return ops::linear_16bit(x, weight, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
  if (weight.scalar_type() != x.scalar_type() && x.is_floating_point()) {
    return at::linear(x, weight.to(x.scalar_type()), bias.defined() ? bias.to(x.scalar_type()) : bias);
  }
  return at::linear(x, weight, bias);
}

}  // namespace

at::Tensor Linear::forward(const at::Tensor & x) { return linear_with(x, weight, bias); }

at::Tensor Linear::apply_weight(const at::Tensor & x) { return linear_with(x, weight, at::Tensor()); }

LayerPtr Linear::clone_layer() const {
  return copy_weight_and_bias(*this, std::make_shared<Linear>(in_features(), out_features(), bias.defined()));
}

void Linear::store_weight(const at::Tensor & w) {
  at::NoGradGuard g;
  weight.copy_(w);
}

void Linear::store_bias(const at::Tensor & b) {
  at::NoGradGuard g;
  bias.copy_(b);
}

void Linear::tie_weight(const at::Tensor & w) {
  parameters_["weight"] = w;
  weight = w;
}

Conv1D::Conv1D(int64_t in_features, int64_t out_features, bool has_bias) {
  weight = register_parameter("weight", at::empty({in_features, out_features}));
  if (has_bias) bias = register_parameter("bias", at::zeros({out_features}));
}

// as at::linear with the transposed view (the graph then holds aten::linear, which the compile passes fold)
at::Tensor Conv1D::forward(const at::Tensor & x) { return at::linear(x, weight.t(), bias); }

LayerPtr Conv1D::clone_layer() const {
  return copy_weight_and_bias(*this, std::make_shared<Conv1D>(in_features(), out_features(), bias.defined()));
}

void Conv1D::store_weight(const at::Tensor & w) {
  at::NoGradGuard g;
  weight.copy_(w.t());
}

void Conv1D::store_bias(const at::Tensor & b) {
  at::NoGradGuard g;
  bias.copy_(b);
}

Embedding::Embedding(int64_t num_embeddings, int64_t dim, int64_t padding_idx_) : padding_idx(padding_idx_) {
  weight = register_parameter("weight", at::empty({num_embeddings, dim}));
}

at::Tensor Embedding::forward(const at::Tensor & ids) { return at::embedding(weight, ids, padding_idx); }

LayerPtr Embedding::clone_layer() const {
  auto l = std::make_shared<Embedding>(weight.size(0), weight.size(1), padding_idx);
  {
    at::NoGradGuard g;
    l->weight.copy_(weight);
  }
  l->weight.set_requires_grad(weight.requires_grad());
  return l;
}

RMSNorm::RMSNorm(int64_t dim, double eps_, bool unit_offset_) : eps(eps_), unit_offset(unit_offset_) {
  weight = register_parameter("weight", unit_offset ? at::zeros({dim}) : at::ones({dim}));
}

at::Tensor RMSNorm::forward(const at::Tensor & x) {
  if (!unit_offset) return ops::rms_norm(x, weight, eps);
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps) * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

LayerPtr RMSNorm::clone_layer() const {
  auto l = std::make_shared<RMSNorm>(weight.size(0), eps, unit_offset);
  {
    at::NoGradGuard g;
    l->weight.copy_(weight);
  }
  l->weight.set_requires_grad(weight.requires_grad());
  return l;
}

LayerNorm::LayerNorm(int64_t dim, double eps_, bool affine) : eps(eps_) {
  if (affine) {
    weight = register_parameter("weight", at::ones({dim}));
    bias = register_parameter("bias", at::zeros({dim}));
  }
}

at::Tensor LayerNorm::forward(const at::Tensor & x) { return at::layer_norm(x, {x.size(-1)}, weight, bias, eps); }

LayerPtr LayerNorm::clone_layer() const {
  auto l = std::make_shared<LayerNorm>(weight.defined() ? weight.size(0) : 0, eps, weight.defined());
  if (weight.defined()) {
    at::NoGradGuard g;
    l->weight.copy_(weight);
    l->bias.copy_(bias);
    l->weight.set_requires_grad(weight.requires_grad());
    l->bias.set_requires_grad(bias.requires_grad());
  }
  return l;
}

}  // namespace peft
