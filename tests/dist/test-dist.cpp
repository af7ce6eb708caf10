// Data-parallel training on 127.0.0.1: N processes with per-rank batch b train exactly as one process
// with batch N*b (LoRA, IA3, LoKr, OFT; eager and compiled; with gradient accumulation); a killed rank
// stops the run, and it resumes from its last checkpoint; rendezvous failures are named errors.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>

#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/error.h"
#include "peft/util/runtime.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::string make_text(const std::string & dir) {
  std::ofstream f(dir + "/data.txt");
  for (int i = 0; i < 64; ++i) f << "Line " << i << ": the model reads " << i * 13 % 97 << " words today.\n\n";
  return dir + "/data.txt";
}

std::string adapter_config(const std::string & dir, const std::string & method) {
  nlohmann::json j;
  if (method == "LORA") j = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "v_proj", "down_proj"}}};
  if (method == "IA3") j = {{"peft_type", "IA3"}, {"target_modules", {"k_proj", "v_proj", "down_proj"}}, {"feedforward_modules", {"down_proj"}}};
  if (method == "LOKR") j = {{"peft_type", "LOKR"}, {"r", 4}, {"alpha", 8}, {"target_modules", {"q_proj", "v_proj"}}};
  if (method == "OFT") j = {{"peft_type", "OFT"}, {"r", 0}, {"oft_block_size", 4}, {"target_modules", {"q_proj", "v_proj"}}};
  j["task_type"] = "CAUSAL_LM";
  const std::string path = dir + "/" + method + ".json";
  write_file_atomic(path, j.dump());
  return path;
}

std::string train(const std::string & data, const std::string & config, const std::string & out, const std::string & extra) {
  return "train --model " + golden_model("tiny-llama") + " --byte-tokenizer --adapter-config " + config + " --data " + data +
         " --max-length 32 --lr 1e-2 --eval-split 0.25 --eval-steps 3 --no-plot --no-token-cache --seed 3" +
         " --dist-timeout 60 --log-file " + out + ".jsonl --out " + out + " " + extra;
}

void expect_same_run(const std::string & a, const std::string & b, double tol) {
  const auto la = read_jsonl(a + ".jsonl"), lb = read_jsonl(b + ".jsonl");
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    for (const char * k : {"loss", "eval_loss", "grad_norm"}) {
      if (la[i].contains(k)) EXPECT_NEAR(la[i][k].get<double>(), lb[i][k].get<double>(), tol) << k << " line " << i;
    }
  }
  auto ta = safetensors_load(a + "/adapter_model.safetensors"), tb = safetensors_load(b + "/adapter_model.safetensors");
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto & kv : ta) EXPECT_TRUE(all_close(tb.at(kv.first), kv.second, tol, 1e-5)) << kv.first;
}

class DataParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(DataParallel, TwoProcessesEqualOneWithTheGlobalBatch) {
  const std::string dir = temp_dir("dist-" + GetParam());
  const std::string data = make_text(dir), cfg = adapter_config(dir, GetParam());
  for (const std::string mode : {"", "--compile"}) {
    std::string out;
    ASSERT_EQ(run_cli(train(data, cfg, dir + "/one", "--steps 6 --batch-size 4 " + mode), &out), 0) << out;
    ASSERT_EQ(run_cli(train(data, cfg, dir + "/two", "--steps 6 --batch-size 2 --nproc-per-node 2 " + mode), &out), 0) << out;
    EXPECT_NE(out.find("gradients summed over 2 ranks"), std::string::npos) << out;
    expect_same_run(dir + "/one", dir + "/two", 2e-5);
    // with accumulation: 2 ranks x 2 micro-batches of 1
    ASSERT_EQ(run_cli(train(data, cfg, dir + "/acc", "--steps 6 --batch-size 1 --gradient-accumulation-steps 2 --nproc-per-node 2 " + mode),
                      &out),
              0)
        << out;
    expect_same_run(dir + "/one", dir + "/acc", 2e-5);
  }
}

// Processes of one job share the machine's cores: with no --threads each gets cores / processes BLAS
// threads (at least 1), one process all of them, and OMP_NUM_THREADS (torchrun sets it) wins.
TEST(DataParallelThreads, DefaultThreadsShareTheCores) {
  const std::string dir = temp_dir("dist-threads");
  const std::string data = make_text(dir), cfg = adapter_config(dir, "LORA");
  const int cores = usable_cores();
  ::unsetenv("OMP_NUM_THREADS");
  ::unsetenv("LOCAL_WORLD_SIZE");
  std::string out;
  ASSERT_EQ(run_cli(train(data, cfg, dir + "/one", "--steps 2 --batch-size 2"), &out), 0) << out;
  EXPECT_NE(out.find(str("threads: ", cores, " BLAS per process (", cores, " cores;")), std::string::npos) << out;
  ASSERT_EQ(run_cli(train(data, cfg, dir + "/two", "--steps 2 --batch-size 1 --nproc-per-node 2"), &out), 0) << out;
  EXPECT_NE(out.find(str("threads: ", std::max(1, cores / 2), " BLAS per process (", cores, " cores / 2 processes (LOCAL_WORLD_SIZE)")),
            std::string::npos)
      << out;
  ::setenv("OMP_NUM_THREADS", "1", 1);
  ASSERT_EQ(run_cli(train(data, cfg, dir + "/omp", "--steps 2 --batch-size 2"), &out), 0) << out;
  ::unsetenv("OMP_NUM_THREADS");
  EXPECT_NE(out.find("threads: 1 BLAS per process (OMP_NUM_THREADS"), std::string::npos) << out;
  // the flag says nothing of defaults
  ASSERT_EQ(run_cli(train(data, cfg, dir + "/flag", "--steps 2 --batch-size 2 --threads 1"), &out), 0) << out;
  EXPECT_EQ(out.find("threads: "), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Methods, DataParallel, ::testing::Values("LORA", "IA3", "LOKR", "OFT"));

TEST(DataParallelFaults, AKilledRankStopsAllAndTheRunResumes) {
  const std::string dir = temp_dir("dist-kill");
  const std::string data = make_text(dir), cfg = adapter_config(dir, "LORA");
  const std::string args = "--batch-size 2 --nproc-per-node 2 --save-steps 2 --steps 6";
  std::string out;
  ASSERT_EQ(run_cli(train(data, cfg, dir + "/full", args), &out), 0) << out;
  // rank 0 is killed while writing its second checkpoint: the launcher stops rank 1 and names rank 0
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run_command("PEFT_CRASH_AT=folder-before-swap:2 " + std::string(PEFT_CLI) + " " +
                            train(data, cfg, dir + "/cut", args),
                        &out),
            1);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60.0);
  EXPECT_NE(out.find("rank 0 was killed by signal 9"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/cut"));
  EXPECT_TRUE(exists(dir + "/cut-checkpoints/checkpoint-2/trainer_state.json"));
  EXPECT_FALSE(exists(dir + "/cut-checkpoints/checkpoint-4"));
  ASSERT_EQ(run_cli(train(data, cfg, dir + "/cut", args + " --resume-from-checkpoint latest"), &out), 0) << out;
  expect_same_run(dir + "/full", dir + "/cut", 1e-7);
}

TEST(DataParallelFaults, ANonFiniteLossStopsEveryRankAndRankZeroSavesTheLastGoodStep) {
  const std::string dir = temp_dir("dist-nan");
  const std::string data = make_text(dir), cfg = adapter_config(dir, "LORA");
  std::string cmd = train(data, cfg, dir + "/a", "--batch-size 2 --nproc-per-node 2 --steps 6");
  cmd.replace(cmd.find("--lr 1e-2"), 9, "--lr 1e30");
  std::string out;
  EXPECT_EQ(run_cli(cmd, &out), 1);
  EXPECT_NE(out.find("training stopped before this step's update"), std::string::npos) << out;
  EXPECT_NE(out.find("was saved to"), std::string::npos) << out;
  EXPECT_TRUE(exists(dir + "/a/adapter_model.safetensors")) << out;
}

int busy_port(int * fd) {
  *fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(*fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
  ::listen(*fd, 1);
  ::getsockname(*fd, reinterpret_cast<sockaddr *>(&a), &len);
  return ntohs(a.sin_port);
}

TEST(DataParallelFaults, RendezvousProblemsAreNamed) {
  const std::string dir = temp_dir("dist-errors");
  const std::string data = make_text(dir), cfg = adapter_config(dir, "LORA");
  std::string cmd = train(data, cfg, dir + "/a", "--batch-size 2 --steps 2");
  cmd.replace(cmd.find("--dist-timeout 60"), 17, "--dist-timeout 2");
  std::string out;
  int fd = -1;
  const int used = busy_port(&fd);
  auto with_env = [&](const std::string & env) { return run_command(env + " " + std::string(PEFT_CLI) + " " + cmd, &out); };
  EXPECT_EQ(with_env("RANK=0 WORLD_SIZE=2 MASTER_PORT=" + std::to_string(used)), 1);
  EXPECT_NE(out.find("cannot serve the rendezvous"), std::string::npos) << out;
  ::close(fd);
  const int free_port = busy_port(&fd);
  ::close(fd);
  EXPECT_EQ(with_env("RANK=0 WORLD_SIZE=2 MASTER_PORT=" + std::to_string(free_port)), 1);
  EXPECT_NE(out.find("rank(s) 1 never arrived"), std::string::npos) << out;
  EXPECT_EQ(with_env("RANK=1 WORLD_SIZE=2 MASTER_PORT=" + std::to_string(free_port)), 1);
  EXPECT_NE(out.find("rank 1 cannot reach the master at 127.0.0.1:"), std::string::npos) << out;
  EXPECT_EQ(with_env("RANK=2 WORLD_SIZE=2"), 1);
  EXPECT_NE(out.find("RANK='2' must be an integer in [0, 1]"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/a"));
}

}  // namespace
