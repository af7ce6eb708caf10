// Exact resume: a run killed with SIGKILL (during a checkpoint write, or at a random moment) and
// restarted with --resume-from-checkpoint logs the same losses after the resume and saves the same
// adapter as a run never stopped; eager and compiled, with dropout (the RNG state is restored).
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "peft/io/files.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

bool exists(const std::string & p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string make_text(const std::string & dir) {
  std::ofstream f(dir + "/data.txt");
  for (int i = 0; i < 120; ++i) f << "Story " << i << ": a small model read line " << i * 7 << " and wrote it down.\n\n";
  return dir + "/data.txt";
}

std::string train_args(const std::string & data, const std::string & out, const std::string & extra) {
  return "train --model " + golden_model("tiny-llama") + " --method lora --r 4 --lora-dropout 0.1 --target-modules " +
         "q_proj,v_proj,down_proj --data " + data + " --eval-split 0.1 --eval-steps 5 --max-length 48 --batch-size 4" +
         " --steps 16 --lr 5e-3 --lr-scheduler cosine --warmup-steps 3 --gradient-accumulation-steps 2 --seed 7" +
         " --save-steps 3 --save-total-limit 2 --no-plot --log-file " + out + "/log.jsonl --out " + out + "/adapter " +
         extra;
}

// the log without timing fields
std::vector<nlohmann::json> log_of(const std::string & file) {
  std::vector<nlohmann::json> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    j.erase("tokens_per_second");
    out.push_back(j);
  }
  return out;
}

// Run the CLI and SIGKILL it as soon as `file` exists (or let it finish). True if it was killed.
bool run_until(const std::string & args, const std::string & file) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    const std::string cmd = "exec " + std::string(PEFT_CLI) + " " + args + " >/dev/null 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char *>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  for (;;) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return false;
    if (exists(file)) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return true;
}

void check_resume(bool compiled, bool random_moment) {
  const std::string dir = temp_dir(compiled ? "resume-compiled" : "resume-eager");
  const std::string data = make_text(dir);
  const std::string extra = compiled ? "--compile" : "";
  // the uninterrupted run
  run_command("mkdir -p " + dir + "/full " + dir + "/cut");
  std::string out;
  ASSERT_EQ(run_cli(train_args(data, dir + "/full", extra), &out), 0) << out;
  // the interrupted one
  if (random_moment) {
    run_until(train_args(data, dir + "/cut", extra), dir + "/cut/adapter-checkpoints/checkpoint-9/trainer_state.json");
  } else {
    // killed inside the write of its third checkpoint (step 9): checkpoints 3 and 6 are complete
    EXPECT_NE(run_command("PEFT_CRASH_AT=folder-before-swap:3 " + std::string(PEFT_CLI) + " " +
                          train_args(data, dir + "/cut", extra), &out), 0);
    EXPECT_FALSE(exists(dir + "/cut/adapter-checkpoints/checkpoint-9"));
    EXPECT_TRUE(exists(dir + "/cut/adapter-checkpoints/checkpoint-6/trainer_state.json"));
    EXPECT_FALSE(exists(dir + "/cut/adapter"));
  }
  ASSERT_EQ(run_cli(train_args(data, dir + "/cut", extra + " --resume-from-checkpoint latest"), &out), 0) << out;
  EXPECT_NE(out.find("resumed from"), std::string::npos) << out;
  const auto want = log_of(dir + "/full/log.jsonl"), got = log_of(dir + "/cut/log.jsonl");
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "log line " << i;
  EXPECT_EQ(read_file(dir + "/cut/adapter/adapter_model.safetensors"),
            read_file(dir + "/full/adapter/adapter_model.safetensors"));
  // no temp folder left behind by the kill
  std::string ls;
  run_command("ls -A " + dir + "/cut/adapter-checkpoints", &ls);
  EXPECT_EQ(ls.find(".tmp-"), std::string::npos) << ls;
}

TEST(Resume, KilledDuringACheckpointWriteEager) { check_resume(false, false); }
TEST(Resume, KilledDuringACheckpointWriteCompiled) { check_resume(true, false); }
TEST(Resume, KilledAtARandomMomentEager) { check_resume(false, true); }
TEST(Resume, KilledAtARandomMomentCompiled) { check_resume(true, true); }

TEST(Resume, LatestWithoutCheckpointsAndAnotherRunAreErrors) {
  const std::string dir = temp_dir("resume-errors");
  const std::string data = make_text(dir);
  std::string out;
  EXPECT_EQ(run_cli(train_args(data, dir, "--resume-from-checkpoint latest"), &out), 1);
  EXPECT_NE(out.find("no complete checkpoint in"), std::string::npos) << out;
  ASSERT_EQ(run_cli(train_args(data, dir, ""), &out), 0) << out;
  std::string cmd = train_args(data, dir, "--resume-from-checkpoint latest");
  cmd.replace(cmd.find("--batch-size 4"), 14, "--batch-size 2");
  EXPECT_EQ(run_cli(cmd, &out), 1);
  EXPECT_NE(out.find("differs from the checkpoint's in 'batch_size'"), std::string::npos) << out;
}

TEST(TrainCli, PlotsTheLog) {
  const std::string dir = temp_dir("plot");
  const std::string data = make_text(dir);
  std::string out;
  std::string cmd = train_args(data, dir, "");
  cmd.replace(cmd.find("--no-plot"), 9, "");
  ASSERT_EQ(run_cli(cmd, &out), 0) << out;
  ASSERT_TRUE(exists(dir + "/log.png")) << out;
  EXPECT_EQ(read_file(dir + "/log.png").substr(1, 3), "PNG");
  ASSERT_EQ(run_cli("plot " + dir + "/log.jsonl --out " + dir + "/again.png", &out), 0) << out;
  EXPECT_EQ(read_file(dir + "/again.png").substr(1, 3), "PNG");
  write_file_atomic(dir + "/empty.jsonl", "");
  EXPECT_EQ(run_cli("plot " + dir + "/empty.jsonl", &out), 1);
  EXPECT_NE(out.find("no training step to plot"), std::string::npos) << out;
}

}  // namespace
