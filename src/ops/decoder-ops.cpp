// Registration, loops and entry points of the decoder-layer ops (decoder-ops.h).
#include "peft/ops/decoder-ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "util/worker-pool.h"

namespace peft::ops {

namespace {

// float32, CPU, strided, unit stride in the last dimension, and no gradient to track
bool loop_takes(std::initializer_list<const at::Tensor *> ts) {
  const bool grad = at::GradMode::is_enabled();
  for (const at::Tensor * t : ts) {
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || t->layout() != at::kStrided || t->dim() == 0 ||
        t->stride(-1) != 1 || (grad && t->requires_grad()))
      return false;
  }
  return true;
}

// rows per thread task: about 16K elements, so that decode-sized calls stay on the calling thread
int64_t grain(int64_t row) { return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, row)); }

float lowest_of(at::ScalarType t) {
  return t == at::kBFloat16 ? -3.38e38f : std::numeric_limits<float>::lowest();
}

at::Tensor rms_norm_impl(const at::Tensor & x, const at::Tensor & w, double eps) {
  const int64_t D = x.dim() > 0 ? x.size(-1) : 0;
  if (!loop_takes({&x, &w}) || !x.is_contiguous() || w.dim() != 1 || w.size(0) != D || D == 0) {
    at::Tensor h = x.to(at::kFloat);
    h = h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return w * h.to(x.scalar_type());
  }
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const float * xp = x.data_ptr<float>();
  const float * wp = w.data_ptr<float>();
  float * op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  parallel_rows(x.numel() / D, grain(D), [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) {
      const float * xr = xp + r * D;
      float * o = op + r * D;
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(D)) + e);
      for (int64_t i = 0; i < D; ++i) o[i] = wp[i] * (xr[i] * inv);
    }
  });
  return out;
}

at::Tensor rotary_impl(const at::Tensor & x, const at::Tensor & cos, const at::Tensor & sin) {
  const bool shapes = x.dim() == 4 && cos.dim() == 4 && sin.sizes() == cos.sizes() && x.size(3) % 2 == 0 &&
                      (cos.size(0) == x.size(0) || cos.size(0) == 1) && cos.size(1) == 1 && cos.size(2) == x.size(2) &&
                      cos.size(3) == x.size(3);
  if (!shapes || !loop_takes({&x, &cos, &sin})) {
    const int64_t half = x.size(-1) / 2;
    return x * cos + at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1) * sin;
  }
  const int64_t B = x.size(0), H = x.size(1), S = x.size(2), Dh = x.size(3), half = Dh / 2;
  at::Tensor out = at::empty({B, H, S, Dh}, x.options());
  const float * xp = x.data_ptr<float>();
  const float * cp = cos.data_ptr<float>();
  const float * sp = sin.data_ptr<float>();
  float * op = out.data_ptr<float>();
  const int64_t cb = cos.size(0) == 1 ? 0 : cos.stride(0), sb = sin.size(0) == 1 ? 0 : sin.stride(0);
  parallel_rows(B * H * S, grain(Dh), [&](int64_t a, int64_t e) {
    for (int64_t r = a; r < e; ++r) {
      const int64_t b = r / (H * S), h = r / S % H, s = r % S;
      const float * xr = xp + b * x.stride(0) + h * x.stride(1) + s * x.stride(2);
      const float * c = cp + b * cb + s * cos.stride(2);
      const float * sn = sp + b * sb + s * sin.stride(2);
      float * o = op + r * Dh;
      for (int64_t i = 0; i < half; ++i) o[i] = xr[i] * c[i] + -xr[i + half] * sn[i];
      for (int64_t i = half; i < Dh; ++i) o[i] = xr[i] * c[i] + xr[i - half] * sn[i];
    }
  });
  return out;
}

at::Tensor masked_softmax_impl(const at::Tensor & scores, const at::Tensor & mask, double scale) {
  const float lowest = lowest_of(scores.scalar_type());
  bool takes = scores.dim() == 4 && mask.dim() == 4 && mask.scalar_type() == at::kBool && mask.device().is_cpu() &&
               loop_takes({&scores});
  for (int64_t d = 0; takes && d < 4; ++d) takes = mask.size(d) == 1 || mask.size(d) == scores.size(d);
  if (!takes) {
    return at::softmax((scores * scale).masked_fill(mask.logical_not(), lowest), -1, at::kFloat)
        .to(scores.scalar_type());
  }
  const int64_t B = scores.size(0), H = scores.size(1), S = scores.size(2), L = scores.size(3);
  const at::Tensor m = mask.expand_as(scores);
  at::Tensor out = at::empty({B, H, S, L}, scores.options());
  const float * sp = scores.data_ptr<float>();
  const bool * mp = m.data_ptr<bool>();
  float * op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  parallel_rows(B * H * S, grain(L), [&](int64_t a, int64_t e) {
    for (int64_t r = a; r < e; ++r) {
      const int64_t b = r / (H * S), h = r / S % H, s = r % S;
      const float * sr = sp + b * scores.stride(0) + h * scores.stride(1) + s * scores.stride(2);
      const bool * mr = mp + b * m.stride(0) + h * m.stride(1) + s * m.stride(2);
      const int64_t ms = m.stride(3);
      float * o = op + r * L;
      float mx = lowest;
      for (int64_t l = 0; l < L; ++l) {
        o[l] = mr[l * ms] ? sr[l] * sc : lowest;
        mx = std::max(mx, o[l]);
      }
      float sum = 0;
      for (int64_t l = 0; l < L; ++l) sum += (o[l] = std::exp(o[l] - mx));
      const float inv = 1.0f / sum;
      for (int64_t l = 0; l < L; ++l) o[l] *= inv;
    }
  });
  return out;
}

at::Tensor silu_mul_impl(const at::Tensor & gate, const at::Tensor & up) {
  // ATen's vectorised silu, then the product in place: one node, two kernels
  if (gate.sizes() == up.sizes() && loop_takes({&gate, &up})) return at::silu(gate).mul_(up);
  return at::silu(gate) * up;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(peft, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("masked_softmax(Tensor scores, Tensor mask, float scale) -> Tensor");
  m.def("silu_mul(Tensor gate, Tensor up) -> Tensor");
}

TORCH_LIBRARY_IMPL(peft, CompositeImplicitAutograd, m) {
  m.impl("rms_norm", &rms_norm_impl);
  m.impl("rotary", &rotary_impl);
  m.impl("masked_softmax", &masked_softmax_impl);
  m.impl("silu_mul", &silu_mul_impl);
}

// through the dispatcher, so that a tracer records one node per call
at::Tensor rms_norm(const at::Tensor & x, const at::Tensor & weight, double eps) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::rms_norm", "").typed<at::Tensor(const at::Tensor &, const at::Tensor &, double)>();
  return op.call(x, weight, eps);
}

at::Tensor rotary(const at::Tensor & x, const at::Tensor & cos, const at::Tensor & sin) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::rotary", "").typed<at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &)>();
  return op.call(x, cos, sin);
}

at::Tensor masked_softmax(const at::Tensor & scores, const at::Tensor & mask, double scale) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::masked_softmax", "").typed<at::Tensor(const at::Tensor &, const at::Tensor &, double)>();
  return op.call(scores, mask, scale);
}

at::Tensor silu_mul(const at::Tensor & gate, const at::Tensor & up) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::silu_mul", "").typed<at::Tensor(const at::Tensor &, const at::Tensor &)>();
  return op.call(gate, up);
}

}  // namespace peft::ops
