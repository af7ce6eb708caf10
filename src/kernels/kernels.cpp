// Dispatch for kernels.h: picks the best instruction set this CPU has (or the forced one) and splits the
// output rows of gemm_small over threads. No ISA flags here; the ISA files are only entered from here.
#include "kernels/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "peft/error.h"
#include "kernels/isa-kernels.h"
#include "util/worker-pool.h"

namespace peft::kernels {
namespace {

constexpr int64_t kGroup = 16;             // rows of x per pass of gemm_small
constexpr int64_t kWeightsPerTask = 1 << 15;  // weights per thread task: ~16 KB of 4-bit weights

bool supported(const IsaKernels & k) {
#if defined(__x86_64__)
  if (&k == &kAvx512Kernels)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (&k == &kAvx2Kernels)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return &k == &kPortableKernels;
}

// Best first.
const IsaKernels * const kAll[] = {
#if defined(__x86_64__)
    &kAvx512Kernels, &kAvx2Kernels,
#endif
    &kPortableKernels};

const IsaKernels * best() {
  for (const IsaKernels * k : kAll)
    if (supported(*k)) return k;
  return &kPortableKernels;
}

// PEFT_ISA=avx2 (or avx512, portable) caps the instruction set, e.g. to measure an AVX2 machine's kernels on
// an AVX-512 one; a name this CPU lacks or an unknown one is an error at the first kernel call.
const IsaKernels * chosen() {
  const char * want = std::getenv("PEFT_ISA");
  if (!want || !*want) return best();
  for (const IsaKernels * k : kAll) {
    if (std::strcmp(k->name, want) != 0) continue;
    PEFT_CHECK(supported(*k), "PEFT_ISA=", want, ": this CPU lacks that instruction set");
    return k;
  }
  PEFT_CHECK(false, "PEFT_ISA=", want, ": unknown instruction set (expected avx512, avx2 or portable)");
  return nullptr;
}

std::atomic<const IsaKernels *> g_active{nullptr};

const IsaKernels & active() {
  const IsaKernels * k = g_active.load(std::memory_order_relaxed);
  if (!k) {
    k = chosen();
    g_active.store(k, std::memory_order_relaxed);
  }
  return *k;
}

// Rows per thread task. From the weights alone: at small M the decode, not the M FMAs, is what a row costs.
int64_t grain(int64_t I) { return std::max<int64_t>(1, kWeightsPerTask / std::max<int64_t>(1, I)); }

template <class W, class F> void gemm_groups(const float * x, int64_t M, const W & w, float * y, F rows) {
  for (int64_t m0 = 0; m0 < M; m0 += kGroup) {
    const int64_t m = std::min(kGroup, M - m0);
    const float * xg = x + m0 * w.I;
    float * yg = y + m0 * w.O;
    parallel_rows(w.O, grain(w.I), [&](int64_t o0, int64_t o1) { rows(xg, m, w, yg, o0, o1); });
  }
}

}  // namespace

// ---- 4-bit times int8 activations ----

namespace {

std::atomic<int> g_int8_activations{-1};  // -1: not read from the environment yet

bool int8_fits(const Weight4 & w) {
  const int64_t bs = w.blocksize;
  return w.I % 32 == 0 && bs % 32 == 0 && (bs & (bs - 1)) == 0;
}

// x (M, I) -> Int8Rows (isa-kernels.h): per group of 32 columns d = max |x| / 127, q = round(x * (1 / d)),
// odd columns first
void quantize_rows(const float * x, int64_t M, int64_t I, int8_t * q, float * d) {
  const int64_t groups = I / 32;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const float * src = x + m * I + 32 * g;
      float amax = 0.0f;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(src[k]));
      const float dg = amax / 127.0f, id = dg != 0.0f ? 1.0f / dg : 0.0f;
      int8_t * dst = q + m * I + 32 * g;
      for (int k = 0; k < 16; ++k) {
        dst[k] = static_cast<int8_t>(std::nearbyint(src[2 * k + 1] * id));
        dst[16 + k] = static_cast<int8_t>(std::nearbyint(src[2 * k] * id));
      }
      d[m * groups + g] = dg;
    }
}

void gemm_int8_activations(const float * x, int64_t M, const Weight4 & w, float * y) {
  const IsaKernels & k = active();
  auto fn = k.gemm4q;
#if defined(__x86_64__)
  if (!fn) fn = kAvx2Kernels.gemm4q;  // (an ISA without its own: AVX2's, which every AVX-512 CPU runs)
#endif
  float cmax = 0.0f;
  for (int i = 0; i < 16; ++i) cmax = std::max(cmax, std::fabs(w.code[i]));
  alignas(16) int8_t table[16];
  const float tmul = cmax != 0.0f ? 127.0f / cmax : 0.0f, tscale = cmax / 127.0f;
  for (int i = 0; i < 16; ++i) table[i] = static_cast<int8_t>(std::nearbyint(w.code[i] * tmul));
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  q.resize(static_cast<size_t>(M * w.I));
  d.resize(static_cast<size_t>(M * (w.I / 32)));
  quantize_rows(x, M, w.I, q.data(), d.data());
  for (int64_t m0 = 0; m0 < M; m0 += kGroup) {
    const Int8Rows rows{q.data() + m0 * w.I, d.data() + m0 * (w.I / 32), std::min(kGroup, M - m0), w.I};
    float * yg = y + m0 * w.O;
    parallel_rows(w.O, grain(w.I), [&](int64_t o0, int64_t o1) { fn(rows, w, table, tscale, yg, o0, o1); });
  }
}

}  // namespace

void set_int8_activations(bool on) { g_int8_activations.store(on ? 1 : 0); }

bool int8_activations() {
  int v = g_int8_activations.load(std::memory_order_relaxed);
  if (v < 0) {
    const char * e = std::getenv("PEFT_4BIT_ACTIVATIONS");
    const std::string s = e ? e : "";
    PEFT_CHECK(s.empty() || s == "int8" || s == "float32", "PEFT_4BIT_ACTIVATIONS=", s,
               ": expected int8 (llama.cpp's Q4_0 arithmetic) or float32 (the default)");
    v = s == "int8" ? 1 : 0;
    g_int8_activations.store(v);
  }
  return v == 1;
}

void gemm_small(const float * x, int64_t M, const Weight4 & w, float * y) {
  if (int8_activations() && int8_fits(w)) return gemm_int8_activations(x, M, w, y);
  gemm_groups(x, M, w, y, active().gemm4);
}

void gemm_small(const float * x, int64_t M, const Weight8 & w, float * y) { gemm_groups(x, M, w, y, active().gemm8); }

void gemm_small(const float * x, int64_t M, const WeightF32 & w, float * y) { gemm_groups(x, M, w, y, active().gemmf); }

void gemm_small(const float * x, int64_t M, const Weight16 & w, float * y) { gemm_groups(x, M, w, y, active().gemm16); }

void dequantize_rows(const Weight4 & w, int64_t o0, int64_t o1, float * out) {
  const IsaKernels & k = active();
  parallel_rows(o1 - o0, grain(w.I), [&](int64_t a, int64_t b) { k.dequant4(w, o0 + a, o0 + b, out + a * w.I); });
}

void dequantize_rows(const Weight8 & w, int64_t o0, int64_t o1, float * out) {
  const IsaKernels & k = active();
  parallel_rows(o1 - o0, grain(w.I), [&](int64_t a, int64_t b) { k.dequant8(w, o0 + a, o0 + b, out + a * w.I); });
}

void dequantize_rows(const Weight16 & w, int64_t o0, int64_t o1, float * out) {
  const IsaKernels & k = active();
  parallel_rows(o1 - o0, grain(w.I), [&](int64_t a, int64_t b) { k.widen16(w, o0 + a, o0 + b, out + a * w.I); });
}

void axpy(int64_t n, float a, const float * x, float * y) { active().axpy(n, a, x, y); }

float quantize_block4(const float * x, int64_t n, bool tail, const float * bounds, uint8_t * out) {
  return active().block4(x, n, tail, bounds, out);
}

const char * isa() { return active().name; }

void force_isa(const char * name) {
  if (!name) {
    g_active.store(chosen());
    return;
  }
  for (const IsaKernels * k : kAll) {
    if (std::strcmp(k->name, name) != 0) continue;
    PEFT_CHECK(supported(*k), "quant kernels: this CPU lacks the instruction set '", name, "'");
    g_active.store(k);
    return;
  }
  PEFT_CHECK(false, "quant kernels: unknown or not built instruction set '", name,
             "' (expected avx512, avx2 or portable)");
}

}  // namespace peft::kernels
