// Registration, kernels and entry points of the one-row attention ops (attention-ops.h).
#include "peft/ops/attention-ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "util/worker-pool.h"

namespace peft::ops {

namespace {

bool kernel_takes(std::initializer_list<const at::Tensor *> ts) {
  const bool grad = at::GradMode::is_enabled();
  for (const at::Tensor * t : ts) {
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || t->layout() != at::kStrided || t->dim() != 4 ||
        t->stride(3) != 1 || (grad && t->requires_grad()))
      return false;
  }
  return true;
}

// A bfloat16 / float16 query (or probabilities) and cache of the same dtype, the kernels' layout (last dim
// contiguous), no gradient wanted
bool sixteen_takes(const at::Tensor & a, const at::Tensor & cache) {
  const auto t = cache.scalar_type();
  if (t != at::kBFloat16 && t != at::kHalf) return false;
  if (a.scalar_type() != t || !a.device().is_cpu() || !cache.device().is_cpu() || cache.layout() != at::kStrided ||
      cache.dim() != 4 || cache.stride(3) != 1)
    return false;
  return !(at::GradMode::is_enabled() && (a.requires_grad() || cache.requires_grad()));
}

// n 16-bit floats widened to float32 (exactly)
void widen(const uint16_t * src, int64_t n, bool half, float * dst) {
  if (half) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(c10::Half(src[i], c10::Half::from_bits()));
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

// (batch, head) pairs per thread task: about 32K multiply-adds, so that small steps stay on one thread
int64_t grain(int64_t L, int64_t Dh) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, L * Dh)); }

at::Tensor one_row_scores_impl(const at::Tensor & q, const at::Tensor & k) {
  const bool shapes = q.dim() == 4 && k.dim() == 4 && q.size(2) == 1 && q.size(0) == k.size(0) && k.size(1) > 0 &&
                      q.size(1) % k.size(1) == 0 && q.size(3) == k.size(3);
  if (!shapes) return at::matmul(q, k.transpose(-2, -1));
  if (sixteen_takes(q, k) && k.stride(2) == k.size(3)) {
    // a 16-bit cache (a bfloat16 model): the keys widened in registers, q and the scores in float32, the
    // scores rounded to q's dtype as a 16-bit matmul would give them
    const at::Tensor qf = q.to(at::kFloat);
    const int64_t B = q.size(0), H = q.size(1), L = k.size(2), Dh = q.size(3), G = H / k.size(1);
    at::Tensor out = at::empty({B, H, 1, L}, qf.options());
    const float * qp = qf.data_ptr<float>();
    const uint16_t * kp = reinterpret_cast<const uint16_t *>(k.data_ptr());
    float * op = out.data_ptr<float>();
    const bool half = k.scalar_type() == at::kHalf;
    parallel_rows(B * H, grain(L, Dh), [&](int64_t a, int64_t e) {
      for (int64_t bh = a; bh < e; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        kernels::gemm_small(qp + b * qf.stride(0) + h * qf.stride(1), 1,
                            kernels::Weight16{kp + b * k.stride(0) + h / G * k.stride(1), L, Dh, half}, op + bh * L);
      }
    });
    return out.to(q.scalar_type());
  }
  if (!kernel_takes({&q, &k}) || k.stride(2) != k.size(3)) return at::matmul(q, repeat_heads(k, q.size(1)).transpose(2, 3));
  const int64_t B = q.size(0), H = q.size(1), L = k.size(2), Dh = q.size(3), G = H / k.size(1);
  at::Tensor out = at::empty({B, H, 1, L}, q.options());
  const float * qp = q.data_ptr<float>();
  const float * kp = k.data_ptr<float>();
  float * op = out.data_ptr<float>();
  parallel_rows(B * H, grain(L, Dh), [&](int64_t a, int64_t e) {
    for (int64_t bh = a; bh < e; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      // the L cached keys of (b, h) are the rows of a (L, Dh) matrix: one small-M product with M = 1
      kernels::gemm_small(qp + b * q.stride(0) + h * q.stride(1), 1,
                                 kernels::WeightF32{kp + b * k.stride(0) + h / G * k.stride(1), L, Dh}, op + bh * L);
    }
  });
  return out;
}

at::Tensor one_row_mix_impl(const at::Tensor & p, const at::Tensor & v) {
  const bool shapes = p.dim() == 4 && v.dim() == 4 && p.size(2) == 1 && p.size(0) == v.size(0) && v.size(1) > 0 &&
                      p.size(1) % v.size(1) == 0 && p.size(3) == v.size(2);
  if (!shapes) return at::matmul(p, v);
  if (sixteen_takes(p, v)) {
    // a 16-bit cache: each live value row widened (exactly) and added in float32, the result rounded to p's dtype
    const at::Tensor pf = p.to(at::kFloat);
    const int64_t B = p.size(0), H = p.size(1), L = v.size(2), Dh = v.size(3), G = H / v.size(1);
    at::Tensor out = at::zeros({B, H, 1, Dh}, pf.options());
    const float * pp = pf.data_ptr<float>();
    const uint16_t * vp = reinterpret_cast<const uint16_t *>(v.data_ptr());
    float * op = out.data_ptr<float>();
    const bool half = v.scalar_type() == at::kHalf;
    parallel_rows(B * H, grain(L, Dh), [&](int64_t a, int64_t e) {
      std::vector<float> row(static_cast<size_t>(Dh));
      for (int64_t bh = a; bh < e; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const float * pr = pp + b * pf.stride(0) + h * pf.stride(1);
        const uint16_t * vb = vp + b * v.stride(0) + h / G * v.stride(1);
        for (int64_t l = 0; l < L; ++l) {
          const float w = pr[l * pf.stride(3)];
          if (w == 0.0f) continue;  // a masked position (or a cache slot of another row): adds nothing
          widen(vb + l * v.stride(2), Dh, half, row.data());
          kernels::axpy(Dh, w, row.data(), op + bh * Dh);
        }
      }
    });
    return out.to(p.scalar_type());
  }
  if (!kernel_takes({&p, &v})) return at::matmul(p, repeat_heads(v, p.size(1)));
  const int64_t B = p.size(0), H = p.size(1), L = v.size(2), Dh = v.size(3), G = H / v.size(1);
  at::Tensor out = at::zeros({B, H, 1, Dh}, v.options());
  const float * pp = p.data_ptr<float>();
  const float * vp = v.data_ptr<float>();
  float * op = out.data_ptr<float>();
  parallel_rows(B * H, grain(L, Dh), [&](int64_t a, int64_t e) {
    for (int64_t bh = a; bh < e; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float * pr = pp + b * p.stride(0) + h * p.stride(1);
      const float * vb = vp + b * v.stride(0) + h / G * v.stride(1);
      float * o = op + bh * Dh;
      for (int64_t l = 0; l < L; ++l) {
        const float w = pr[l * p.stride(3)];
        if (w == 0.0f) continue;  // a masked position (or a cache slot of another row): adds nothing
        kernels::axpy(Dh, w, vb + l * v.stride(2), o);
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor repeat_heads(const at::Tensor & t, int64_t H) {
  const int64_t B = t.size(0), Hkv = t.size(1), L = t.size(2), Dh = t.size(3);
  if (Hkv == H) return t;
  return t.unsqueeze(2).expand({B, Hkv, H / Hkv, L, Dh}).reshape({B, H, L, Dh});
}

TORCH_LIBRARY_FRAGMENT(peft, m) {
  m.def("one_row_scores(Tensor q, Tensor k) -> Tensor");
  m.def("one_row_mix(Tensor p, Tensor v) -> Tensor");
}

TORCH_LIBRARY_IMPL(peft, CompositeImplicitAutograd, m) {
  m.impl("one_row_scores", &one_row_scores_impl);
  m.impl("one_row_mix", &one_row_mix_impl);
}

// through the dispatcher, so that a tracer records one node per call
at::Tensor one_row_scores(const at::Tensor & q, const at::Tensor & k) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::one_row_scores", "").typed<at::Tensor(const at::Tensor &, const at::Tensor &)>();
  return op.call(q, k);
}

at::Tensor one_row_mix(const at::Tensor & p, const at::Tensor & v) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::one_row_mix", "").typed<at::Tensor(const at::Tensor &, const at::Tensor &)>();
  return op.call(p, v);
}

}  // namespace peft::ops
