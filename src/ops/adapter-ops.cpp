// Registration and kernels of the peft custom ops. Registration lives in this file together with the
// C++ entry points, so linking any caller links the registration too (no dropped static initialisers).
#include "peft/ops/adapter-ops.h"

#include <torch/library.h>

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "kernels/kernels.h"
#include "util/worker-pool.h"

namespace peft::ops {

namespace {

at::Tensor dropped(const at::Tensor & x, double p, bool train) { return p > 0 && train ? at::dropout(x, p, true) : x; }

at::Tensor lora_add_impl(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                         const c10::optional<at::Tensor> & bias, const at::Tensor & scale, double p, bool train) {
  at::Tensor xa = dropped(x.to(A.scalar_type()), p, train);
  return y + math::lora_product(xa, A, B, bias.has_value() ? *bias : at::Tensor(), scale).to(y.scalar_type());
}

at::Tensor dora_add_impl(const at::Tensor & y, const at::Tensor & x, const at::Tensor & W_,
                         const c10::optional<at::Tensor> & bias, const at::Tensor & A, const at::Tensor & B,
                         const at::Tensor & m, const at::Tensor & scale, double p, bool train) {
  at::Tensor W = W_.to(A.scalar_type());
  const bool drop = p > 0 && train;
  at::Tensor xd = dropped(x.to(A.scalar_type()), p, train);
  at::Tensor g = m / math::dora_weight_norm(W, A, B, scale);
  // PEFT's base term: the layer's running output without the bias (base plus the adapters before this
  // one, so the rescale covers them too); with dropout in training, the base re-evaluated on the
  // dropped-out input instead
  at::Tensor base;
  if (drop) {
    base = at::linear(xd, W);
  } else {
    base = bias.has_value() && bias->defined() ? y - *bias : y;
    base = base.to(A.scalar_type());
  }
  at::Tensor lora = math::lora_product(xd, A, B, at::Tensor(), scale);
  return y + ((g - 1) * base + g * lora).to(y.scalar_type());
}

at::Tensor lora_embedding_add_impl(const at::Tensor & y, const at::Tensor & ids, const at::Tensor & A,
                                   const at::Tensor & B, const at::Tensor & scale, int64_t padding_idx) {
  return y + math::lora_embedding_product(ids, A, B, scale, padding_idx).to(y.scalar_type());
}

at::Tensor dora_embedding_add_impl(const at::Tensor & y, const at::Tensor & ids, const at::Tensor & E, const at::Tensor & A,
                                   const at::Tensor & B, const at::Tensor & m, const at::Tensor & scale, int64_t padding_idx) {
  at::Tensor g = m / math::dora_embedding_norm(E, A, B, scale);
  at::Tensor lora = math::lora_embedding_product(ids, A, B, scale, padding_idx);
  return (g * y.to(A.scalar_type()) + g * lora).to(y.scalar_type());
}

at::Tensor vera_add_impl(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                         const at::Tensor & lambda_d, const at::Tensor & lambda_b, double p, bool train) {
  at::Tensor xa = x.to(A.scalar_type());
  if (p > 0 && train) xa = at::dropout(xa, p, true);
  return y + (lambda_b * at::linear(lambda_d * at::linear(xa, A), B)).to(y.scalar_type());
}

at::Tensor road_rotate_impl(const at::Tensor & y, const at::Tensor & theta, const at::Tensor & alpha, int64_t variant,
                            int64_t group_size) {
  const auto cols = math::road_cols(theta, alpha, variant, group_size);
  return math::road_apply(y, cols.first, cols.second, group_size);
}

at::Tensor block_rotate_impl(const at::Tensor & x, const at::Tensor & Q) {
  const int64_t R = Q.size(0), b = Q.size(1);
  std::vector<int64_t> shape = x.sizes().vec();
  at::Tensor xr = x.to(Q.scalar_type()).reshape({-1, R, b}).transpose(0, 1);  // (R, N, b)
  at::Tensor out = at::bmm(xr, Q).transpose(0, 1).reshape(shape);            // x_i Q_i per block
  return out.to(x.scalar_type());
}

// Decode-sized LoRA products (a few rows, float32, contiguous, nothing to differentiate) go to the small-M
// kernel: at::linear / addmm cost a few microseconds of dispatch each for a product of a few thousand
// multiply-adds (at decode on a quantized base, where LoRA cannot fold, ~15% of the step).
bool small_lora(std::initializer_list<const at::Tensor *> ts, int64_t rows) {
  if (rows < 1 || rows > kSmallRows) return false;
  const bool grad = at::GradMode::is_enabled();
  for (const at::Tensor * t : ts) {
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || t->layout() != at::kStrided || !t->is_contiguous() ||
        (grad && t->requires_grad()))
      return false;
  }
  return true;
}

kernels::WeightF32 f32(const at::Tensor & W) { return {W.data_ptr<float>(), W.size(0), W.size(1)}; }

// out (M, O) = y + s * (h B^T), h (M, r) contiguous: y's rounding as y + (h B^T * s)
at::Tensor expand_add_small(const at::Tensor & y, const float * h, int64_t M, const at::Tensor & B, float s) {
  const int64_t O = B.size(0);
  at::Tensor out = at::empty_like(y, at::MemoryFormat::Contiguous);
  float * o = out.data_ptr<float>();
  const float * yp = y.data_ptr<float>();
  kernels::gemm_small(h, M, f32(B), o);
  for (int64_t i = 0; i < M * O; ++i) o[i] = yp[i] + o[i] * s;
  return out;
}

bool scalar_float(const at::Tensor & t) { return t.numel() == 1 && t.device().is_cpu() && t.scalar_type() == at::kFloat; }

at::Tensor lora_add_fused_impl(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                               const c10::optional<at::Tensor> & bias, const at::Tensor & scale, double p, bool train) {
  if (y.scalar_type() != A.scalar_type() || (bias.has_value() && bias->defined())) {
    return lora_add_impl(y, x, A, B, bias, scale, p, train);
  }
  const int64_t O = B.size(0), r = A.size(0), I = A.size(1);
  const int64_t M = I > 0 && y.dim() > 0 && x.dim() > 0 && x.size(-1) == I ? x.numel() / I : 0;
  if (!(p > 0 && train) && scalar_float(scale) && B.dim() == 2 && B.size(1) == r && y.numel() == M * O &&
      small_lora({&y, &x, &A, &B}, M)) {
    std::vector<float> h(static_cast<size_t>(M * r));
    kernels::gemm_small(x.data_ptr<float>(), M, f32(A), h.data());
    return expand_add_small(y, h.data(), M, B, scale.data_ptr<float>()[0]);
  }
  at::Tensor xa = x.to(A.scalar_type());
  if (p > 0 && train) xa = at::dropout(xa, p, true);
  at::Tensor xr = at::linear(xa, A).reshape({-1, A.size(0)});
  // scale is a 0-dim tensor so that changing it needs no recompile; addmm wants a Scalar
  at::Tensor out = at::addmm(y.reshape({-1, O}), xr, B.t(), 1.0, scale.item<double>());
  return out.view(y.sizes());
}

at::Tensor lora_shrink_impl(const at::Tensor & x, at::TensorList As) {
  const int64_t I = As.empty() || As[0].dim() != 2 ? 0 : As[0].size(1);
  const int64_t M = I > 0 && x.dim() > 0 && x.size(-1) == I ? x.numel() / I : 0;
  bool small = small_lora({&x}, M);
  int64_t R = 0;
  for (const at::Tensor & A : As) {
    small = small && small_lora({&A}, 1) && A.dim() == 2 && A.size(1) == I;
    R += A.dim() == 2 ? A.size(0) : 0;
  }
  if (!small) return at::linear(x.to(As[0].scalar_type()), at::cat(As, 0));
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = R;
  at::Tensor out = at::empty(shape, x.options());
  float * o = out.data_ptr<float>();
  std::vector<float> h;
  int64_t off = 0;
  for (const at::Tensor & A : As) {  // x A_i^T into columns [off, off + r_i)
    const int64_t r = A.size(0);
    if (M == 1) {
      kernels::gemm_small(x.data_ptr<float>(), 1, f32(A), o + off);
    } else {
      h.resize(static_cast<size_t>(M * r));
      kernels::gemm_small(x.data_ptr<float>(), M, f32(A), h.data());
      for (int64_t m = 0; m < M; ++m) std::copy_n(h.data() + m * r, r, o + m * R + off);
    }
    off += r;
  }
  return out;
}

at::Tensor lora_expand_add_impl(const at::Tensor & y, const at::Tensor & xa, int64_t offset, const at::Tensor & B,
                                const c10::optional<at::Tensor> & bias, const at::Tensor & scale) {
  const int64_t r = B.dim() == 2 ? B.size(1) : 0, R = xa.dim() > 0 ? xa.size(-1) : 0, M = R > 0 ? xa.numel() / R : 0;
  if (!(bias.has_value() && bias->defined()) && scalar_float(scale) && r > 0 && offset >= 0 && offset + r <= R &&
      y.numel() == M * B.size(0) && small_lora({&y, &xa, &B}, M)) {
    std::vector<float> h(static_cast<size_t>(M * r));
    for (int64_t m = 0; m < M; ++m) std::copy_n(xa.data_ptr<float>() + m * R + offset, r, h.data() + m * r);
    return expand_add_small(y, h.data(), M, B, scale.data_ptr<float>()[0]);
  }
  at::Tensor lora = at::linear(xa.narrow(-1, offset, B.size(1)), B);
  if (bias.has_value() && bias->defined()) lora = lora + *bias;
  return y + (lora * scale).to(y.scalar_type());
}

at::Tensor linear_gemv_impl(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b) {
  if (x.numel() != x.size(-1)) return at::linear(x, W, b);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = W.size(0);
  at::Tensor out = at::mv(W, x.reshape({-1}));
  if (b.has_value() && b->defined()) out = out + *b;
  return out.view(shape);
}

// A few rows (batched decode): the float32 small-M kernel reads each weight once for all rows, where
// BLAS's GEMM packs W first. No autograd through the kernel: where a gradient could be needed, and for
// anything the kernel does not take (dtype, device, layout, more rows), at::linear.
at::Tensor linear_small_impl(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b) {
  const bool has_b = b.has_value() && b->defined();
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || W.requires_grad() || (has_b && b->requires_grad()));
  const auto cpu_float = [](const at::Tensor & t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided;
  };
  if (grad || !cpu_float(x) || !cpu_float(W) || W.dim() != 2 || !W.is_contiguous() || x.dim() < 1 ||
      x.size(-1) != W.size(1) || (has_b && (!cpu_float(*b) || b->dim() != 1 || b->size(0) != W.size(0)))) {
    return at::linear(x, W, b);
  }
  const int64_t I = W.size(1), O = W.size(0), M = I > 0 ? x.numel() / I : 0;
  if (M < 1 || M > kSmallRows || I == 0) return at::linear(x, W, b);
  const at::Tensor x2 = x.reshape({M, I}).contiguous();
  at::Tensor y = at::empty({M, O}, x2.options());
  kernels::gemm_small(x2.data_ptr<float>(), M, kernels::WeightF32{W.data_ptr<float>(), O, I},
                             y.data_ptr<float>());
  if (has_b) y.add_(*b);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = O;
  return y.view(shape);
}

at::Tensor lora_mixed_add_impl(const at::Tensor & y, const at::Tensor & x, at::TensorList As, at::TensorList BTs,
                               const at::Tensor & routing, at::IntArrayRef rows, const at::Tensor & scales_in) {
  const int64_t n = static_cast<int64_t>(As.size());
  PEFT_CHECK(static_cast<int64_t>(BTs.size()) == n && static_cast<int64_t>(rows.size()) == n &&
                 scales_in.numel() == n && routing.dim() == 2,
             "lora_mixed_add: ", n, " adapters with ", BTs.size(), " B factors, ", rows.size(), " routing rows, scales ",
             scales_in.sizes(), ", routing ", routing.sizes());
  for (int64_t r : rows) PEFT_CHECK(r >= 0 && r < routing.size(0), "lora_mixed_add: routing row ", r, " of ", routing.size(0));
  const at::Tensor scales = scales_in.reshape({n});  // one per adapter (stacked 0-dim or (1) tensors)
  const bool grad = at::GradMode::is_enabled();
  auto takes = [&](const at::Tensor & t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided && t.is_contiguous() &&
           !(grad && t.requires_grad());
  };
  bool kernel = n > 0 && takes(y) && takes(x) && x.dim() >= 1 && y.dim() == x.dim() && takes(routing) &&
                takes(scales) && y.size(0) == routing.size(1) && x.size(0) == routing.size(1);
  const int64_t I = kernel ? x.size(-1) : 0, O = kernel ? y.size(-1) : 0;
  const int64_t batch = kernel ? routing.size(1) : 0, nrows = kernel && I > 0 ? x.numel() / I : 0;
  kernel = kernel && I > 0 && O > 0 && nrows >= 1 && nrows <= kSmallRows && nrows % batch == 0 && y.numel() == nrows * O;
  for (int64_t a = 0; kernel && a < n; ++a) {
    const at::Tensor & A = As[a];
    const at::Tensor & BT = BTs[a];
    kernel = takes(A) && takes(BT) && A.dim() == 2 && BT.dim() == 2 && A.size(1) == I && BT.size(1) == O &&
             BT.size(0) == A.size(0);
  }
  if (!kernel) {
    std::vector<at::Tensor> Bs, scale;
    for (const at::Tensor & BT : BTs) Bs.push_back(BT.t());
    for (int64_t a = 0; a < n; ++a) scale.push_back(scales[a]);
    const at::Tensor picked = routing.index_select(0, at::tensor(rows.vec(), at::kLong).to(routing.device()));
    return math::lora_add_mixed(y, x, As.vec(), Bs, std::vector<at::Tensor>(As.size()), scale, picked);
  }
  const float * route = routing.data_ptr<float>();
  const float * sp = scales.data_ptr<float>();
  at::Tensor out = y.clone();
  float * yp = out.data_ptr<float>();
  const float * xp = x.data_ptr<float>();
  const int64_t per_batch = nrows / batch;
  int64_t rmax = 0;
  for (const at::Tensor & A : As) rmax = std::max(rmax, A.size(0));
  parallel_rows(batch, 2, [&](int64_t b0, int64_t b1) {
    std::vector<float> h(static_cast<size_t>(rmax * per_batch));
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t a = 0; a < n; ++a) {
        const float s = route[rows[a] * batch + b] * sp[a];
        if (s == 0.0f) continue;  // a row that does not use this adapter
        const int64_t r = As[a].size(0);
        kernels::gemm_small(xp + b * per_batch * I, per_batch,
                                   kernels::WeightF32{As[a].data_ptr<float>(), r, I}, h.data());
        const float * bt = BTs[a].data_ptr<float>();
        for (int64_t t = 0; t < per_batch; ++t) {
          float * yr = yp + (b * per_batch + t) * O;
          for (int64_t j = 0; j < r; ++j)  // y_row += (s h_j) B^T[j, :]: contiguous rows of B^T
            kernels::axpy(O, s * h[static_cast<size_t>(t * r + j)], bt + j * O, yr);
        }
      }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(peft, m) {
  m.def("lora_add(Tensor y, Tensor x, Tensor A, Tensor B, Tensor? bias, Tensor scale, float dropout, bool train) -> Tensor");
  m.def("dora_add(Tensor y, Tensor x, Tensor W, Tensor? bias, Tensor A, Tensor B, Tensor m, Tensor scale, float dropout, bool train) -> Tensor");
  m.def("lora_embedding_add(Tensor y, Tensor ids, Tensor A, Tensor B, Tensor scale, int padding_idx) -> Tensor");
  m.def("dora_embedding_add(Tensor y, Tensor ids, Tensor E, Tensor A, Tensor B, Tensor m, Tensor scale, int padding_idx) -> Tensor");
  m.def("block_rotate(Tensor x, Tensor Q) -> Tensor");
  m.def("road_rotate(Tensor y, Tensor theta, Tensor alpha, int variant, int group_size) -> Tensor");
  m.def("vera_add(Tensor y, Tensor x, Tensor A, Tensor B, Tensor lambda_d, Tensor lambda_b, float dropout, bool train) -> Tensor");
  m.def("lora_add_fused(Tensor y, Tensor x, Tensor A, Tensor B, Tensor? bias, Tensor scale, float dropout, bool train) -> Tensor");
  m.def("lora_shrink(Tensor x, Tensor[] As) -> Tensor");
  m.def("lora_expand_add(Tensor y, Tensor xa, int offset, Tensor B, Tensor? bias, Tensor scale) -> Tensor");
  m.def("linear_gemv(Tensor x, Tensor W, Tensor? b) -> Tensor");
  m.def("linear_small(Tensor x, Tensor W, Tensor? b) -> Tensor");
  m.def("lora_mixed_add(Tensor y, Tensor x, Tensor[] As, Tensor[] BTs, Tensor routing, int[] rows, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(peft, CompositeImplicitAutograd, m) {
  m.impl("lora_add", &lora_add_impl);
  m.impl("dora_add", &dora_add_impl);
  m.impl("lora_embedding_add", &lora_embedding_add_impl);
  m.impl("dora_embedding_add", &dora_embedding_add_impl);
  m.impl("block_rotate", &block_rotate_impl);
  m.impl("road_rotate", &road_rotate_impl);
  m.impl("vera_add", &vera_add_impl);
  m.impl("lora_add_fused", &lora_add_fused_impl);
  m.impl("lora_shrink", &lora_shrink_impl);
  m.impl("lora_expand_add", &lora_expand_add_impl);
  m.impl("linear_gemv", &linear_gemv_impl);
  m.impl("linear_small", &linear_small_impl);
  m.impl("lora_mixed_add", &lora_mixed_add_impl);
}

// ---- C++ entry points: through the dispatcher, so that a tracer records one node per call ----

#define PEFT_OP(name, sig) \
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::" name, "").typed<sig>()

at::Tensor lora_add(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                    const c10::optional<at::Tensor> & bias, const at::Tensor & scale, double dropout, bool train) {
  PEFT_OP("lora_add", at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                 const c10::optional<at::Tensor> &, const at::Tensor &, double, bool));
  return op.call(y, x, A, B, bias, scale, dropout, train);
}

at::Tensor dora_add(const at::Tensor & y, const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & bias,
                    const at::Tensor & A, const at::Tensor & B, const at::Tensor & m, const at::Tensor & scale,
                    double dropout, bool train) {
  PEFT_OP("dora_add", at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                 const c10::optional<at::Tensor> &, const at::Tensor &, const at::Tensor &,
                                 const at::Tensor &, const at::Tensor &, double, bool));
  return op.call(y, x, W, bias, A, B, m, scale, dropout, train);
}

at::Tensor lora_embedding_add(const at::Tensor & y, const at::Tensor & ids, const at::Tensor & A, const at::Tensor & B,
                              const at::Tensor & scale, int64_t padding_idx) {
  PEFT_OP("lora_embedding_add", at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                           const at::Tensor &, const at::Tensor &, int64_t));
  return op.call(y, ids, A, B, scale, padding_idx);
}

at::Tensor dora_embedding_add(const at::Tensor & y, const at::Tensor & ids, const at::Tensor & E, const at::Tensor & A,
                              const at::Tensor & B, const at::Tensor & m, const at::Tensor & scale, int64_t padding_idx) {
  PEFT_OP("dora_embedding_add", at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                           const at::Tensor &, const at::Tensor &, const at::Tensor &, int64_t));
  return op.call(y, ids, E, A, B, m, scale, padding_idx);
}

at::Tensor vera_add(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                    const at::Tensor & lambda_d, const at::Tensor & lambda_b, double dropout, bool train) {
  PEFT_OP("vera_add", at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                 const at::Tensor &, const at::Tensor &, double, bool));
  return op.call(y, x, A, B, lambda_d, lambda_b, dropout, train);
}

at::Tensor block_rotate(const at::Tensor & x, const at::Tensor & Q) {
  PEFT_OP("block_rotate", at::Tensor(const at::Tensor &, const at::Tensor &));
  return op.call(x, Q);
}

at::Tensor road_rotate(const at::Tensor & y, const at::Tensor & theta, const at::Tensor & alpha, int64_t variant,
                       int64_t group_size) {
  PEFT_OP("road_rotate", at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &, int64_t, int64_t));
  return op.call(y, theta, alpha, variant, group_size);
}

at::Tensor lora_add_fused(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                          const c10::optional<at::Tensor> & bias, const at::Tensor & scale, double dropout, bool train) {
  return lora_add_fused_impl(y, x, A, B, bias, scale, dropout, train);
}
at::Tensor lora_shrink(const at::Tensor & x, at::TensorList As) { return lora_shrink_impl(x, As); }
at::Tensor lora_expand_add(const at::Tensor & y, const at::Tensor & xa, int64_t offset, const at::Tensor & B,
                           const c10::optional<at::Tensor> & bias, const at::Tensor & scale) {
  return lora_expand_add_impl(y, xa, offset, B, bias, scale);
}
at::Tensor linear_gemv(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b) {
  return linear_gemv_impl(x, W, b);
}
at::Tensor linear_small(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b) {
  return linear_small_impl(x, W, b);
}

at::Tensor lora_mixed_add(const at::Tensor & y, const at::Tensor & x, at::TensorList As, at::TensorList BTs,
                          const at::Tensor & routing, at::IntArrayRef rows, const at::Tensor & scales) {
  PEFT_OP("lora_mixed_add", at::Tensor(const at::Tensor &, const at::Tensor &, at::TensorList, at::TensorList,
                                       const at::Tensor &, at::IntArrayRef, const at::Tensor &));
  return op.call(y, x, As, BTs, routing, rows, scales);
}

}  // namespace peft::ops
