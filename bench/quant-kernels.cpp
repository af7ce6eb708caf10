// Timing of the quantized-linear CPU kernels (src/kernels) against float32 at::mv / at::mm on the
// same shapes: time per call, weights/s and the weight bytes read per second, for M = 1 and 8 rows of x,
// 1 and 2 threads (the kernel pool and OpenBLAS alike); f32small: the float32 small-M kernel (peft::linear_small) at 1 and 8 rows;
// bf16: the 16-bit weight kernel (peft::linear_16bit) beside ATen's bfloat16 at::linear; 4-bit-q8: the 4-bit kernel
// with int8 activations (PEFT_4BIT_ACTIVATIONS=int8, llama.cpp's Q4_0 x Q8_0 arithmetic).
// Usage: bench_quant_kernels [isa [cold|prefill]]   (avx512, avx2, portable; default: the best; cold: a 4-bit
// weight streamed from memory; prefill: 64 and 512 rows through the tiles)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include "peft/util/runtime.h"
#include "kernels/kernels.h"
#include "kernels/linear-quant.h"

using namespace peft::kernels;
using peft::configure_runtime;
using peft::RuntimeOptions;

namespace {

// Seconds per call: the best of 5 batches of calls, each batch about 0.1 s.
double seconds_per_call(const std::function<void()> & f) {
  using clock = std::chrono::steady_clock;
  f();
  auto t0 = clock::now();
  f();
  const double once = std::max(1e-7, std::chrono::duration<double>(clock::now() - t0).count());
  const int n = std::max(1, int(0.1 / once));
  double best = 1e30;
  for (int batch = 0; batch < 5; ++batch) {
    t0 = clock::now();
    for (int i = 0; i < n; ++i) f();
    best = std::min(best, std::chrono::duration<double>(clock::now() - t0).count() / n);
  }
  return best;
}

void report(const char * kind, int64_t O, int64_t I, int64_t M, int threads, double bytes, double s, double base) {
  std::printf("%-8s O %5lld I %5lld M %2lld threads %d: %9.1f us  %6.2f Gweights/s  %6.2f GB/s  x%.2f vs float32\n",
              kind, (long long)O, (long long)I, (long long)M, threads, s * 1e6, O * I / s * 1e-9, bytes / s * 1e-9,
              base / s);
}

void bench_shape(int64_t O, int64_t I, int threads) {
  const int64_t blocksize = 64, n = O * I;
  const at::Tensor packed = at::randint(0, 256, {n / 2}, at::kByte), absmax = at::rand({n / blocksize});
  const at::Tensor code = at::randn({16}), CB = at::randint(-127, 128, {O, I}, at::kChar), SCB = at::rand({O});
  const at::Tensor W = at::randn({O, I});
  const Weight4 w4{packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), code.data_ptr<float>(), O, I, blocksize};
  const Weight8 w8{CB.data_ptr<int8_t>(), SCB.data_ptr<float>(), O, I};
  for (int64_t M : {1, 8}) {
    const at::Tensor x = at::randn({M, I});
    at::Tensor y = at::empty({M, O}), y0 = y[0];
    const double base = M == 1 ? seconds_per_call([&] { at::mv_out(y0, W, x[0]); })
                               : seconds_per_call([&] { at::mm_out(y, x, W.t()); });
    report("float32", O, I, M, threads, 4.0 * n, base, base);
    const double t4 = seconds_per_call([&] { gemm_small(x.data_ptr<float>(), M, w4, y.data_ptr<float>()); });
    report("4-bit", O, I, M, threads, n / 2.0 + 4.0 * n / blocksize, t4, base);
    set_int8_activations(true);
    const double t4q = seconds_per_call([&] { gemm_small(x.data_ptr<float>(), M, w4, y.data_ptr<float>()); });
    set_int8_activations(false);
    report("4-bit-q8", O, I, M, threads, n / 2.0 + 4.0 * n / blocksize, t4q, base);
    const double t8 = seconds_per_call([&] { gemm_small(x.data_ptr<float>(), M, w8, y.data_ptr<float>()); });
    report("int8", O, I, M, threads, double(n) + 4.0 * O, t8, base);
    const at::Tensor Wb = W.to(at::kBFloat16);
    const double tb = seconds_per_call([&] { gemm_small(x.data_ptr<float>(), M, weight16(Wb), y.data_ptr<float>()); });
    report("bf16", O, I, M, threads, 2.0 * n, tb, base);
    const at::Tensor xb = x.to(at::kBFloat16);
    const double ta = seconds_per_call([&] { at::linear(xb, Wb); });
    report("aten-bf16", O, I, M, threads, 2.0 * n, ta, base);
    const WeightF32 wf{W.data_ptr<float>(), O, I};
    const double tf = seconds_per_call([&] { gemm_small(x.data_ptr<float>(), M, wf, y.data_ptr<float>()); });
    report("f32small", O, I, M, threads, 4.0 * n, tf, base);
  }
}

}  // namespace

// 4-bit M = 1 from memory: a weight of 128 MB packed, beyond any cache (a decode step's case: each weight
// is read once per token, long after it was last in cache)
void bench_cold4(int threads) {
  const int64_t O = 1 << 19, I = 512, blocksize = 64, n = O * I;
  const at::Tensor packed = at::randint(0, 256, {n / 2}, at::kByte), absmax = at::rand({n / blocksize});
  const at::Tensor code = at::randn({16}), x = at::randn({1, I});
  at::Tensor y = at::empty({1, O});
  const Weight4 w4{packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), code.data_ptr<float>(), O, I, blocksize};
  const double t4 = seconds_per_call([&] { gemm_small(x.data_ptr<float>(), 1, w4, y.data_ptr<float>()); });
  report("4-bit", O, I, 1, threads, n / 2.0 + 4.0 * n / blocksize, t4, t4);
}

// Many rows (prefill, training): W (O, I) 4-bit / bf16 through tiles widened for BLAS, against float32 at::mm
void bench_prefill(int64_t M, int64_t O, int64_t I, int threads) {
  const int64_t blocksize = 64, n = O * I;
  const at::Tensor packed = at::randint(0, 256, {n / 2}, at::kByte), absmax = at::rand({n / blocksize});
  const at::Tensor code = at::randn({16}), W = at::randn({O, I}), Wb = W.to(at::kBFloat16), x = at::randn({M, I});
  const Weight4 w4{packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), code.data_ptr<float>(), O, I, blocksize};
  at::Tensor y = at::empty({M, O});
  const double base = seconds_per_call([&] { at::mm_out(y, x, W.t()); });
  report("float32", O, I, M, threads, 4.0 * n, base, base);
  report("4-bit", O, I, M, threads, n / 2.0, seconds_per_call([&] { linear_forward(x, w4); }), base);
  report("bf16", O, I, M, threads, 2.0 * n, seconds_per_call([&] { linear_forward(x, weight16(Wb)); }), base);
}

int main(int argc, char ** argv) {
  force_isa(argc > 1 ? argv[1] : nullptr);
  std::printf("quant kernels: %s\n", isa());
  if (argc > 2 && std::string(argv[2]) == "prefill") {
    for (int threads : {1, 2}) {
      RuntimeOptions o;
      o.blas_threads = threads;
      configure_runtime(o);
      for (int64_t M : {64, 512}) bench_prefill(M, 8192, 2048, threads);
    }
    return 0;
  }
  if (argc > 2 && std::string(argv[2]) == "cold") {
    for (int threads : {1, 2}) {
      RuntimeOptions o;
      o.blas_threads = threads;
      configure_runtime(o);
      bench_cold4(threads);
    }
    return 0;
  }
  for (int threads : {1, 2}) {
    RuntimeOptions o;  // the kernel pool and OpenBLAS both get `threads` (LibTorch's own pool stays at 1)
    o.blas_threads = threads;
    configure_runtime(o);
    bench_shape(1376, 512, threads);
    bench_shape(32000, 512, threads);
    bench_shape(4096, 4096, threads);
  }
}
