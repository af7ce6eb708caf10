// peft bench: eager vs compiled in one run, on a Llama-shaped model with random weights (hidden 512,
// 8 layers, 8 heads, MLP 1376, vocab 32000) and LoRA r=16 on q,k,v,o. Beside each time, the fraction
// of this machine's limit it reaches, measured in the same run: decode against memory bandwidth (weight
// bytes read per step), prefill and training against the FLOP rate of a large float32 GEMM.
// Quantized rows (QLoRA): the same random float weights quantized to NF4 / int8 (lm_head kept in float,
// as transformers does, unless --quantize-lm-head) before the same LoRA is added; their peak RSS is
// measured in a child process per configuration (this program re-run with --memory-probe ROW).
#include <ATen/Parallel.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "commands.h"
#include "common.h"
#include "op-profile.h"
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/io/atomic-file.h"
#include "peft/io/files.h"
#include "peft/nn/module.h"
#include "peft/peft-model.h"
#include "peft/quant/quantize.h"
#include "peft/train/trainer.h"
#include "peft/util/runtime.h"

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

// The bench models: float base weights from seed 1, optionally quantized, LoRA from seed 2 (the same
// adapter weights whatever the base format).
struct BenchModel {
  std::shared_ptr<CausalLM> base;
  std::shared_ptr<PeftModel> lora;
  quant::WeightFootprint footprint;  // the base model's weights (before the adapter)
  std::shared_ptr<CompiledModel> compiled;
};

// LoRA r=16 on q,k,v,o (or on every Linear but lm_head: targets "all-linear", as PEFT spells it)
AdapterConfig bench_lora_config(const std::string & targets = "") {
  nlohmann::json t = nlohmann::json::array({"q_proj", "k_proj", "v_proj", "o_proj"});
  if (targets == "all-linear") t = "all-linear";
  return AdapterConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 16}, {"lora_alpha", 16}, {"init_lora_weights", false}, {"target_modules", t}},
      "bench adapter");
}

std::shared_ptr<BenchModel> make_bench_model(const ModelConfig & cfg, quant::Format format, bool quantize_lm_head) {
  auto m = std::make_shared<BenchModel>();
  m->base = build_model(cfg);
  init_random(*m->base, 1);
  m->base->eval();
  if (format != quant::Format::none) {
    quant::QuantOptions q;
    q.format = format;
    if (quantize_lm_head) q.skip.clear();
    quant::quantize_modules(m->base, q);
  }
  m->footprint = quant::weight_footprint(m->base);
  at::manual_seed(2);
  m->lora = std::make_shared<PeftModel>(m->base, bench_lora_config());
  m->compiled = std::make_shared<CompiledModel>(compile(*m->lora));
  return m;
}


// ---- real shapes (peft bench --shape llama-3.2-1b | llama-3-8b, or --model DIR) ----
// Llama-3.2-1B and Llama-3-8B as configs, with an untied head (lm_head its own weight, so that the
// quantized rows can quantize it like llama.cpp's output tensor; a decode step reads the same bytes tied
// or not). Random weights (normal, std 0.02; norms 1), or the weights of --model.
nlohmann::json shape_json(const std::string & shape) {
  if (shape == "bench") {
    return {{"model_type", "llama"},       {"vocab_size", 32000},         {"hidden_size", 512},
            {"intermediate_size", 1376},   {"num_hidden_layers", 8},      {"num_attention_heads", 8},
            {"num_key_value_heads", 8},    {"max_position_embeddings", 2048}};
  }
  nlohmann::json j = {{"model_type", "llama"},       {"vocab_size", 128256},         {"num_key_value_heads", 8},
                      {"max_position_embeddings", 8192}, {"rope_theta", 500000.0},   {"rms_norm_eps", 1e-5},
                      {"tie_word_embeddings", false}};
  if (shape == "llama-3.2-1b") {
    j.update({{"hidden_size", 2048}, {"intermediate_size", 8192}, {"num_hidden_layers", 16}, {"num_attention_heads", 32},
              {"head_dim", 64}});
  } else if (shape == "llama-3-8b") {
    j.update({{"hidden_size", 4096}, {"intermediate_size", 14336}, {"num_hidden_layers", 32}, {"num_attention_heads", 32},
              {"head_dim", 128}});
  } else {
    fail(str("--shape: unknown shape '", shape, "' (bench, llama-3.2-1b, llama-3-8b)"));
  }
  return j;
}
ModelConfig shape_config(const std::string & shape) { return ModelConfig::from_json(shape_json(shape), "bench shape " + shape); }

// A random model of `cfg` with float weights in `dtype`, its Linear layers quantized by `q` (if enabled)
// one decoder layer at a time: a quantized model never holds its float weights whole (Llama-3-8B in nf4
// is built in ~6 GB, never in float32).
std::shared_ptr<CausalLM> random_model(const ModelConfig & cfg, at::ScalarType dtype, const quant::QuantOptions & q,
                                       uint64_t seed) {
  auto m = build_model(cfg);  // uninitialised: nothing is touched yet
  at::NoGradGuard g;
  for (auto & p : m->parameters(true)) {
    if (p.is_floating_point() && p.scalar_type() != dtype) p.set_data(at::empty(p.sizes(), p.options().dtype(dtype)));
  }
  m->to(dtype);
  auto gen = at::detail::createCPUGenerator(seed);
  auto fill = [&](const std::string & n, at::Tensor & t) {
    if (n.size() >= 4 && n.compare(n.size() - 4, 4, "bias") == 0) {
      t.zero_();
    } else if (t.dim() == 1) {
      t.fill_(1.0);
    } else if (t.scalar_type() == at::kFloat) {
      t.normal_(0.0, 0.02, gen);  // (in place: no second copy of the embedding table)
    } else {
      t.copy_(at::normal(0.0, 0.02, t.sizes(), gen).to(t.scalar_type()));
    }
  };
  const std::string lp = "model.layers.";
  // (the decoder layers only: a list of every module would keep the replaced float Linear layers alive)
  std::vector<ModulePtr> layers;
  for (const auto & [path, mod] : named_modules(m)) {
    if (path.rfind(lp, 0) == 0 && path.find('.', lp.size()) == std::string::npos) layers.push_back(mod);  // model.layers.N
  }
  for (const auto & mod : layers) {
    for (auto & p : mod->named_parameters(true)) fill(p.key(), p.value());
    if (q.enabled()) {
      quant::quantize_modules(mod, q);
      ::malloc_trim(0);  // the layer's float weights go back to the OS now (glibc keeps freed chunks < 32 MB)
    }
  }
  // the output layer next (quantized before the embedding table is written), then the rest
  for (auto & p : m->named_parameters(true)) {
    if (p.key().rfind("lm_head.", 0) == 0) fill(p.key(), p.value());
  }
  if (q.enabled()) {
    quant::quantize_modules(m, q);  // (what is left: lm_head unless skipped)
    ::malloc_trim(0);
  }
  for (auto & p : m->named_parameters(true)) {
    if (p.key().rfind(lp, 0) != 0 && p.key().rfind("lm_head.", 0) != 0) fill(p.key(), p.value());
  }
  m->tie_weights();
  m->eval();
  for (auto & p : m->parameters()) p.set_requires_grad(false);
  return m;
}

// One format's rows (a child process per format: its peak RSS is its own). Prints one JSON line per row
// ("ROW {...}") and one for the model ("MODEL {...}").
struct ShapeArgs {
  std::string shape, model, only, format, lora_targets;
  int reps = 0;
  bool quantize_lm_head = false;
  int64_t prefill_len = 512, ctx = 64;
};

int run_shape_group(const ShapeArgs & a) {
  auto wanted = [&](const std::string & name) { return a.only.empty() || name.find(a.only) != std::string::npos; };
  const std::string F = a.format;
  const at::ScalarType dtype = F == "bf16" ? at::kBFloat16 : at::kFloat;
  quant::QuantOptions q;
  if (F == "nf4") q.format = quant::Format::nf4;
  else if (F == "int8") q.format = quant::Format::int8;
  else PEFT_CHECK(F == "f32" || F == "bf16", "--formats: unknown format '", F, "' (f32, bf16, int8, nf4)");
  if (a.quantize_lm_head) q.skip.clear();
  const std::string sp = "_s" + std::to_string(a.prefill_len);
  const std::string dec = "decode_b1_" + F, dec_l = dec + "_lora", pre = "prefill_b1" + sp + "_" + F + "_lora",
                    tr = "train_step_b1" + sp + "_" + F + "_lora", tr_ck = tr + "_ckpt";
  const bool big = a.shape == "llama-3-8b";
  // the 8B shape: memory and decode rows only, unless --only names a row
  const bool want_dec = wanted(dec) || wanted(dec_l), want_pre = wanted(pre) && (!big || !a.only.empty()),
             want_tr = (wanted(tr) || wanted(tr_ck)) && (!big || !a.only.empty());
  if (!want_dec && !want_pre && !want_tr) return 0;

  const int64_t start_kb = process_status_kb("VmRSS");
  auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<CausalLM> base;
  if (!a.model.empty()) {
    LoadOptions lo;
    lo.dtype = dtype;
    lo.quantize = q;
    base = load_model(a.model, lo);
  } else {
    base = random_model(shape_config(a.shape), dtype, q, 1);
  }
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t build_peak_kb = process_status_kb("VmHWM");
  ::malloc_trim(0);
  const int64_t model_kb = process_status_kb("VmRSS");
  const auto fp = quant::weight_footprint(base);
  const ModelConfig cfg = base->config();
  at::manual_seed(2);
  PeftModel lora(base, bench_lora_config(a.lora_targets));
  CompiledModel comp = compile(lora);
  std::printf("MODEL %s\n", nlohmann::json({{"format", F},
                                             {"params", fp.params},
                                             {"weight_bytes", fp.bytes},
                                             {"start_rss_kb", start_kb},
                                             {"build_peak_rss_kb", build_peak_kb},
                                             {"model_rss_kb", model_kb},
                                             {"build_s", build_s}})
                                 .dump()
                                 .c_str());
  std::fflush(stdout);
  auto row = [&](const std::string & name, double ms, double tokens, nlohmann::json extra) {
    extra["row"] = name;
    extra["ms"] = ms;
    extra["tokens_per_s"] = tokens * 1000.0 / ms;
    extra["peak_rss_kb"] = process_status_kb("VmHWM");
    std::printf("ROW %s\n", extra.dump().c_str());
    std::fflush(stdout);
  };
  auto f = [&](const ForwardInput & in) { return comp.forward(in); };
  if (want_dec) {
    // a decode step at position ctx of a KV cache filled by a prefill (static cache: every step alike); the
    // same compiled model with the adapters disabled (PEFT's disable_adapter) and enabled, in turn (A B A B)
    const int reps = a.reps ? a.reps : (big ? 4 : 10);
    at::Tensor emb;
    for (const auto & p : named_parameters(*base)) {
      if (p.second.is_floating_point()) {
        emb = p.second;
        break;
      }
    }
    KVCache cache = KVCache::allocate(cfg, 1, a.ctx + 8, at::TensorOptions().dtype(emb.scalar_type()));
    at::Tensor mask = at::zeros({1, a.ctx + 8}, at::kLong);
    mask.narrow(1, 0, a.ctx + 1).fill_(1);
    at::NoGradGuard g;
    ForwardInput p;
    p.input_ids = at::randint(cfg.vocab_size, {1, a.ctx}, at::kLong);
    p.cache_position = at::arange(a.ctx, at::kLong);
    p.attention_mask = mask;
    p.cache = &cache;
    f(p);
    ForwardInput s;
    s.input_ids = at::randint(cfg.vocab_size, {1, 1}, at::kLong);
    s.cache_position = at::full({1}, a.ctx, at::kLong);
    s.attention_mask = mask;
    s.cache = &cache;
    reset_peak_rss();
    Paired t = paired_ms(
        [&] {
          lora.set_adapters_disabled(true);
          f(s);
        },
        [&] {
          lora.set_adapters_disabled(false);
          f(s);
        },
        2, reps);
    lora.set_adapters_disabled(false);
    const auto st = comp.stats();
    row(dec, t.a, 1, {{"reps", reps}, {"ctx", a.ctx}});
    row(dec_l, t.b, 1,
        {{"reps", reps}, {"ctx", a.ctx}, {"lora_over_base_throughput", t.ratio}, {"graphs", st.graphs}, {"compiles", st.compiles}});
  }
  if (want_pre) {
    const int reps = a.reps ? std::min(a.reps, 3) : 2;
    at::NoGradGuard g;
    ForwardInput in;
    in.input_ids = at::randint(cfg.vocab_size, {1, a.prefill_len}, at::kLong);
    reset_peak_rss();
    const double ms = median_ms([&] { f(in); }, 1, reps);
    row(pre, ms, static_cast<double>(a.prefill_len), {{"reps", reps}});
  }
  if (want_tr) {
    // a LoRA training step (forward, backward, AdamW) on one sequence of prefill_len tokens, eager (as the
    // earlier figures were taken), without and with gradient checkpointing. --reps 1: one step only, the
    // first (its optimizer state is allocated in it; what a long step at the 8B shape can afford)
    const int reps = a.reps ? std::min(a.reps, 3) : 2;
    const bool one_step = a.reps == 1;
    TrainOptions topt;
    topt.lr = 1e-4;
    topt.steps = 1000;
    topt.batch_size = 1;
    at::Tensor ids = at::randint(cfg.vocab_size, {1, a.prefill_len}, at::kLong);
    lora.train();
    for (const bool ck : {false, true}) {
      const std::string name = ck ? tr_ck : tr;
      if (!wanted(name)) continue;
      base->set_gradient_checkpointing(ck);
      Trainer t([&](const ForwardInput & in) { return lora.forward(in); }, lora.trainable_parameters(), topt);
      if (!one_step) {
        t.step(ids);  // (warm-up; the optimizer state is allocated here)
        reset_peak_rss();
      }
      const double ms = median_ms([&] { t.step(ids); }, 0, reps);
      row(name, ms, static_cast<double>(a.prefill_len),
          {{"reps", reps},
           {"gradient_checkpointing", ck},
           {"first_step", one_step},
           {"lora_targets", a.lora_targets.empty() ? "q,k,v,o" : a.lora_targets}});
    }
    base->set_gradient_checkpointing(false);
    lora.train(false);
  }
  return 0;
}

// The parent: one child process per format (this program with --group FORMAT), their rows in one table.
int run_shape_bench(const ShapeArgs & a, const std::vector<std::string> & formats, const CommonOptions & common,
                    const std::string & json_out) {
  char exe[4096];
  const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  PEFT_CHECK(len > 0, "cannot find this program's path");
  exe[len] = '\0';
  const int blas_threads = common.threads > 0 ? common.threads : default_blas_threads();
  auto quote = [](const std::string & s) {
    std::string r = "'";
    for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return r + "'";
  };
  nlohmann::json models = nlohmann::json::object(), rows = nlohmann::json::array();
  for (const auto & F : formats) {
    std::string line = quote(exe) + " bench --shape " + quote(a.shape) + " --group " + quote(F) +
                       " --threads " + std::to_string(blas_threads) + " --intra-op-threads " +
                       std::to_string(common.intra_op_threads) + " --prefill-len " + std::to_string(a.prefill_len);
    if (!a.model.empty()) line += " --model " + quote(a.model);
    if (!a.only.empty()) line += " --only " + quote(a.only);
    if (a.reps) line += " --reps " + std::to_string(a.reps);
    if (a.quantize_lm_head) line += " --quantize-lm-head";
    if (!a.lora_targets.empty()) line += " --lora-targets " + quote(a.lora_targets);
    line += " 2>&1";
    FILE * p = ::popen(line.c_str(), "r");
    PEFT_CHECK(p, "cannot start ", line);
    std::string text;
    char buf[4096];
    while (::fgets(buf, sizeof buf, p)) {
      const std::string l = buf;
      text += l;
      if (l.rfind("MODEL ", 0) == 0) {
        auto j = nlohmann::json::parse(l.substr(6));
        models[F] = j;
        std::fprintf(stderr, "%s: model built in %.1f s, %.0f MB resident (peak while building %.0f MB)\n", F.c_str(),
                     j["build_s"].get<double>(), j["model_rss_kb"].get<double>() / 1024,
                     j["build_peak_rss_kb"].get<double>() / 1024);
      } else if (l.rfind("ROW ", 0) == 0) {
        auto j = nlohmann::json::parse(l.substr(4));
        j["format"] = F;
        rows.push_back(j);
        std::fprintf(stderr, "  %-34s %9.2f ms  %9.2f tokens/s\n", j["row"].get<std::string>().c_str(),
                     j["ms"].get<double>(), j["tokens_per_s"].get<double>());
      }
    }
    const int status = ::pclose(p);
    PEFT_CHECK(status == 0, "the bench of format ", F, " failed: ", text.substr(text.size() > 2000 ? text.size() - 2000 : 0));
  }
  const ModelConfig cfg = a.model.empty() ? shape_config(a.shape) : ModelConfig::load(a.model);
  const char * isa = std::getenv("PEFT_ISA");
  std::printf("peft bench %s%s: hidden %lld, %lld layers, vocab %lld; %d BLAS threads; PEFT_ISA=%s; LoRA r=16 on "
              "%s; lm_head %s in the quantized rows\n",
              a.model.empty() ? ("--shape " + a.shape).c_str() : ("--model " + a.model).c_str(),
              a.model.empty() ? " (random weights)" : "",
              static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.num_layers),
              static_cast<long long>(cfg.vocab_size), blas_threads, isa ? isa : "(unset)",
              a.lora_targets.empty() ? "q,k,v,o" : a.lora_targets.c_str(), a.quantize_lm_head ? "quantized" : "float");
  std::printf("%-36s %10s %10s %12s %10s\n", "row", "ms", "tokens/s", "peak RSS MB", "model MB");
  for (const auto & r : rows) {
    const std::string F = r["format"];
    std::printf("%-36s %10.2f %10.2f %12.0f %10.0f\n", r["row"].get<std::string>().c_str(), r["ms"].get<double>(),
                r["tokens_per_s"].get<double>(), r["peak_rss_kb"].get<double>() / 1024,
                models[F]["model_rss_kb"].get<double>() / 1024);
  }
  for (const auto & r : rows) {
    if (r.contains("lora_over_base_throughput")) {
      std::printf("%s: LoRA r=16 q,k,v,o decode throughput / without = %.3fx (target >= 0.9x; median of %d paired steps)\n",
                  r["format"].get<std::string>().c_str(), r["lora_over_base_throughput"].get<double>(), r["reps"].get<int>());
    }
  }
  for (const auto & [F, m] : models.items()) {
    std::printf("%s model: %.0f MB resident after building (%.0f MB peak while building, %.0f MB before), weights %.0f MB, "
                "built in %.1f s\n",
                F.c_str(), m["model_rss_kb"].get<double>() / 1024, m["build_peak_rss_kb"].get<double>() / 1024,
                m["start_rss_kb"].get<double>() / 1024, m["weight_bytes"].get<double>() / 1048576, m["build_s"].get<double>());
  }
  if (!json_out.empty()) {
    write_file_atomic(json_out, nlohmann::json({{"shape", a.shape},
                                                {"model", a.model},
                                                {"threads", blas_threads},
                                                {"peft_isa", isa ? isa : ""},
                                                {"quantize_lm_head", a.quantize_lm_head},
                                                {"models", models},
                                                {"rows", rows}})
                                        .dump(2) +
                                    "\n");
  }
  return 0;
}

// --save-model: the random model of a shape as a checkpoint folder (float32), for llama.cpp's GGUF export.
int save_shape_model(const std::string & shape, const std::string & dir) {
  PEFT_CHECK(shape != "llama-3-8b", "--save-model: the llama-3-8b shape is not written in float32 (32 GB)");
  const ModelConfig cfg = shape_config(shape);
  auto m = random_model(cfg, at::kFloat, {}, 1);
  nlohmann::json j = shape_json(shape);
  j["architectures"] = {"LlamaForCausalLM"};
  j["torch_dtype"] = "float32";
  j["bos_token_id"] = 1;
  j["pad_token_id"] = 0;
  save_model(*m, dir, j);
  return 0;
}

}  // namespace

Runner add_bench(CLI::App & app) {
  struct Opts {
    std::string json;
    int reps = 0;  // 0 = per-case defaults
    std::string only;  // run only cases whose name contains this
    bool quick = false;
    bool quantize_lm_head = false;
    bool no_memory = false;
    int profile = 0;  // ops listed per decode row (0: no profile)
    std::string memory_probe;  // internal: build one row's model, run it, print peak RSS as JSON
    std::string shape = "bench", model, formats, save_model, group, lora_targets;
    int64_t prefill_len = 512;
    CommonOptions common;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("bench", "time eager vs compiled (decode, prefill, training step; float and quantized bases)");
  cmd->add_option("--json", o->json, "also write the results as JSON");
  cmd->add_option("--reps", o->reps,
                  "timed repetitions per case (default: 30 decode, 5 prefill/train; real-shape rows: --reps 1 times "
                  "one training step, the first)")
      ->check(CLI::Range(1, 100000));
  cmd->add_flag("--quick", o->quick, "a tiny model and few repetitions (smoke test)");
  cmd->add_option("--only", o->only, "run only the cases whose name contains this text (e.g. nf4, int8, decode)");
  cmd->add_flag("--quantize-lm-head", o->quantize_lm_head,
                "quantized rows: quantize lm_head too (default: kept in float, as transformers does)");
  cmd->add_flag("--no-memory", o->no_memory, "skip the peak-RSS child processes of the quantized rows");
  cmd->add_option("--profile", o->profile,
                 "after each decode row, time its compiled step op by op (self time) and list the top N ops")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--memory-probe", o->memory_probe, "internal: peak RSS of one row's configuration")->group("");
  cmd->add_option("--shape", o->shape,
                  "the model's shape: bench (default: hidden 512, 8 layers, the eager/compiled table), llama-3.2-1b or "
                  "llama-3-8b (random weights; untied head): decode b1 per format with and without LoRA, prefill, "
                  "LoRA training steps with and without gradient checkpointing, tokens/s and peak RSS")
      ->check(CLI::IsMember({"bench", "llama-3.2-1b", "llama-3-8b"}));
  cmd->add_option("--model", o->model, "real-shape rows on this checkpoint folder's weights instead of random ones");
  cmd->add_option("--formats", o->formats,
                  "real-shape rows: the base formats, comma-separated (default f32,bf16,int8,nf4; llama-3-8b: nf4)");
  cmd->add_option("--prefill-len", o->prefill_len, "real-shape rows: prompt length of prefill and training rows (default 512)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--save-model", o->save_model, "write the random model of --shape (float32) to this folder and stop");
  cmd->add_option("--lora-targets", o->lora_targets,
                  "real-shape rows: all-linear puts the LoRA on every Linear but lm_head (default q,k,v,o)")
      ->check(CLI::IsMember({"all-linear"}));
  cmd->add_option("--group", o->group, "internal: one format's real-shape rows")->group("");
  add_common_options(*cmd, o->common);
  return [o]() {
    apply_common_options(o->common);
    if (!o->save_model.empty()) return save_shape_model(o->shape, o->save_model);
    if (o->shape != "bench" || !o->model.empty()) {
      ShapeArgs a;
      a.shape = o->shape;
      a.model = o->model;
      a.only = o->only;
      a.reps = o->reps;
      a.quantize_lm_head = o->quantize_lm_head;
      a.lora_targets = o->lora_targets;
      a.prefill_len = o->prefill_len;
      if (o->quick) a.prefill_len = std::min<int64_t>(a.prefill_len, 32);
      if (!o->group.empty()) {
        a.format = o->group;
        return run_shape_group(a);
      }
      std::vector<std::string> formats;
      std::string fs = o->formats.empty() ? (o->shape == "llama-3-8b" ? "nf4" : "f32,bf16,int8,nf4") : o->formats;
      for (size_t i = 0; i <= fs.size();) {
        size_t j = fs.find(',', i);
        if (j == std::string::npos) j = fs.size();
        if (j > i) formats.push_back(fs.substr(i, j - i));
        i = j + 1;
      }
      for (const auto & f : formats) {
        PEFT_CHECK(f == "f32" || f == "bf16" || f == "int8" || f == "nf4", "--formats: unknown format '", f,
                   "' (f32, bf16, int8, nf4)");
      }
      return run_shape_bench(a, formats, o->common, o->json);
    }
    const int threads = at::get_num_threads();
    const int blas_threads = o->common.threads > 0 ? o->common.threads : default_blas_threads();
    ModelConfig cfg = bench_config();
    if (o->quick) {
      cfg.vocab_size = 512;
      cfg.num_layers = 2;
    }
    const int dec_reps = o->reps ? o->reps : (o->quick ? 3 : 30);
    const int big_reps = o->reps ? o->reps : (o->quick ? 2 : 5);
    const int64_t S = o->quick ? 16 : 128, ctx = o->quick ? 8 : 64;
    const std::string s_tag = "_s" + std::to_string(S);
    const std::string prefill_nf4 = "prefill_b1" + s_tag + "_nf4_lora", train_nf4 = "train_step_b4" + s_tag + "_nf4_lora",
                      train_f32 = "train_step_b4" + s_tag + "_lora";
    auto format_of = [](const std::string & row) {
      return row.find("_nf4_") != std::string::npos    ? quant::Format::nf4
             : row.find("_int8_") != std::string::npos ? quant::Format::int8
                                                       : quant::Format::none;
    };

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
    TrainOptions topt;
    topt.lr = 1e-4;
    topt.steps = 1000;

    // ---- child process: one row's configuration, for its peak RSS ----
    if (!o->memory_probe.empty()) {
      const std::string & row = o->memory_probe;
      const int64_t start_kb = process_status_kb("VmRSS");
      auto m = make_bench_model(cfg, format_of(row), o->quantize_lm_head);
      const int64_t build_peak_kb = process_status_kb("VmHWM");
      ::malloc_trim(0);  // the float weights replaced by quantized ones go back to the OS
      const int64_t model_kb = process_status_kb("VmRSS");
      const bool reset = reset_peak_rss();
      auto comp = [&](const ForwardInput & in) { return m->compiled->forward(in); };
      if (row.rfind("decode_b1", 0) == 0) {
        auto s = decode_state(1, comp);
        at::NoGradGuard g;
        for (int i = 0; i < 3; ++i) comp(s->step);
      } else if (row.rfind("prefill_b1", 0) == 0) {
        at::NoGradGuard g;
        ForwardInput in;
        in.input_ids = at::randint(cfg.vocab_size, {1, S}, at::kLong);
        for (int i = 0; i < 2; ++i) comp(in);
      } else {
        PEFT_CHECK(row.rfind("train_step_b4", 0) == 0, "--memory-probe: unknown row ", row);
        m->lora->train();
        Trainer t(comp, m->lora->trainable_parameters(), topt);
        at::Tensor ids = at::randint(cfg.vocab_size, {4, S}, at::kLong);
        for (int i = 0; i < 2; ++i) t.step(ids);
      }
      const int64_t run_peak_kb = reset ? process_status_kb("VmHWM") : -1;
      std::printf("%s\n", nlohmann::json({{"row", row},
                                          {"start_rss_kb", start_kb},
                                          {"build_peak_rss_kb", build_peak_kb},
                                          {"model_rss_kb", model_kb},
                                          {"run_peak_rss_kb", run_peak_kb},
                                          {"process_peak_rss_kb", process_status_kb("VmHWM")},
                                          {"peak_reset", reset}})
                              .dump()
                              .c_str());
      return 0;
    }

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
    auto fm = make_bench_model(cfg, quant::Format::none, false);
    auto lora = fm->lora;
    auto & c_lora = *fm->compiled;
    auto c_base = compile(base);

    int64_t weight_bytes = 0, linear_params = 0, embed_bytes = 0;  // what one decode step reads; FLOPs of one token
    for (const auto & p : named_parameters(*base)) {
      if (p.first == "model.embed_tokens.weight") {  // one row is read, not the table
        embed_bytes = p.second.numel() * 4;
        continue;
      }
      weight_bytes += p.second.numel() * 4;
      if (p.second.dim() == 2) linear_params += p.second.numel();
    }
    int64_t adapter_bytes = 0;
    for (const auto & l : lora->tuner_layers()) {
      for (const auto & p : l.second->adapter_parameters("default")) adapter_bytes += p.second.numel() * 4;
    }
    const int64_t lora_bytes = weight_bytes + adapter_bytes;
    auto attn_flops = [&](int64_t q, int64_t k) { return 4.0 * q * k * cfg.hidden_size * cfg.num_layers; };
    const double prefill_flops = 2.0 * linear_params * S + attn_flops(S, S);
    // forward + backward to the activations (frozen base weights need no weight gradient)
    const double train_flops = 2.0 * (2.0 * linear_params * 4 * S + attn_flops(4 * S, S));

    std::vector<Row> rows;
    auto wanted = [&](const std::string & name) { return o->only.empty() || name.find(o->only) != std::string::npos; };
    auto decode = [&](const std::string & name, int64_t B, LogitsFn eager, LogitsFn compiled, int64_t bytes) {
      if (!wanted(name)) return;
      auto s = decode_state(B, eager);
      at::NoGradGuard g;
      Paired t = paired_ms([&] { eager(s->step); }, [&] { compiled(s->step); }, 3, dec_reps);
      rows.push_back({name, t.a, t.b, "bandwidth", static_cast<double>(bytes)});
      if (o->profile > 0) {
        OpProfile prof;
        for (int i = 0; i < dec_reps; ++i) compiled(s->step);
        std::printf("%s, compiled step, %d steps:\n%s", name.c_str(), dec_reps, prof.report(o->profile, dec_reps).c_str());
      }
    };
    auto prefill = [&](const std::string & name, const std::shared_ptr<BenchModel> & m) {
      if (!wanted(name)) return;
      at::NoGradGuard g;
      ForwardInput in;
      in.input_ids = at::randint(cfg.vocab_size, {1, S}, at::kLong);
      double e = median_ms([&] { m->lora->forward(in); }, 1, big_reps);
      double c = median_ms([&] { m->compiled->forward(in); }, 1, big_reps);
      rows.push_back({name, e, c, "flops", prefill_flops});
    };
    auto train = [&](const std::string & name, const std::shared_ptr<BenchModel> & m) {
      if (!wanted(name)) return;
      m->lora->train();
      at::Tensor ids = at::randint(cfg.vocab_size, {4, S}, at::kLong);
      Trainer te([&](const ForwardInput & in) { return m->lora->forward(in); }, m->lora->trainable_parameters(), topt);
      Trainer tc([&](const ForwardInput & in) { return m->compiled->forward(in); }, m->lora->trainable_parameters(), topt);
      double e = median_ms([&] { te.step(ids); }, 1, big_reps);
      double c = median_ms([&] { tc.step(ids); }, 1, big_reps);
      m->lora->train(false);
      rows.push_back({name, e, c, "flops", train_flops});
    };
    // (a ForwardInput or a PeftInput: either becomes a LogitsFn or a PeftLogitsFn)
    auto eager_of = [](const std::shared_ptr<BenchModel> & m) {
      return [m](const auto & in) { return m->lora->forward(in); };
    };
    auto comp_of = [](const std::shared_ptr<BenchModel> & m) {
      return [m](const auto & in) { return m->compiled->forward(in); };
    };
    decode("decode_b1_lora", 1, eager_of(fm), comp_of(fm), lora_bytes);
    decode("decode_b8_lora", 8, eager_of(fm), comp_of(fm), lora_bytes);
    // 8 rows, each with its own adapter (PEFT's adapter_names; Punica / S-LoRA's multi-adapter batch): 8 LoRA
    // adapters of the bench config (seeds 2..9) on the same base, row b routed to adapter b
    const std::string mixed_row = "decode_b8_mixed8_lora";
    std::shared_ptr<BenchModel> mixed;
    std::vector<std::string> mixed_names;
    if (wanted(mixed_row) || wanted("decode_b8_lora")) {
      mixed = make_bench_model(cfg, quant::Format::none, false);
      for (int a = 1; a < 8; ++a) {
        at::manual_seed(2 + a);
        mixed->lora->add_adapter("adapter" + std::to_string(a), bench_lora_config());
      }
      mixed->compiled = std::make_shared<CompiledModel>(compile(*mixed->lora));  // with all 8 adapters
      mixed_names.push_back("default");
      for (int a = 1; a < 8; ++a) mixed_names.push_back("adapter" + std::to_string(a));
    }
    auto with_names = [&](const PeftLogitsFn & f) -> LogitsFn {
      return [f, &mixed_names](const ForwardInput & in) {
        PeftInput r(in);
        r.adapter_names = mixed_names;
        return f(r);
      };
    };
    // (bytes: the base weights and all 8 adapters)
    if (mixed) decode(mixed_row, 8, with_names(eager_of(mixed)), with_names(comp_of(mixed)), weight_bytes + 8 * adapter_bytes);
    decode("decode_b1_base", 1, [&](const ForwardInput & in) { return base->forward(in); },
           [&](const ForwardInput & in) { return c_base.forward(in); }, weight_bytes);
    prefill("prefill_b1" + s_tag + "_lora", fm);
    train(train_f32, fm);

    // ---- quantized bases (QLoRA): built only when one of their rows is selected ----
    struct QuantInfo {
      std::string format;
      std::shared_ptr<BenchModel> model;
    };
    std::vector<QuantInfo> quants;
    std::shared_ptr<BenchModel> nf4, int8;
    if (wanted("decode_b1_nf4_lora") || wanted(prefill_nf4) || wanted(train_nf4)) {
      nf4 = make_bench_model(cfg, quant::Format::nf4, o->quantize_lm_head);
      quants.push_back({"nf4", nf4});
    }
    if (wanted("decode_b1_int8_lora")) {
      int8 = make_bench_model(cfg, quant::Format::int8, o->quantize_lm_head);
      quants.push_back({"int8", int8});
    }
    // bytes one decode step reads: every weight but the embedding table, plus the adapters
    auto decode_bytes = [&](const std::shared_ptr<BenchModel> & m) { return m->footprint.bytes - embed_bytes + adapter_bytes; };
    if (nf4) decode("decode_b1_nf4_lora", 1, eager_of(nf4), comp_of(nf4), decode_bytes(nf4));
    if (int8) decode("decode_b1_int8_lora", 1, eager_of(int8), comp_of(int8), decode_bytes(int8));
    if (nf4) prefill(prefill_nf4, nf4);
    if (nf4) train(train_nf4, nf4);

    // ---- quantized vs float32, compiled, timed in turn (A B A B) ----
    nlohmann::json ratios = nlohmann::json::object(), batched = nlohmann::json::object();
    std::vector<std::string> ratio_lines;
    auto decode_ratio = [&](const std::string & row, const std::shared_ptr<BenchModel> & m, double target) {
      if (!m || !wanted(row)) return;
      auto sf = decode_state(1, comp_of(fm));
      auto sq = decode_state(1, comp_of(m));
      at::NoGradGuard g;
      // float time / quantized time: how many times faster the quantized base decodes
      const double r = paired_ms([&] { fm->compiled->forward(sf->step); }, [&] { m->compiled->forward(sq->step); }, 3,
                                 dec_reps * 2)
                           .ratio;
      ratios[row + "_speedup_vs_float32_compiled"] = r;
      ratios[row + "_speedup_target"] = target;
      char buf[256];
      std::snprintf(buf, sizeof buf, "compiled decode_b1_lora (float32) / compiled %s = %.2fx faster (target >= %.1fx; median of %d paired runs)",
                    row.c_str(), r, target, dec_reps * 2);
      ratio_lines.push_back(buf);
    };
    // batched decode, compiled: b8 against b1 (one adapter), and 8 distinct adapters against one, each pair
    // timed in turn (A B A B)
    if (wanted("decode_b8_lora") && wanted("decode_b1_lora")) {
      auto s1 = decode_state(1, comp_of(fm));
      auto s8 = decode_state(8, comp_of(fm));
      at::NoGradGuard g;
      const double r = paired_ms([&] { fm->compiled->forward(s8->step); }, [&] { fm->compiled->forward(s1->step); }, 3,
                                 dec_reps * 2)
                           .ratio;
      batched["decode_b8_over_b1_step_time"] = r;
      batched["decode_b8_over_b1_step_time_target"] = 1.6;
      char buf[256];
      std::snprintf(buf, sizeof buf, "compiled decode_b8_lora / compiled decode_b1_lora = %.2fx the step time (target <= 1.6x; median of %d paired runs)",
                    r, dec_reps * 2);
      ratio_lines.push_back(buf);
    }
    if (mixed && wanted(mixed_row) && wanted("decode_b8_lora")) {
      auto s8 = decode_state(8, comp_of(fm));
      auto sm = decode_state(8, with_names(comp_of(mixed)));
      PeftInput step_m(sm->step);
      step_m.adapter_names = mixed_names;
      at::NoGradGuard g;
      // one adapter's time / 8 adapters' time = the throughput of the mixed batch relative to one adapter's
      const double r = paired_ms([&] { fm->compiled->forward(s8->step); }, [&] { mixed->compiled->forward(step_m); }, 3,
                                 dec_reps * 2)
                           .ratio;
      batched["decode_b8_mixed8_over_b8_throughput"] = r;
      batched["decode_b8_mixed8_over_b8_throughput_target"] = 0.9;
      char buf[256];
      std::snprintf(buf, sizeof buf, "throughput compiled decode_b8_mixed8_lora / compiled decode_b8_lora = %.2fx (target >= 0.9x; median of %d paired runs)",
                    r, dec_reps * 2);
      ratio_lines.push_back(buf);
    }
    decode_ratio("decode_b1_nf4_lora", nf4, 3.0);
    decode_ratio("decode_b1_int8_lora", int8, 1.8);
    if (nf4 && wanted(train_nf4)) {
      fm->lora->train();
      nf4->lora->train();
      at::Tensor ids = at::randint(cfg.vocab_size, {4, S}, at::kLong);
      Trainer tf(comp_of(fm), fm->lora->trainable_parameters(), topt);
      Trainer tq(comp_of(nf4), nf4->lora->trainable_parameters(), topt);
      const double r = paired_ms([&] { tq.step(ids); }, [&] { tf.step(ids); }, 1, big_reps).ratio;
      fm->lora->train(false);
      nf4->lora->train(false);
      ratios[train_nf4 + "_time_over_float32_compiled"] = r;
      ratios[train_nf4 + "_time_target"] = 1.3;
      char buf[256];
      std::snprintf(buf, sizeof buf, "compiled %s / compiled %s (float32) = %.2fx the time (target <= 1.3x; median of %d paired runs)",
                    train_nf4.c_str(), train_f32.c_str(), r, big_reps);
      ratio_lines.push_back(buf);
    }

    // ---- peak RSS of each quantized configuration (and its float32 counterpart), one child process each ----
    std::map<std::string, nlohmann::json> memory;
    if (!o->no_memory && !quants.empty()) {
      char exe[4096];
      const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
      PEFT_CHECK(len > 0, "cannot find this program's path");
      exe[len] = '\0';
      std::vector<std::string> probe;
      for (const std::string & r : {std::string("decode_b1_nf4_lora"), std::string("decode_b1_int8_lora"), prefill_nf4, train_nf4}) {
        if (wanted(r) && ((format_of(r) == quant::Format::nf4 && nf4) || (format_of(r) == quant::Format::int8 && int8))) {
          probe.push_back(r);
        }
      }
      // their float32 counterparts, for comparison
      if (std::any_of(probe.begin(), probe.end(), [](const std::string & r) { return r.rfind("decode_b1", 0) == 0; })) {
        probe.push_back("decode_b1_lora");
      }
      if (nf4 && wanted(train_nf4)) probe.push_back(train_f32);
      for (const auto & r : probe) {
        std::string line = std::string(exe) + " bench --memory-probe " + r + (o->quick ? " --quick" : "") +
                           (o->quantize_lm_head ? " --quantize-lm-head" : "") + " --threads " + std::to_string(blas_threads) +
                           " --intra-op-threads " + std::to_string(o->common.intra_op_threads) + " 2>&1";
        FILE * p = ::popen(line.c_str(), "r");
        PEFT_CHECK(p, "cannot start ", line);
        std::string text;
        char buf[4096];
        while (size_t k = std::fread(buf, 1, sizeof buf, p)) text.append(buf, k);
        const int status = ::pclose(p);
        const size_t at = text.rfind("{\"");
        PEFT_CHECK(status == 0 && at != std::string::npos, "the memory probe of ", r, " failed: ", text);
        memory[r] = nlohmann::json::parse(text.substr(at));
      }
    }

    // ---- report ----
    std::printf("peft bench: %d BLAS threads, %d intra-op threads; copy bandwidth %.1f GB/s (read+write); float32 GEMM %lldx%lld: %.1f GFLOP/s\n",
                blas_threads, threads, copy_gbs, static_cast<long long>(n), static_cast<long long>(n), gemm_gflops);
    std::printf("%-28s %10s %12s %8s %16s %16s\n", "case", "eager ms", "compiled ms", "speedup", "eager of limit",
                "compiled of limit");
    nlohmann::json out = nlohmann::json::array();
    for (const auto & r : rows) {
      auto frac = [&](double ms) {
        return r.limit == "bandwidth" ? (r.work / (ms * 1e6)) / copy_gbs : (r.work / (ms * 1e6)) / gemm_gflops;
      };
      std::printf("%-28s %10.2f %12.2f %7.2fx %15.0f%% %15.0f%%\n", r.name.c_str(), r.eager_ms, r.compiled_ms,
                  r.eager_ms / r.compiled_ms, 100 * frac(r.eager_ms), 100 * frac(r.compiled_ms));
      nlohmann::json j = {{"name", r.name},
                          {"eager_ms", r.eager_ms},
                          {"compiled_ms", r.compiled_ms},
                          {"speedup", r.eager_ms / r.compiled_ms},
                          {"limit", r.limit == "bandwidth" ? "memory bandwidth" : "float32 GEMM FLOP rate"},
                          {"eager_fraction_of_limit", frac(r.eager_ms)},
                          {"compiled_fraction_of_limit", frac(r.compiled_ms)}};
      const quant::Format f = format_of(r.name);
      if (f != quant::Format::none) {
        const auto & fp = (f == quant::Format::nf4 ? nf4 : int8)->footprint;
        j["quant_format"] = quant::format_name(f);
        j["quantized_bytes_per_param"] = static_cast<double>(fp.quantized_bytes) / fp.quantized_params;
        j["model_bytes_per_param"] = static_cast<double>(fp.bytes) / fp.params;
        j["lm_head_quantized"] = o->quantize_lm_head;
        if (memory.count(r.name)) j["memory"] = memory[r.name];
      }
      out.push_back(j);
    }
    double lora_vs_base = 0;
    if (wanted("decode_b1_lora") && wanted("decode_b1_base")) {
      // the adapter's cost once compiled: compiled LoRA and compiled base decode steps in turn
      auto sl = decode_state(1, comp_of(fm));
      auto sb = decode_state(1, [&](const ForwardInput & in) { return c_base.forward(in); });
      at::NoGradGuard g;
      lora_vs_base = paired_ms([&] { c_lora.forward(sl->step); }, [&] { c_base.forward(sb->step); }, 3, dec_reps * 2).ratio;
      std::printf("compiled decode_b1_lora / compiled decode_b1_base = %.3f (median of %d paired runs)\n", lora_vs_base,
                  dec_reps * 2);
    }
    for (const auto & l : ratio_lines) std::printf("%s\n", l.c_str());
    if (!quants.empty()) {
      std::printf("quantized bases (%s in float; weights in bytes per parameter):\n",
                  o->quantize_lm_head ? "embeddings and norms" : "lm_head, embeddings and norms");
      nlohmann::json qj = nlohmann::json::object();
      for (const auto & q : quants) {
        const auto & fp = q.model->footprint;
        const double qb = static_cast<double>(fp.quantized_bytes) / fp.quantized_params,
                     mb = static_cast<double>(fp.bytes) / fp.params;
        std::printf("  %-5s quantized Linear layers %.4f (%lld params), whole model %.4f (%lld params)\n", q.format.c_str(),
                    qb, static_cast<long long>(fp.quantized_params), mb, static_cast<long long>(fp.params));
        qj[q.format] = {{"quantized_params", fp.quantized_params}, {"quantized_bytes", fp.quantized_bytes},
                        {"quantized_bytes_per_param", qb},       {"params", fp.params},
                        {"bytes", fp.bytes},                     {"model_bytes_per_param", mb}};
      }
      ratios["quantized_weights"] = qj;
      ratios["lm_head_quantized"] = o->quantize_lm_head;
    }
    if (!memory.empty()) {
      std::printf("peak RSS, one child process per row (MB; \"run\" = peak while running the compiled row, from the\n"
                  "loaded model on; \"build\" = peak while building it: float weights first, then quantized; \"start\" = the\n"
                  "process before any model: LibTorch and this program):\n");
      std::printf("  %-28s %10s %10s %10s %10s\n", "row", "start", "model", "run", "build");
      for (const auto & m : memory) {
        std::printf("  %-28s %10.1f %10.1f %10.1f %10.1f\n", m.first.c_str(), m.second["start_rss_kb"].get<double>() / 1024,
                    m.second["model_rss_kb"].get<double>() / 1024,
                    m.second["run_peak_rss_kb"].get<double>() / 1024, m.second["build_peak_rss_kb"].get<double>() / 1024);
      }
      nlohmann::json mj = nlohmann::json::object();
      for (const auto & m : memory) mj[m.first] = m.second;
      ratios["peak_rss"] = mj;
    }
    if (!o->json.empty()) {
      nlohmann::json doc = out;
      write_file_atomic(o->json, doc.dump(2) + "\n");
      // machine figures go to a sidecar so that the main file keeps the required list shape
      nlohmann::json machine = {{"threads", threads},
                                {"copy_gbs", copy_gbs},
                                {"gemm_gflops", gemm_gflops},
                                {"compiled_lora_over_base_decode_b1", lora_vs_base}};
      if (!ratios.empty()) machine["quantized"] = ratios;
      if (!batched.empty()) machine["batched_decode"] = batched;
      write_file_atomic(o->json + ".machine.json", machine.dump(2) + "\n");
    }
    return 0;
  };
}

}  // namespace peft::cli
