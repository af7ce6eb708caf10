// peft bench-serve: the server under concurrent clients against the same requests run one after another
// with generate() (what `peft generate` does), in one run: throughput (generated tokens/s), request latency
// and time to first token percentiles. The server runs in this process on 127.0.0.1, clients are threads
// speaking HTTP to it (streamed completions, so the first token's arrival is seen).
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>

#include "commands.h"
#include "common.h"
#include "peft/compile/compile.h"
#include "peft/generate/generate.h"
#include "peft/io/files.h"
#include "peft/serve/server.h"
#include "quant-options.h"

namespace peft::cli {

namespace {

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

}  // namespace

Runner add_bench_serve(CLI::App & app) {
  struct Opts {
    std::string model, json_out;
    std::vector<std::string> adapters;
    int requests = 64, concurrency = 16, max_tokens = 32;
    bool compile = false, byte_tokenizer = false;
    serve::EngineOptions engine;
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("bench-serve", "serving throughput and latency against sequential generation");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--adapter", o->adapters, "PATH=NAME adapters the requests cycle through (and the base)");
  cmd->add_option("--requests", o->requests, "requests in all (default 64)")->check(CLI::Range(1, 100000));
  cmd->add_option("--concurrency", o->concurrency, "clients at once (default 16)")->check(CLI::Range(1, 1024));
  cmd->add_option("--max-tokens", o->max_tokens, "tokens per completion (default 32)")->check(CLI::Range(1, 100000));
  cmd->add_option("--max-batch", o->engine.max_batch, "server rows decoded together (default 8)")->check(CLI::Range(1, 256));
  cmd->add_flag("--compile", o->compile, "server and sequential runs compiled");
  cmd->add_flag("--byte-tokenizer", o->byte_tokenizer, "tokenize text as bytes (tiny test models without tokenizer.json)");
  cmd->add_option("--json", o->json_out, "also write the figures as JSON");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  return [o]() {
    std::vector<std::string> inputs = {o->model};
    for (const auto & a : o->adapters) inputs.push_back(a.substr(0, a.find('=')));
    if (!o->json_out.empty()) check_output_file("--json", o->json_out, inputs);
    apply_common_options(o->common);
    const std::vector<std::string> prompts = {"In the beginning", "And the LORD said unto Moses,", "Blessed are the",
                                              "The grace of our Lord", "Then came the", "He that hath an ear"};
    auto load = [&] {
      auto pm = std::make_shared<PeftModel>(load_model_with(o->model, at::kFloat, o->quant));
      for (const auto & a : o->adapters) {
        const auto eq = a.find('=');
        PEFT_USAGE(eq != std::string::npos, "--adapter ", a, ": expected PATH=NAME");
        pm->load_adapter(a.substr(0, eq), a.substr(eq + 1));
      }
      return pm;
    };
    std::vector<std::string> models = {"base"};
    for (const auto & a : o->adapters) models.push_back(a.substr(a.find('=') + 1));
    const ModelConfig mcfg = ModelConfig::load(o->model);
    std::shared_ptr<Tokenizer> tok = load_tokenizer(o->model, mcfg.vocab_size, o->byte_tokenizer);
    struct Job {
      std::string model, prompt;
    };
    std::vector<Job> jobs;
    for (int i = 0; i < o->requests; ++i) jobs.push_back({models[i % models.size()], prompts[(i / models.size()) % prompts.size()]});

    // 1. the server: `concurrency` clients, each takes the next job until none is left
    o->engine.compile = o->compile;
    o->engine.max_context = std::min<int64_t>(mcfg.max_position_embeddings, 64 + o->max_tokens);
    // the engine owns the served model's adapters: they load through it, as in `peft serve`
    auto engine = std::make_shared<serve::Engine>(std::make_shared<PeftModel>(load_model_with(o->model, at::kFloat, o->quant)),
                                                  o->engine, tok);
    for (const auto & a : o->adapters) {
      const auto eq = a.find('=');
      PEFT_USAGE(eq != std::string::npos, "--adapter ", a, ": expected PATH=NAME");
      engine->load_adapter(a.substr(0, eq), a.substr(eq + 1));
    }
    serve::ServerOptions so;
    so.access_log = false;  // (the figures go to stdout; a line per request on stderr would only be noise)
    so.port = 0;
    so.model_name = "base";
    so.threads = std::max(8, o->concurrency + 4);
    serve::Server server(engine, tok, std::nullopt, so);
    server.bind();
    std::thread http([&] { server.run(); });
    auto request = [&](httplib::Client & c, const Job & j, double * ttft) {
      nlohmann::json body = {{"model", j.model}, {"prompt", j.prompt}, {"max_tokens", o->max_tokens}, {"temperature", 0},
                             {"stream", true}};
      const auto t0 = std::chrono::steady_clock::now();
      bool first = true;
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = body.dump();
      req.set_header("Content-Type", "application/json");
      req.content_receiver = [&](const char *, size_t, uint64_t, uint64_t) {
        if (first) *ttft = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        first = false;
        return true;
      };
      auto r = c.send(req);
      PEFT_CHECK(r && r->status == 200, "bench-serve: a request failed (", r ? std::to_string(r->status) : httplib::to_string(r.error()), ")");
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    {  // warm-up: graphs captured before timing
      httplib::Client c("127.0.0.1", server.port());
      c.set_read_timeout(600, 0);
      double t;
      for (const auto & m : models) request(c, {m, prompts[0]}, &t);
    }
    const auto before = engine->stats();
    std::atomic<size_t> next{0};
    std::vector<double> latency(jobs.size()), ttft(jobs.size());
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> clients;
    for (int c = 0; c < o->concurrency; ++c) {
      clients.emplace_back([&] {
        httplib::Client cli("127.0.0.1", server.port());
        cli.set_read_timeout(600, 0);
        for (size_t i = next++; i < jobs.size(); i = next++) latency[i] = request(cli, jobs[i], &ttft[i]);
      });
    }
    for (auto & t : clients) t.join();
    const double served_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto after = engine->stats();
    const int64_t served_tokens = after.completion_tokens - before.completion_tokens;
    server.stop();
    http.join();
    engine->stop();

    // 2. the same requests one after another, as `peft generate` runs each
    auto pm = load();
    pm->train(false);
    std::optional<CompiledModel> compiled;
    if (o->compile) compiled = compile(*pm);
    LogitsFn fwd = [&](const ForwardInput & in) { return compiled ? compiled->forward(in) : pm->forward(in); };
    GenerationConfig gen;
    gen.max_new_tokens = o->max_tokens;
    gen.eos_token_ids = mcfg.eos_token_ids;
    auto run_one = [&](const Job & j) {
      std::vector<std::vector<int64_t>> p = {tok->encode(j.prompt, true)};
      if (j.model == "base") {
        auto off = pm->disable_adapter();
        return generate(fwd, pm->base_model().config(), pm->base_model().options(), p, gen)[0].size();
      }
      pm->set_adapter(j.model);
      return generate(fwd, pm->base_model().config(), pm->base_model().options(), p, gen)[0].size();
    };
    for (const auto & m : models) run_one({m, prompts[0]});  // warm-up
    std::vector<double> seq_latency;
    int64_t seq_tokens = 0;
    const auto s0 = std::chrono::steady_clock::now();
    for (const auto & j : jobs) {
      const auto a = std::chrono::steady_clock::now();
      seq_tokens += static_cast<int64_t>(run_one(j));
      seq_latency.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
    }
    const double seq_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();

    const double served_tps = served_tokens / served_s, seq_tps = seq_tokens / seq_s;
    std::printf("bench-serve: %d requests (%zu models: base + %zu adapters), %d tokens each at most, %s\n", o->requests,
                models.size(), models.size() - 1, o->max_tokens, o->compile ? "compiled" : "eager");
    std::printf("%-34s %10s %10s %10s %10s %10s %10s\n", "", "tokens/s", "lat p50", "lat p90", "lat p99", "ttft p50", "ttft p90");
    std::printf("%-34s %10.1f %9.3fs %9.3fs %9.3fs %9.3fs %9.3fs\n",
                ("server, " + std::to_string(o->concurrency) + " clients, batch " + std::to_string(o->engine.max_batch)).c_str(),
                served_tps, percentile(latency, 0.5), percentile(latency, 0.9), percentile(latency, 0.99), percentile(ttft, 0.5),
                percentile(ttft, 0.9));
    std::printf("%-34s %10.1f %9.3fs %9.3fs %9.3fs %10s %10s\n", "sequential generate()", seq_tps, percentile(seq_latency, 0.5),
                percentile(seq_latency, 0.9), percentile(seq_latency, 0.99), "-", "-");
    std::printf("server / sequential throughput = %.2fx (%lld decode steps for %lld tokens)\n", served_tps / seq_tps,
                static_cast<long long>(after.decode_steps - before.decode_steps), static_cast<long long>(served_tokens));
    if (!o->json_out.empty()) {
      nlohmann::json j = {{"requests", o->requests},       {"concurrency", o->concurrency},     {"max_tokens", o->max_tokens},
                          {"max_batch", o->engine.max_batch}, {"compiled", o->compile},          {"models", models},
                          {"server_tokens_per_s", served_tps}, {"sequential_tokens_per_s", seq_tps}, {"throughput_ratio", served_tps / seq_tps},
                          {"latency_s", {{"p50", percentile(latency, 0.5)}, {"p90", percentile(latency, 0.9)}, {"p99", percentile(latency, 0.99)}}},
                          {"ttft_s", {{"p50", percentile(ttft, 0.5)}, {"p90", percentile(ttft, 0.9)}, {"p99", percentile(ttft, 0.99)}}},
                          {"sequential_latency_s", {{"p50", percentile(seq_latency, 0.5)}, {"p90", percentile(seq_latency, 0.9)}}}};
      write_file_atomic(o->json_out, j.dump(2));
    }
    return 0;
  };
}

}  // namespace peft::cli
