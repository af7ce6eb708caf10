#include "peft/ops/adapter-math.h"

namespace peft::math {

at::Tensor lora_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale) {
  return at::matmul(B, A) * scale;
}

at::Tensor lora_embedding_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale) {
  return at::matmul(B, A).t() * scale;
}

at::Tensor lora_product(const at::Tensor & x, const at::Tensor & A, const at::Tensor & B, const at::Tensor & bias,
                        const at::Tensor & scale) {
  at::Tensor lora = at::linear(at::linear(x.to(A.scalar_type()), A), B);
  if (bias.defined()) lora = lora + bias;
  return lora * scale;
}

at::Tensor lora_embedding_product(const at::Tensor & ids, const at::Tensor & A, const at::Tensor & B,
                                  const at::Tensor & scale, int64_t padding_idx) {
  at::Tensor h = at::embedding(A.t(), ids, padding_idx);  // (B, T, R)
  return at::matmul(h, B.t()) * scale;
}

at::Tensor dora_weight_norm(const at::Tensor & W, const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale) {
  return (W.to(A.scalar_type()) + lora_delta(A, B, scale).detach()).norm(2, {1}).detach();
}

at::Tensor dora_weight(const at::Tensor & W, const at::Tensor & A, const at::Tensor & B, const at::Tensor & m,
                       const at::Tensor & scale, const at::Tensor & norm) {
  at::Tensor V = W.to(at::kFloat) + lora_delta(A, B, scale).to(at::kFloat);
  return (m / norm).unsqueeze(1) * V;
}

at::Tensor vera_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & lambda_d, const at::Tensor & lambda_b) {
  return at::matmul(lambda_b.unsqueeze(1) * B, lambda_d.unsqueeze(1) * A);
}

at::Tensor rotate_weight(const at::Tensor & W, const at::Tensor & Q) {
  const int64_t O = W.size(0), R = Q.size(0), b = Q.size(1);
  return at::einsum("oib,icb->oic", {W.view({O, R, b}), Q}).reshape({O, R * b});
}

at::Tensor lora_add_rows(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                         const at::Tensor & bias, const at::Tensor & scale, const at::Tensor & mask) {
  return y + (lora_product(x, A, B, bias, scale) * mask).to(y.scalar_type());
}

}  // namespace peft::math
