// Folders are written whole or not at all: after a crash at any point of `peft train` or `peft merge`,
// the output folder is the previous complete version (or absent), never a mix; a second writer of the
// same folder fails at once; temp folders of killed writers are cleaned up by the next one.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::vector<std::string> leftovers(const std::string & dir) {
  std::string out;
  run_command("ls -A " + dir, &out);
  std::vector<std::string> v;
  std::stringstream ss(out);
  for (std::string l; std::getline(ss, l);) {
    if (l.find(".tmp-") != std::string::npos || l.find(".old-") != std::string::npos) v.push_back(l);
  }
  return v;
}

std::string train_args(const std::string & dir, int steps, double lr) {
  const std::string c = golden_case("train_lora_adamw");
  return "train --model " + golden_model("tiny-llama") + " --method lora --r 4 --target-modules q_proj,v_proj --data " +
         c + "/input_ids.json --batch-size 3 --steps " + std::to_string(steps) + " --lr " + std::to_string(lr) +
         " --log-file " + dir + "/log.jsonl --out " + dir + "/adapter";
}

// the adapter folder loads, and its weights are those of one complete run (run `which` made B = which)
double adapter_marker(const std::string & folder) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), folder);
  auto t = safetensors_load(folder + "/adapter_model.safetensors");
  return t.begin()->second.abs().sum().item<double>();
}

// Run the CLI in a child and SIGKILL it after `ms` milliseconds (if still running). Returns true if killed.
bool run_and_kill(const std::string & args, int ms, const std::string & env = "") {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    std::string cmd = env + " exec " + std::string(PEFT_CLI) + " " + args + " >/dev/null 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char *>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return true;
}

TEST(CrashConsistency, KilledAtEachPointOfAFolderWriteLeavesTheOldFolder) {
  const std::string dir = temp_dir("crash-points");
  std::string log;
  ASSERT_EQ(run_cli(train_args(dir, 2, 1e-2), &log), 0) << log;
  const double first = adapter_marker(dir + "/adapter");
  for (const char * point : {"folder-files-written", "folder-before-swap"}) {
    // a different run (more steps: other weights) dies at `point`
    int rc = run_command(std::string("PEFT_CRASH_AT=") + point + " " + PEFT_CLI + " " + train_args(dir, 5, 1e-2), &log);
    EXPECT_NE(rc, 0) << point;
    EXPECT_DOUBLE_EQ(adapter_marker(dir + "/adapter"), first) << "after a crash at " << point << ": not the old folder";
  }
  // after the swap the new folder is complete, even if the old one was not removed yet
  run_command(std::string("PEFT_CRASH_AT=folder-swapped ") + PEFT_CLI + " " + train_args(dir, 5, 1e-2), &log);
  const double second = adapter_marker(dir + "/adapter");
  EXPECT_NE(second, first);
  EXPECT_FALSE(leftovers(dir).empty()) << "a killed writer leaves its temp folder";
  // the next writer cleans up what killed ones left
  ASSERT_EQ(run_cli(train_args(dir, 2, 1e-2), &log), 0) << log;
  EXPECT_TRUE(leftovers(dir).empty()) << leftovers(dir).front();
  EXPECT_DOUBLE_EQ(adapter_marker(dir + "/adapter"), first);  // the same 2-step run again
}

TEST(CrashConsistency, RandomKillsOfTrainAndMerge) {
  // bounded: a few kills at random moments of each command; the output is always absent or complete
  const std::string dir = temp_dir("crash-random");
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> when(150, 1400);
  int killed = 0;
  for (int i = 0; i < 6; ++i) {
    killed += run_and_kill(train_args(dir, 150 + 50 * (i % 3), 1e-2), when(rng));
    if (exists(dir + "/adapter")) EXPECT_NO_THROW(adapter_marker(dir + "/adapter")) << "try " << i;
  }
  const std::string adapter = golden_case("lora") + "/adapter";
  for (int i = 0; i < 4; ++i) {
    killed += run_and_kill("merge --model " + golden_model("tiny-llama") + " --adapter " + adapter + " --out " + dir +
                               "/merged",
                           when(rng));
    if (exists(dir + "/merged")) {
      EXPECT_TRUE(exists(dir + "/merged/config.json") && exists(dir + "/merged/model.safetensors")) << "try " << i;
      EXPECT_NO_THROW(load_model(dir + "/merged")) << "try " << i;
    }
  }
  EXPECT_GT(killed, 0) << "no run was killed: the test checked nothing";
}

TEST(CrashConsistency, ASecondWriterFailsAtOnce) {
  const std::string dir = temp_dir("lock");
  FolderWriter holder(dir + "/adapter");  // this process writes the folder now
  std::string log;
  EXPECT_EQ(run_cli(train_args(dir, 1, 1e-2), &log), 1);
  EXPECT_NE(log.find("being written by another process"), std::string::npos) << log;
  EXPECT_THROW(FolderWriter(dir + "/adapter"), peft::Error);
}

TEST(CrashConsistency, OtherFilesInTheFolderAreKept) {
  const std::string dir = temp_dir("keep") + "/adapter";
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("lora") + "/adapter");
  m->save_pretrained(dir);
  write_file_atomic(dir + "/notes.txt", "mine");
  ::mkdir((dir + "/other").c_str(), 0755);
  write_file_atomic(dir + "/other/adapter_config.json", "{}");
  m->save_pretrained(dir);
  EXPECT_EQ(read_file(dir + "/notes.txt"), "mine");
  EXPECT_EQ(read_file(dir + "/other/adapter_config.json"), "{}");
}

TEST(CrashConsistency, TempFilesAreExclusive) {
  // a planted symlink where a predictable temp name would be cannot redirect the write
  const std::string dir = temp_dir("symlink");
  write_file_atomic(dir + "/victim", "keep");
  for (int pid = 0; pid < 4; ++pid) {
    ::symlink((dir + "/victim").c_str(), (dir + "/out.json.tmp." + std::to_string(::getpid() + pid)).c_str());
  }
  write_file_atomic(dir + "/out.json", "{}");
  EXPECT_EQ(read_file(dir + "/victim"), "keep");
  EXPECT_EQ(read_file(dir + "/out.json"), "{}");
}

}  // namespace
