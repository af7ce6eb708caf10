// peft bench: eager vs compiled in one run, on a Llama-shaped model with random weights (hidden 512,
// 8 layers, 8 heads, MLP 1376, vocab 32000) and LoRA r=16 on q,k,v,o. Beside each time, the fraction
// of this machine's limit it reaches, measured in the same run: decode against memory bandwidth (weight
// bytes read per step), prefill and training against the FLOP rate of a large float32 GEMM.
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "commands.h"
#include "common.h"
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"

namespace peft::cli {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double time_ms(const std::function<void()> & f) {
  auto a = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
}

// Two functions timed in turn (A B A B ...) so that drift on a shared machine hits both alike; returns
// the medians of A and of B and the median of the per-pair ratios A/B.
struct Paired {
  double a, b, ratio;
};
Paired paired_ms(const std::function<void()> & fa, const std::function<void()> & fb, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) {
    fa();
    fb();
  }
  std::vector<double> ta, tb, r;
  for (int i = 0; i < reps; ++i) {
    ta.push_back(time_ms(fa));
    tb.push_back(time_ms(fb));
    r.push_back(ta.back() / tb.back());
  }
  return {median(ta), median(tb), median(r)};
}

double median_ms(const std::function<void()> & f, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

ModelConfig bench_config() {
  return ModelConfig::from_json({{"model_type", "llama"},
                                 {"vocab_size", 32000},
                                 {"hidden_size", 512},
                                 {"intermediate_size", 1376},
                                 {"num_hidden_layers", 8},
                                 {"num_attention_heads", 8},
                                 {"num_key_value_heads", 8},
                                 {"max_position_embeddings", 2048}},
                                "bench config");
}

struct Row {
  std::string name;
  double eager_ms, compiled_ms;
  std::string limit;   // "bandwidth" or "flops"
  double work;         // bytes (bandwidth) or FLOPs per call
};

}  // namespace

Runner add_bench(CLI::App & app) {
  struct Opts {
    std::string json;
    int reps = 0;  // 0 = per-case defaults
    std::string only;  // run only cases whose name contains this
    bool quick = false;
    CommonOptions common;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("bench", "time eager vs compiled (decode, prefill, training step)");
  cmd->add_option("--json", o->json, "also write the results as JSON");
  cmd->add_option("--reps", o->reps, "timed repetitions per case (default: 30 decode, 5 prefill/train)")
      ->check(CLI::Range(1, 100000));
  cmd->add_flag("--quick", o->quick, "a tiny model and few repetitions (smoke test)");
  cmd->add_option("--only", o->only, "run only the cases whose name contains this text");
  add_common_options(*cmd, o->common);
  return [o]() {
    apply_common_options(o->common);
    const int threads = at::get_num_threads();
    const int blas_threads = o->common.threads > 0 ? o->common.threads : static_cast<int>(std::thread::hardware_concurrency());
    ModelConfig cfg = bench_config();
    if (o->quick) {
      cfg.vocab_size = 512;
      cfg.num_layers = 2;
    }
    const int dec_reps = o->reps ? o->reps : (o->quick ? 3 : 30);
    const int big_reps = o->reps ? o->reps : (o->quick ? 2 : 5);
    const int64_t S = o->quick ? 16 : 128, ctx = o->quick ? 8 : 64;

    // ---- machine limits, measured now ----
    at::Tensor src = at::rand({64 * 1024 * 1024}), dst = at::empty_like(src);  // 256 MB
    double copy_ms = median_ms([&] { dst.copy_(src); }, 2, o->quick ? 3 : 10);
    const double copy_gbs = 2.0 * src.numel() * 4 / (copy_ms * 1e6);  // read + write
    const int64_t n = o->quick ? 512 : 2048;
    at::Tensor ga = at::rand({n, n}), gb = at::rand({n, n});
    double gemm_ms = median_ms([&] { at::mm(ga, gb); }, 2, o->quick ? 3 : 8);
    const double gemm_gflops = 2.0 * n * n * n / (gemm_ms * 1e6);
    src = dst = ga = gb = at::Tensor();

    // ---- models: the same random base weights with and without LoRA ----
    auto base = build_model(cfg);
    init_random(*base, 1);
    base->eval();
    for (auto & p : base->parameters()) p.set_requires_grad(false);
    auto lora_base = build_model(cfg);
    init_random(*lora_base, 1);
    lora_base->eval();
    at::manual_seed(2);
    auto lora = std::make_shared<PeftModel>(
        lora_base, AdapterConfig::from_json({{"peft_type", "LORA"},
                                             {"r", 16},
                                             {"lora_alpha", 16},
                                             {"init_lora_weights", false},
                                             {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj"}}},
                                            "bench adapter"));
    auto c_lora = compile(*lora);
    auto c_base = compile(base);

    int64_t weight_bytes = 0, linear_params = 0;  // what one decode step reads; FLOPs of one token
    for (const auto & p : named_parameters(*base)) {
      if (p.first == "model.embed_tokens.weight") continue;  // one row is read, not the table
      weight_bytes += p.second.numel() * 4;
      if (p.second.dim() == 2) linear_params += p.second.numel();
    }
    int64_t lora_bytes = weight_bytes;
    for (const auto & l : lora->tuner_layers()) {
      for (const auto & p : l.second->adapter_parameters("default")) lora_bytes += p.second.numel() * 4;
    }
    auto attn_flops = [&](int64_t q, int64_t k) { return 4.0 * q * k * cfg.hidden_size * cfg.num_layers; };

    std::vector<Row> rows;
    auto wanted = [&](const std::string & name) { return o->only.empty() || name.find(o->only) != std::string::npos; };
    // a decode step at position ctx of a KV cache filled by a prefill (static cache: every step alike)
    struct DecodeState {
      KVCache cache;
      at::Tensor mask;
      ForwardInput step;
    };
    auto decode_state = [&](int64_t B, const LogitsFn & prefill) {
      auto s = std::make_shared<DecodeState>();
      s->cache = KVCache::allocate(cfg, B, ctx + 8, at::TensorOptions().dtype(at::kFloat));
      s->mask = at::zeros({B, ctx + 8}, at::kLong);
      s->mask.narrow(1, 0, ctx + 1).fill_(1);
      ForwardInput pre;
      pre.input_ids = at::randint(cfg.vocab_size, {B, ctx}, at::kLong);
      pre.cache_position = at::arange(ctx, at::kLong);
      pre.attention_mask = s->mask;
      pre.cache = &s->cache;
      at::NoGradGuard g;
      prefill(pre);
      s->step.input_ids = at::randint(cfg.vocab_size, {B, 1}, at::kLong);
      s->step.cache_position = at::full({1}, ctx, at::kLong);
      s->step.attention_mask = s->mask;
      s->step.cache = &s->cache;
      return s;
    };
    auto decode = [&](const std::string & name, int64_t B, LogitsFn eager, LogitsFn compiled, int64_t bytes) {
      if (!wanted(name)) return;
      auto s = decode_state(B, eager);
      at::NoGradGuard g;
      Paired t = paired_ms([&] { eager(s->step); }, [&] { compiled(s->step); }, 3, dec_reps);
      rows.push_back({name, t.a, t.b, "bandwidth", static_cast<double>(bytes)});
    };
    auto eager_lora = [&](const ForwardInput & in) { return lora->forward(in); };
    auto comp_lora = [&](const ForwardInput & in) { return c_lora.forward(in); };
    decode("decode_b1_lora", 1, eager_lora, comp_lora, lora_bytes);
    decode("decode_b8_lora", 8, eager_lora, comp_lora, lora_bytes);
    decode("decode_b1_base", 1, [&](const ForwardInput & in) { return base->forward(in); },
           [&](const ForwardInput & in) { return c_base.forward(in); }, weight_bytes);
    if (wanted("prefill_b1_s" + std::to_string(S) + "_lora")) {
      at::NoGradGuard g;
      ForwardInput in;
      in.input_ids = at::randint(cfg.vocab_size, {1, S}, at::kLong);
      double e = median_ms([&] { lora->forward(in); }, 1, big_reps);
      double c = median_ms([&] { c_lora.forward(in); }, 1, big_reps);
      rows.push_back({"prefill_b1_s" + std::to_string(S) + "_lora", e, c, "flops",
                      2.0 * linear_params * S + attn_flops(S, S)});
    }
    if (wanted("train_step_b4_s" + std::to_string(S) + "_lora")) {
      lora->train();
      at::Tensor ids = at::randint(cfg.vocab_size, {4, S}, at::kLong);
      TrainOptions t;
      t.lr = 1e-4;
      t.steps = 1000;
      Trainer te(eager_lora, lora->trainable_parameters(), t);
      Trainer tc(comp_lora, lora->trainable_parameters(), t);
      double e = median_ms([&] { te.step(ids); }, 1, big_reps);
      double c = median_ms([&] { tc.step(ids); }, 1, big_reps);
      lora->train(false);
      // forward + backward to the activations (frozen base weights need no weight gradient)
      rows.push_back({"train_step_b4_s" + std::to_string(S) + "_lora", e, c, "flops",
                      2.0 * (2.0 * linear_params * 4 * S + attn_flops(4 * S, S))});
    }

    // ---- report ----
    std::printf("peft bench: %d BLAS threads, %d intra-op threads; copy bandwidth %.1f GB/s (read+write); float32 GEMM %lldx%lld: %.1f GFLOP/s\n",
                blas_threads, threads, copy_gbs, static_cast<long long>(n), static_cast<long long>(n), gemm_gflops);
    std::printf("%-26s %10s %12s %8s %16s %16s\n", "case", "eager ms", "compiled ms", "speedup", "eager of limit",
                "compiled of limit");
    nlohmann::json out = nlohmann::json::array();
    for (const auto & r : rows) {
      auto frac = [&](double ms) {
        return r.limit == "bandwidth" ? (r.work / (ms * 1e6)) / copy_gbs : (r.work / (ms * 1e6)) / gemm_gflops;
      };
      std::printf("%-26s %10.2f %12.2f %7.2fx %15.0f%% %15.0f%%\n", r.name.c_str(), r.eager_ms, r.compiled_ms,
                  r.eager_ms / r.compiled_ms, 100 * frac(r.eager_ms), 100 * frac(r.compiled_ms));
      out.push_back({{"name", r.name},
                     {"eager_ms", r.eager_ms},
                     {"compiled_ms", r.compiled_ms},
                     {"speedup", r.eager_ms / r.compiled_ms},
                     {"limit", r.limit == "bandwidth" ? "memory bandwidth" : "float32 GEMM FLOP rate"},
                     {"eager_fraction_of_limit", frac(r.eager_ms)},
                     {"compiled_fraction_of_limit", frac(r.compiled_ms)}});
    }
    double lora_vs_base = 0;
    if (wanted("decode_b1_lora") && wanted("decode_b1_base")) {
      // the adapter's cost once compiled: compiled LoRA and compiled base decode steps in turn
      auto sl = decode_state(1, comp_lora);
      auto sb = decode_state(1, [&](const ForwardInput & in) { return c_base.forward(in); });
      at::NoGradGuard g;
      lora_vs_base = paired_ms([&] { c_lora.forward(sl->step); }, [&] { c_base.forward(sb->step); }, 3, dec_reps * 2).ratio;
      std::printf("compiled decode_b1_lora / compiled decode_b1_base = %.3f (median of %d paired runs)\n", lora_vs_base,
                  dec_reps * 2);
    }
    if (!o->json.empty()) {
      nlohmann::json doc = out;
      write_file_atomic(o->json, doc.dump(2) + "\n");
      // machine figures go to a sidecar so that the main file keeps the required list shape
      write_file_atomic(o->json + ".machine.json", nlohmann::json({{"threads", threads},
                                                                   {"copy_gbs", copy_gbs},
                                                                   {"gemm_gflops", gemm_gflops},
                                                                   {"compiled_lora_over_base_decode_b1", lora_vs_base}})
                                                       .dump(2) + "\n");
    }
    return 0;
  };
}

}  // namespace peft::cli
