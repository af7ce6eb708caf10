// peft bench-dist: the scaling figure of data-parallel training on this machine. A synthetic Llama
// (random weights, written to a temp folder) is LoRA-trained by `peft train` (same per-process batch),
// side by side in one run: 1 process and N processes with the default threads (1 process: BLAS threads =
// cores; N processes: cores / N each, see peft/util/runtime.h), and 1 process x 1 BLAS thread (the
// per-core reference). The report gives tokens/s of each, the ratios, and the all-reduce time left after
// the backward pass. --threads T gives every process T threads instead of the defaults.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/io/files.h"
#include "peft/model/causal-lm.h"
#include "peft/util/runtime.h"

namespace peft::cli {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

Runner add_bench_dist(CLI::App & app) {
  struct Opts {
    int nproc = 2, hidden = 256, layers = 4, seq = 128, batch = 4, steps = 12, threads = 0;
    std::string json;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("bench-dist", "data-parallel scaling: N processes against 1, default threads");
  cmd->add_option("--nproc", o->nproc, "processes (default 2)");
  cmd->add_option("--hidden", o->hidden, "synthetic model's hidden size (default 256)");
  cmd->add_option("--layers", o->layers, "layers (default 4)");
  cmd->add_option("--seq", o->seq, "tokens per sequence (default 128)");
  cmd->add_option("--batch", o->batch, "sequences per process and step (default 4)");
  cmd->add_option("--steps", o->steps, "steps per run (default 12; the first 2 are not timed)");
  cmd->add_option("--threads", o->threads, "BLAS threads of every process (default: each process's default, cores / processes)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--json", o->json, "write the figures here");
  return [o]() {
    PEFT_USAGE(o->nproc >= 2 && o->hidden >= 16 && o->hidden % 4 == 0 && o->layers >= 1 && o->seq >= 8 &&
                   o->batch >= 1 && o->steps >= 4,
               "--nproc >= 2, --hidden a multiple of 4 (>= 16), --layers >= 1, --seq >= 8, --batch >= 1, --steps >= 4");
    char tmpl[] = "/tmp/peft-bench-dist-XXXXXX";
    PEFT_CHECK(::mkdtemp(tmpl) != nullptr, "cannot create a temp folder");
    const std::string dir = tmpl;
    nlohmann::json config = {{"model_type", "llama"},          {"architectures", {"LlamaForCausalLM"}},
                             {"vocab_size", 4096},             {"hidden_size", o->hidden},
                             {"intermediate_size", o->hidden * 11 / 4}, {"num_hidden_layers", o->layers},
                             {"num_attention_heads", 4},       {"num_key_value_heads", 4},
                             {"max_position_embeddings", std::max(512, o->seq)}, {"torch_dtype", "float32"}};
    auto model = build_model(ModelConfig::from_json(config, "bench-dist config"));
    init_random(*model, 1);
    save_model(*model, dir + "/model", config);
    // token ids: enough sequences for every step of the largest run
    at::manual_seed(2);
    const int64_t rows = static_cast<int64_t>(o->batch) * o->nproc * o->steps;
    at::Tensor ids = at::randint(4096, {rows, o->seq}, at::kLong);
    nlohmann::json data = nlohmann::json::array();
    for (int64_t r = 0; r < rows; ++r) {
      at::Tensor row = ids[r].contiguous();
      data.push_back(std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + o->seq));
    }
    write_file_atomic(dir + "/ids.json", data.dump());
    char exe[4096];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    PEFT_CHECK(n > 0, "cannot find this program's path");
    exe[n] = '\0';
    // threads 0: the default (not passed)
    auto run = [&](int nproc, int threads) {
      const std::string out = str(dir, "/run", nproc, "-", threads);
      const std::string cmdline = str(exe, " train --model ", dir, "/model --method lora --r 16 --lora-alpha 32 ",
                                      "--target-modules all-linear --data ", dir, "/ids.json --batch-size ", o->batch,
                                      " --steps ", o->steps, " --lr 1e-4", threads > 0 ? str(" --threads ", threads) : std::string(), " --no-plot --no-progress --log-file ",
                                      out, ".jsonl --out ", out, " --nproc-per-node ", nproc, " 2>", out, ".err");
      const int status = std::system(cmdline.c_str());
      PEFT_CHECK(status == 0, "the ", nproc, "-process run failed: ", read_file(out + ".err"));
      std::vector<double> tps, wait;
      std::ifstream log(out + ".jsonl");
      for (std::string line; std::getline(log, line);) {
        auto j = nlohmann::json::parse(line);
        if (!j.contains("loss") || j["step"].get<int64_t>() <= 2) continue;
        tps.push_back(j["tokens_per_second"].get<double>());
        if (j.contains("allreduce_wait_ms")) wait.push_back(j["allreduce_wait_ms"].get<double>());
      }
      return std::make_pair(median(tps), median(wait));
    };
    // each run's BLAS threads, as `peft train` chooses them (OMP_NUM_THREADS, else cores / processes)
    auto threads_of = [&](int nproc) {
      if (o->threads > 0) return o->threads;
      if (const char * v = std::getenv("OMP_NUM_THREADS"); v && std::atoi(v) > 0) return std::atoi(v);
      return std::max(1, usable_cores() / nproc);
    };
    const auto one = run(1, o->threads), single = run(1, 1), many = run(o->nproc, o->threads);
    const double ratio = many.first / one.first, per_core = many.first / single.first;
    std::printf("peft bench-dist: LoRA r=16 all-linear on a synthetic Llama (hidden %d, %d layers), %d x %d tokens per "
                "process and step; %d cores\n", o->hidden, o->layers, o->batch, o->seq, usable_cores());
    std::printf("%-52s %14s\n", "run", "tokens/s");
    std::printf("%-52s %14.0f\n", str("1 process, ", threads_of(1), " BLAS threads", o->threads ? "" : " (default)").c_str(), one.first);
    std::printf("%-52s %14.0f\n", "1 process, 1 BLAS thread", single.first);
    std::printf("%-52s %14.0f\n", str(o->nproc, " processes (Gloo), ", threads_of(o->nproc), " BLAS thread(s) each",
                                       o->threads ? "" : " (default)").c_str(), many.first);
    std::printf("%d processes vs 1 process: %.2fx (vs 1 process x 1 thread: %.2fx); all-reduce wait after backward: "
                "median %.2f ms per step\n", o->nproc, ratio, per_core, many.second);
    if (!o->json.empty()) {
      nlohmann::json j = {{"processes", o->nproc},          {"tokens_per_second_1", one.first},
                          {"tokens_per_second_1_thread", single.first}, {"tokens_per_second_n", many.first},
                          {"scaling", ratio},               {"scaling_vs_1_thread", per_core},
                          {"threads_1", threads_of(1)},     {"threads_n", threads_of(o->nproc)},
                          {"allreduce_wait_ms", many.second}};
      write_file_atomic(o->json, j.dump(2) + "\n");
    }
    remove_tree(dir);
    return 0;
  };
}

}  // namespace peft::cli
