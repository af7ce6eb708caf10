// Training under faults: a full disk (simulated with a file size limit: bash's `ulimit -f` with SIGXFSZ
// ignored, so writes past it fail with EFBIG) during a checkpoint or under the log is a named error with
// the previous checkpoint intact; SIGINT / SIGTERM finish the step, save a checkpoint and the adapter and
// exit 128 + the signal (a second signal exits at once), and the run resumes exactly; a second trainer
// on the same output is refused at start; a truncated or corrupted token cache is rebuilt, never
// trained on; schedule and thread values that cannot work are refused before any work.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "peft/io/files.h"
#include "peft/train/trainer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

using Clock = std::chrono::steady_clock;

std::string make_text(const std::string & dir) {
  std::ofstream f(dir + "/data.txt");
  for (int i = 0; i < 120; ++i) f << "Story " << i << ": a small model read line " << i * 7 << " and wrote it down.\n\n";
  return dir + "/data.txt";
}

// text data, evaluation, accumulation, checkpoints: the shape of test-resume's runs
std::string text_args(const std::string & data, const std::string & out, int steps, const std::string & extra = "") {
  return "train --model " + golden_model("tiny-llama") + " --byte-tokenizer --method lora --r 4 --lora-dropout 0.1 --target-modules " +
         "q_proj,v_proj,down_proj --data " + data + " --eval-split 0.1 --eval-steps 5 --max-length 48 --batch-size 4" +
         " --steps " + std::to_string(steps) + " --lr 5e-3 --lr-scheduler cosine --warmup-steps 3" +
         " --gradient-accumulation-steps 2 --seed 7 --save-steps 3 --save-total-limit 2 --no-plot --no-progress" +
         " --log-file " + out + "/log.jsonl --out " + out + "/adapter " + extra;
}

// token-id data (no token cache is written): the only files are the log, checkpoints and the adapter
std::string ids_args(const std::string & dir, int steps, const std::string & extra = "") {
  return "train --model " + golden_model("tiny-llama") + " --method lora --r 4 --target-modules q_proj,v_proj --data " +
         golden_case("train_lora_adamw") + "/input_ids.json --batch-size 3 --steps " + std::to_string(steps) +
         " --lr 1e-2 --no-plot --no-progress --log-file " + dir + "/log.jsonl --out " + dir + "/adapter " + extra;
}

// The CLI with every file it writes limited to `kib` KiB: a write past it fails with EFBIG (a full disk)
int run_cli_limited(int kib, const std::string & args, std::string * out) {
  return run_command("bash -c 'ulimit -f " + std::to_string(kib) + "; trap \"\" XFSZ; exec " + PEFT_CLI + " " + args +
                         "'",
                     out);
}

size_t file_size(const std::string & path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<size_t>(st.st_size) : 0;
}

size_t line_count(const std::string & path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string l; std::getline(in, l);) ++n;
  return n;
}

std::string listing(const std::string & dir) {
  std::string out;
  run_command("ls -A " + dir, &out);
  return out;
}

// The CLI in a child process (stdout and stderr to `output`); its pid is the CLI's own (exec).
pid_t spawn_cli(const std::string & args, const std::string & output) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    const std::string cmd = "exec " + std::string(PEFT_CLI) + " " + args + " >" + output + " 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char *>(nullptr));
    ::_exit(127);
  }
  return pid;
}

// Until `file` has `lines` lines (true) or the child ended (false; *status set).
bool wait_for_lines(pid_t pid, const std::string & file, size_t lines, int * status) {
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < deadline) {
    if (::waitpid(pid, status, WNOHANG) == pid) return false;
    if (line_count(file) >= lines) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ADD_FAILURE() << "no " << lines << " lines in " << file << " within 120 s";
  return false;
}

// The child's exit code (128 + n if killed by signal n); killed after 120 s.
int wait_exit(pid_t pid) {
  int status = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (::waitpid(pid, &status, WNOHANG) != pid) {
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << "the child did not end within 120 s";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// ---- a full disk ----

TEST(TrainingFaults, FullDiskDuringACheckpointIsAnErrorAndKeepsThePreviousOnes) {
  const std::string dir = temp_dir("fault-ckpt-disk"), ckpt = dir + "/adapter-checkpoints";
  std::string out;
  ASSERT_EQ(run_cli(ids_args(dir, 9, "--save-steps 3"), &out), 0) << out;
  ASSERT_TRUE(exists(ckpt + "/checkpoint-3/optimizer.pt") && exists(ckpt + "/checkpoint-6/optimizer.pt")) << out;
  // a limit that every file of the run but optimizer.pt (LibTorch's archive, the largest) fits in
  size_t largest = file_size(dir + "/log.jsonl");
  for (const char * f : {"adapter_model.safetensors", "adapter_config.json", "rng_state.safetensors", "trainer_state.json"}) {
    largest = std::max(largest, file_size(ckpt + "/checkpoint-6/" + f));
  }
  const size_t limit_kib = largest / 1024 + 1;
  ASSERT_LT(limit_kib * 1024, file_size(ckpt + "/checkpoint-6/optimizer.pt")) << "the limit would not stop the checkpoint";
  const std::string before3 = read_file(ckpt + "/checkpoint-3/optimizer.pt"),
                    before6 = read_file(ckpt + "/checkpoint-6/optimizer.pt"),
                    state6 = read_file(ckpt + "/checkpoint-6/trainer_state.json");
  // resumed from step 3, the run writes checkpoint-6 again: on a full disk
  const int rc = run_cli_limited(static_cast<int>(limit_kib),
                                 ids_args(dir, 9, "--save-steps 3 --resume-from-checkpoint " + ckpt + "/checkpoint-3"), &out);
  EXPECT_EQ(rc, 1) << out;  // an error, not an abort (134)
  EXPECT_NE(out.find("cannot write the checkpoint '" + ckpt + "/checkpoint-6'"), std::string::npos) << out;
  EXPECT_NE(out.find("File too large"), std::string::npos) << out;
  EXPECT_EQ(out.find("terminate"), std::string::npos) << out;
  EXPECT_EQ(out.find("unexpected pos"), std::string::npos) << out;
  // no temp folder left; the previous checkpoints are whole
  EXPECT_EQ(listing(ckpt).find(".tmp-"), std::string::npos) << listing(ckpt);
  EXPECT_EQ(read_file(ckpt + "/checkpoint-3/optimizer.pt"), before3);
  EXPECT_EQ(read_file(ckpt + "/checkpoint-6/optimizer.pt"), before6);
  EXPECT_EQ(read_file(ckpt + "/checkpoint-6/trainer_state.json"), state6);
  // and resumable once there is room again
  // (the first run's last step wrote checkpoint-9 too: resume from the one the full disk did not replace)
  ASSERT_EQ(run_cli(ids_args(dir, 9, "--save-steps 3 --resume-from-checkpoint " + ckpt + "/checkpoint-6"), &out), 0) << out;
  EXPECT_NE(out.find("resumed from " + ckpt + "/checkpoint-6"), std::string::npos) << out;
}

TEST(TrainingFaults, FullDiskUnderTheLogIsAnError) {
  const std::string dir = temp_dir("fault-log-disk");
  std::string out;
  // 4 KiB of log lines are about 25 steps
  const int rc = run_cli_limited(4, ids_args(dir, 80), &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("cannot write the log file '" + dir + "/log.jsonl': File too large"), std::string::npos) << out;
  EXPECT_LE(file_size(dir + "/log.jsonl"), 4096u);
  EXPECT_FALSE(exists(dir + "/adapter")) << "the run went on without its log";
}

// ---- signals ----

TEST(TrainingFaults, SigintSavesACheckpointAndTheAdapterAndTheRunResumesExactly) {
  const std::string dir = temp_dir("fault-sigint"), data = make_text(dir);
  run_command("mkdir -p " + dir + "/full " + dir + "/cut");
  std::string out;
  ASSERT_EQ(run_cli(text_args(data, dir + "/full", 24), &out), 0) << out;
  // Ctrl-C after a few logged steps
  const pid_t pid = spawn_cli(text_args(data, dir + "/cut", 24), dir + "/cut.out");
  int status = 0;
  ASSERT_TRUE(wait_for_lines(pid, dir + "/cut/log.jsonl", 4, &status)) << "the run ended before the signal";
  ::kill(pid, SIGINT);
  EXPECT_EQ(wait_exit(pid), 130);
  out = read_file(dir + "/cut.out");
  const size_t at = out.find("stopped by SIGINT after step ");
  ASSERT_NE(at, std::string::npos) << out;
  const int step = std::stoi(out.substr(at + 29));
  EXPECT_LT(step, 24) << out;
  const std::string ckpt = dir + "/cut/adapter-checkpoints/checkpoint-" + std::to_string(step);
  EXPECT_NE(out.find("saved the checkpoint " + ckpt), std::string::npos) << out;
  EXPECT_TRUE(exists(ckpt + "/trainer_state.json")) << listing(dir + "/cut/adapter-checkpoints");
  EXPECT_TRUE(exists(dir + "/cut/adapter/adapter_model.safetensors")) << out;
  EXPECT_EQ(read_jsonl(dir + "/cut/log.jsonl").back().value("step", -1), step);
  // the same command continues from there: the log and the adapter of the uninterrupted run
  ASSERT_EQ(run_cli(text_args(data, dir + "/cut", 24, "--resume-from-checkpoint latest"), &out), 0) << out;
  EXPECT_NE(out.find("resumed from " + ckpt + " at step " + std::to_string(step)), std::string::npos) << out;
  const auto want = read_jsonl(dir + "/full/log.jsonl"), got = read_jsonl(dir + "/cut/log.jsonl");
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "log line " << i;
  EXPECT_EQ(read_file(dir + "/cut/adapter/adapter_model.safetensors"),
            read_file(dir + "/full/adapter/adapter_model.safetensors"));
}

// Ctrl-C at the terminal of a data-parallel run: the terminal signals the launcher's process group; the
// launcher passes one SIGINT to each worker (their own groups), every rank finishes its step, rank 0 saves,
// and the launcher exits 130 without treating the workers' 130s as failures (it used to die at once and
// its death signalled the workers a second time: nothing was saved)
TEST(TrainingFaults, CtrlCAtADataParallelRunSavesAndResumes) {
  const std::string dir = temp_dir("fault-sigint-dist"), data = make_text(dir);
  run_command("mkdir -p " + dir + "/cut");
  const std::string args = text_args(data, dir + "/cut", 24, "--nproc-per-node 2 --threads 1");
  const pid_t pid = spawn_cli(args, dir + "/cut.out");
  int status = 0;
  ASSERT_TRUE(wait_for_lines(pid, dir + "/cut/log.jsonl", 3, &status)) << read_file(dir + "/cut.out");
  ::kill(-pid, SIGINT);  // (the launcher's whole process group, as a terminal's Ctrl-C)
  EXPECT_EQ(wait_exit(pid), 130) << read_file(dir + "/cut.out");
  const std::string out = read_file(dir + "/cut.out");
  const size_t at = out.find("stopped by SIGINT after step ");
  ASSERT_NE(at, std::string::npos) << out;
  const int step = std::stoi(out.substr(at + 29));
  EXPECT_EQ(out.find("stopping the other ranks"), std::string::npos) << out;
  EXPECT_EQ(out.find("second signal"), std::string::npos) << out;
  EXPECT_TRUE(exists(dir + "/cut/adapter-checkpoints/checkpoint-" + std::to_string(step) + "/trainer_state.json")) << out;
  EXPECT_TRUE(exists(dir + "/cut/adapter/adapter_model.safetensors")) << out;
  std::string again;
  ASSERT_EQ(run_cli(args + " --resume-from-checkpoint latest", &again), 0) << again;
  EXPECT_EQ(read_jsonl(dir + "/cut/log.jsonl").back().value("step", -1), 24);
}

TEST(TrainingFaults, ASecondSignalExitsAtOnce) {
  const std::string dir = temp_dir("fault-two-signals");
  const pid_t pid = spawn_cli(ids_args(dir, 100000), dir + "/run.out");
  int status = 0;
  ASSERT_TRUE(wait_for_lines(pid, dir + "/log.jsonl", 2, &status));
  // both arrive together: the first asks for a graceful stop, the second ends the process at once
  ::kill(pid, SIGSTOP);
  ::kill(pid, SIGINT);
  ::kill(pid, SIGTERM);
  ::kill(pid, SIGCONT);
  const int rc = wait_exit(pid);
  EXPECT_TRUE(rc == 130 || rc == 143) << rc;
  const std::string out = read_file(dir + "/run.out");
  EXPECT_NE(out.find("second signal: stopping now"), std::string::npos) << out;
  EXPECT_EQ(out.find("saved the checkpoint"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/adapter"));
}

TEST(TrainingFaults, ASecondTrainerOnTheSameOutIsRefusedAtStartAndSigtermStopsTheFirst) {
  const std::string dir = temp_dir("fault-two-trainers");
  const pid_t pid = spawn_cli(ids_args(dir, 100000), dir + "/first.out");
  int status = 0;
  ASSERT_TRUE(wait_for_lines(pid, dir + "/log.jsonl", 1, &status));
  std::string out;
  const auto t0 = Clock::now();
  std::string second = ids_args(dir, 5);
  second.replace(second.find(dir + "/log.jsonl"), dir.size() + 10, dir + "/second.jsonl");
  EXPECT_EQ(run_cli(second, &out), 1) << out;
  EXPECT_NE(out.find("--out '" + dir + "/adapter' is being trained into by another process"), std::string::npos) << out;
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 30.0);
  EXPECT_FALSE(exists(dir + "/second.jsonl")) << "the second trainer started";
  // SIGTERM: the first trainer finishes its step, saves, exits 143
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 143);
  out = read_file(dir + "/first.out");
  EXPECT_NE(out.find("stopped by SIGTERM after step"), std::string::npos) << out;
  EXPECT_TRUE(exists(dir + "/adapter/adapter_model.safetensors")) << out;
  EXPECT_NE(latest_checkpoint(dir + "/adapter-checkpoints"), "");
  // the lock went with the first trainer
  EXPECT_EQ(run_cli(second, &out), 0) << out;
}

// ---- the token cache ----

std::string cache_of(const std::string & dir) {
  std::string out;
  run_command("ls -A " + dir + " | grep peft-tokens", &out);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out.empty() || out.find('\n') != std::string::npos ? "" : dir + "/" + out;
}

TEST(TrainingFaults, ATruncatedOrCorruptedTokenCacheIsRebuiltNotTrainedOn) {
  const std::string dir = temp_dir("fault-cache"), data = make_text(dir);
  // one epoch: every sequence (so every cached id) is trained on
  auto args = [&](const std::string & log) {
    return "train --model " + golden_model("tiny-llama") + " --byte-tokenizer --method lora --r 4 --target-modules q_proj,v_proj" +
           " --data " + data + " --max-length 48 --batch-size 4 --epochs 1 --lr 5e-3 --seed 3 --no-plot --no-progress" +
           " --log-file " + dir + "/" + log + " --out " + dir + "/adapter";
  };
  std::string out;
  ASSERT_EQ(run_cli(args("first.jsonl"), &out), 0) << out;
  const std::string cache = cache_of(dir);
  ASSERT_FALSE(cache.empty()) << listing(dir);
  ASSERT_EQ(run_cli(args("cached.jsonl"), &out), 0) << out;
  EXPECT_NE(out.find("(token cache)"), std::string::npos) << out;
  const auto want = read_jsonl(dir + "/first.jsonl");
  EXPECT_EQ(read_jsonl(dir + "/cached.jsonl"), want);
  // corrupted in place with ids still in the vocabulary: the first 16 ids of the first document
  std::string bytes = read_file(cache);
  for (int k = 0; k < 16; ++k) {
    const size_t at = 64 + 4 * k;
    bytes[at] = static_cast<char>((static_cast<unsigned char>(bytes[at]) + 1) % 64);
  }
  { std::ofstream(cache, std::ios::binary | std::ios::trunc) << bytes; }
  ASSERT_EQ(run_cli(args("corrupted.jsonl"), &out), 0) << out;
  EXPECT_EQ(out.find("(token cache)"), std::string::npos) << "the corrupted cache was used: " << out;
  EXPECT_EQ(read_jsonl(dir + "/corrupted.jsonl"), want);
  // truncated in place (a copy cut short): rebuilt, never read past its end
  bytes = read_file(cache);
  for (size_t keep : {bytes.size() - 1, bytes.size() / 2, size_t{70}, size_t{10}, size_t{0}}) {
    { std::ofstream(cache, std::ios::binary | std::ios::trunc) << bytes.substr(0, keep); }
    ASSERT_EQ(run_cli(args("truncated.jsonl"), &out), 0) << "cut to " << keep << " bytes: " << out;
    EXPECT_EQ(out.find("(token cache)"), std::string::npos) << out;
    EXPECT_EQ(read_jsonl(dir + "/truncated.jsonl"), want) << "cut to " << keep << " bytes";
    EXPECT_EQ(read_file(cache), bytes) << "rebuilt";
  }
}

TEST(TrainingFaults, ATokenCacheCutShortDuringTheRunIsANamedErrorNotSigbus) {
  const std::string dir = temp_dir("fault-cache-cut");
  {
    std::ofstream f(dir + "/data.txt");
    for (int i = 0; i < 3000; ++i) f << "Story " << i << ": a small model read line " << i * 7 << " and wrote it down.\n\n";
  }
  const std::string args = "train --model " + golden_model("tiny-llama") + " --byte-tokenizer --method lora --r 4 --data " + dir +
                           "/data.txt --max-length 48 --batch-size 4 --epochs 1 --no-plot --no-progress --log-file " +
                           dir + "/log.jsonl --out " + dir + "/adapter";
  const pid_t pid = spawn_cli(args, dir + "/run.out");
  int status = 0;
  ASSERT_TRUE(wait_for_lines(pid, dir + "/log.jsonl", 3, &status)) << read_file(dir + "/run.out");
  const std::string cache = cache_of(dir);
  ASSERT_FALSE(cache.empty()) << listing(dir);
  ASSERT_EQ(::truncate(cache.c_str(), 1000), 0);  // rewritten in place by another program
  EXPECT_EQ(wait_exit(pid), 1);                   // not 135 (SIGBUS)
  const std::string out = read_file(dir + "/run.out");
  EXPECT_NE(out.find("error: the token cache '" + cache + "' was cut short while this run read it"), std::string::npos)
      << out;
}

// ---- values that cannot work ----

TEST(TrainingFaults, ScheduleAndThreadValuesThatCannotWorkAreRefusedAtOnce) {
  const std::string dir = temp_dir("fault-values");
  std::string out;
  auto quick = [&](const std::string & extra, int want_rc, const std::string & want_text) {
    const auto t0 = Clock::now();
    std::string args = ids_args(dir, 5, extra);
    args.replace(args.find("--steps 5"), 9, "");
    EXPECT_EQ(run_cli(args, &out), want_rc) << extra << ": " << out;
    EXPECT_NE(out.find(want_text), std::string::npos) << extra << ": " << out;
    EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 20.0) << extra;
    EXPECT_FALSE(exists(dir + "/adapter")) << extra;
  };
  quick("--epochs 1e300", 1, "--epochs 1e+300 is too large");
  quick("--epochs inf", 2, "--epochs");
  quick("--steps 5 --gradient-accumulation-steps 1000000000", 1,
        "--gradient-accumulation-steps 1000000000 is more than the 1 micro-batch(es) of an epoch");
  quick("--steps 5 --intra-op-threads 100000", 2, "--intra-op-threads: Value 100000 not in range");  // (CLI11 2.1: "1 to 1024", 2.4: "[1 - 1024]")
  quick("--steps 5 --threads 100000", 2, "--threads: Value 100000 not in range");
}

}  // namespace
