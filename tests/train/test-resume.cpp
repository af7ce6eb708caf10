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

std::string train_args(const std::string & data, const std::string & out, const std::string & extra) {
  return "train --model " + golden_model("tiny-llama") + " --byte-tokenizer --method lora --r 4 --lora-dropout 0.1 --target-modules " +
         "q_proj,v_proj,down_proj --data " + data + " --eval-split 0.1 --eval-steps 5 --max-length 48 --batch-size 4" +
         " --steps 16 --lr 5e-3 --lr-scheduler cosine --warmup-steps 3 --gradient-accumulation-steps 2 --seed 7" +
         " --save-steps 3 --save-total-limit 2 --no-plot --log-file " + out + "/log.jsonl --out " + out + "/adapter " +
         extra;
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
  const auto want = read_jsonl(dir + "/full/log.jsonl"), got = read_jsonl(dir + "/cut/log.jsonl");
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

TEST(Resume, LatestWithoutCheckpointsStartsANewRunAnotherRunIsAnError) {
  const std::string dir = temp_dir("resume-errors");
  const std::string data = make_text(dir);
  std::string out;
  // as transformers' Trainer: nothing to resume from is a new run, said on stderr
  EXPECT_EQ(run_cli(train_args(data, dir, "--resume-from-checkpoint latest"), &out), 0) << out;
  EXPECT_NE(out.find("no complete checkpoint in '" + dir + "/adapter-checkpoints'; starting a new run"),
            std::string::npos) << out;
  EXPECT_EQ(out.find("resumed from"), std::string::npos) << out;
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

namespace {

// the bundled model with its chat template: conversations and prompt/completion records train through
// the CLI, eager and compiled alike (same losses), and the console shows a progress bar on a terminal
std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }

TEST(TrainCli, ChatAndPromptCompletionRecordsEagerEqualsCompiled) {
  const std::string dir = temp_dir("train-chat");
  {
    std::ofstream f(dir + "/chat.jsonl");
    for (int i = 0; i < 12; ++i) {
      nlohmann::json rec = {{"messages",
                             {{{"role", "user"}, {"content", "What is verse " + std::to_string(i) + "?"}},
                              {{"role", "assistant"}, {"content", "In the beginning, " + std::to_string(i)}}}}};
      f << rec.dump() << "\n";
      f << nlohmann::json({{"prompt", "Say " + std::to_string(i)}, {"completion", " amen"}}).dump() << "\n";
    }
  }
  std::vector<std::vector<nlohmann::json>> logs;
  for (const std::string extra : {"", " --compile"}) {
    std::string out;
    ASSERT_EQ(run_cli("train --model " + kjv() + " --method lora --r 4 --target-modules q_proj,v_proj --data " + dir +
                          "/chat.jsonl --eval-split 0.25 --eval-on-start --batch-size 4 --steps 5 --lr 1e-3 --no-plot" +
                          " --log-file " + dir + "/log.jsonl --out " + dir + "/adapter" + extra,
                      &out),
              0)
        << out;
    EXPECT_NE(out.find("18 documents"), std::string::npos) << out;  // 24 records, 6 held out
    logs.push_back(read_jsonl(dir + "/log.jsonl"));
  }
  ASSERT_EQ(logs[0].size(), 5u + 2u);  // 5 steps, eval at the start and the end
  for (size_t i = 0; i < logs[0].size(); ++i) {
    for (const char * k : {"loss", "eval_loss"}) {
      if (logs[0][i].contains(k)) EXPECT_NEAR(logs[0][i][k].get<double>(), logs[1][i][k].get<double>(), 1e-4) << i;
    }
  }
}

TEST(TrainCli, ProgressBarOnATerminal) {
  std::string out;
  if (run_command("command -v script", &out) != 0) GTEST_SKIP() << "no script(1) to fake a terminal";
  const std::string dir = temp_dir("train-tty");
  const std::string data = make_text(dir);
  const std::string cmd = std::string(PEFT_CLI) + " " + train_args(data, dir, "");
  ASSERT_EQ(run_command("script -qec '" + cmd + "' /dev/null", &out), 0) << out;
  EXPECT_NE(out.find("\r\033[K["), std::string::npos) << out;  // redrawn in place
  EXPECT_NE(out.find("] 16/16 "), std::string::npos) << out;
  EXPECT_NE(out.find(" tok/s"), std::string::npos) << out;
  EXPECT_EQ(out.find("step 1/16"), std::string::npos) << out;  // no plain lines
}

}  // namespace
