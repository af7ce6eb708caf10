// Microbenchmarks (Google Benchmark) of the kernels the compile passes choose between, on the
// `peft bench` model's shapes (hidden 512, LoRA r=16, LM head 32000 x 512):
//   ./build/bench/bench_ops
#include <benchmark/benchmark.h>

#include "peft/ops/adapter-ops.h"
#include "peft/util/runtime.h"

namespace {

void BM_LinearOneRow(benchmark::State & s) {
  at::Tensor W = at::randn({s.range(0), 512}), x = at::randn({1, 1, 512});
  for (auto _ : s) benchmark::DoNotOptimize(at::linear(x, W));
  s.SetBytesProcessed(s.iterations() * W.numel() * 4);
}

void BM_GemvOneRow(benchmark::State & s) {
  at::Tensor W = at::randn({s.range(0), 512}), x = at::randn({1, 1, 512});
  for (auto _ : s) benchmark::DoNotOptimize(peft::ops::linear_gemv(x, W, c10::nullopt));
  s.SetBytesProcessed(s.iterations() * W.numel() * 4);
}

void BM_LoraAdd(benchmark::State & s) {
  const int64_t rows = s.range(0);
  at::Tensor x = at::randn({rows, 512}), W = at::randn({512, 512}), A = at::randn({16, 512}), B = at::randn({512, 16});
  at::Tensor scale = at::full({}, 2.0);
  for (auto _ : s) benchmark::DoNotOptimize(peft::ops::lora_add(at::linear(x, W), x, A, B, c10::nullopt, scale, 0, false));
}

void BM_LoraAddFused(benchmark::State & s) {
  const int64_t rows = s.range(0);
  at::Tensor x = at::randn({rows, 512}), W = at::randn({512, 512}), A = at::randn({16, 512}), B = at::randn({512, 16});
  at::Tensor scale = at::full({}, 2.0);
  for (auto _ : s) {
    benchmark::DoNotOptimize(peft::ops::lora_add_fused(at::linear(x, W), x, A, B, c10::nullopt, scale, 0, false));
  }
}

void BM_FoldedLinear(benchmark::State & s) {
  const int64_t rows = s.range(0);
  at::Tensor x = at::randn({rows, 512}), W = at::randn({512, 512});
  for (auto _ : s) benchmark::DoNotOptimize(at::linear(x, W));
}

}  // namespace

BENCHMARK(BM_LinearOneRow)->Arg(512)->Arg(32000);
BENCHMARK(BM_GemvOneRow)->Arg(512)->Arg(32000);
BENCHMARK(BM_LoraAdd)->Arg(1)->Arg(128);
BENCHMARK(BM_LoraAddFused)->Arg(1)->Arg(128);
BENCHMARK(BM_FoldedLinear)->Arg(1)->Arg(128);

int main(int argc, char ** argv) {
  peft::configure_runtime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
