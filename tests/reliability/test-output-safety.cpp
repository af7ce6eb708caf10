// What a hostile-user review (issue 28) found about inputs and outputs, reproduced: no output flag of any
// command overwrites a file of the base model (by its name, a symlink or a hard link); adapters holding
// NaN/Inf are refused at load (as at save) by the API and the CLI; an adapter whose whole size cannot fit
// is refused before anything is allocated; special token ids outside the vocabulary are refused when
// config.json is read; a one-machine distributed run listens on 127.0.0.1 only.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/model/causal-lm.h"
#include "peft/model/config.h"
#include "peft/peft-model.h"
#include "peft/util/runtime.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }
const std::string kIds = golden_case("train_lora_adamw") + "/input_ids.json";

bool has(const std::string & text, const std::string & part) { return text.find(part) != std::string::npos; }

// A copy of tiny-llama whose files the commands below must leave alone.
std::string copy_model(const std::string & dir) {
  const std::string model = dir + "/model";
  EXPECT_EQ(run_command("cp -r " + golden_model("tiny-llama") + " " + model), 0);
  return model;
}

std::string train_cmd(const std::string & model, const std::string & dir, const std::string & extra) {
  return "train --model " + model + " --method lora --r 4 --target-modules q_proj,v_proj --data " + kIds +
         " --batch-size 3 --steps 2 --lr 1e-2 --out " + dir + "/adapter " + extra;
}

// ---- item 6: every file inside --model is an input of every output flag ----

TEST(OutputSafety, NoOutputFlagOverwritesTheModelsWeights) {
  const std::string dir = temp_dir("out-model");
  const std::string model = copy_model(dir), weights = model + "/model.safetensors";
  const std::string before = read_file(weights), config_before = read_file(model + "/config.json");
  const std::string adapter = golden_case("lora") + "/adapter";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train --log-file", train_cmd(model, dir, "--log-file " + weights)},
      {"train --plot", train_cmd(model, dir, "--log-file " + dir + "/log.jsonl --plot " + weights)},
      {"forward --out", "forward --model " + model + " --input-ids " + kIds + " --out " + weights},
      {"export --out", "export --model " + model + " --adapter " + adapter + " --format gguf --out " + weights},
      {"export --out config.json", "export --model " + model + " --adapter " + adapter + " --format gguf --out " +
                                       model + "/config.json"},
  };
  for (const auto & c : cases) {
    std::string out;
    EXPECT_EQ(run_cli(c.second, &out), 1) << c.first << ": " << out;
    EXPECT_TRUE(has(out, "is an input of this command")) << c.first << ": " << out;
    EXPECT_TRUE(has(out, "in '" + model + "'")) << c.first << ": the message names the model folder: " << out;
  }
  EXPECT_EQ(read_file(weights), before) << "the model's weights changed";
  EXPECT_EQ(read_file(model + "/config.json"), config_before);
  EXPECT_FALSE(exists(dir + "/log.jsonl")) << "training started before the checks";
  EXPECT_FALSE(exists(dir + "/adapter"));
  // the same commands with outputs beside the model run (the check refuses inputs only)
  std::string out;
  EXPECT_EQ(run_cli("forward --model " + model + " --input-ids " + kIds + " --out " + dir + "/logits.safetensors", &out), 0)
      << out;
  EXPECT_EQ(run_cli("export --model " + model + " --adapter " + adapter + " --format gguf --out " + dir + "/a.gguf", &out), 0)
      << out;
}

TEST(OutputSafety, SymlinksAndHardLinksToTheModelAreInputsToo) {
  const std::string dir = temp_dir("out-links");
  // a Hugging Face cache layout: the snapshot's files are symlinks to blobs
  ASSERT_EQ(::mkdir((dir + "/blobs").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((dir + "/snapshot").c_str(), 0755), 0);
  for (const char * f : {"config.json", "model.safetensors"}) {
    write_file_atomic(dir + "/blobs/" + f + ".blob", read_file(golden_model("tiny-llama") + "/" + f));
    ASSERT_EQ(::symlink((dir + "/blobs/" + f + ".blob").c_str(), (dir + "/snapshot/" + f).c_str()), 0);
  }
  const std::string blob = dir + "/blobs/model.safetensors.blob", before = read_file(blob);
  ASSERT_EQ(::symlink((dir + "/snapshot").c_str(), (dir + "/model-link").c_str()), 0);  // a linked model folder
  ASSERT_EQ(::link(blob.c_str(), (dir + "/hard.safetensors").c_str()), 0);               // a hard link to the weights
  const std::string fwd = "forward --input-ids " + kIds;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"the symlink in the model folder", fwd + " --model " + dir + "/snapshot --out " + dir + "/snapshot/model.safetensors"},
      {"the blob it points to", fwd + " --model " + dir + "/snapshot --out " + blob},
      {"through a linked model folder", fwd + " --model " + dir + "/model-link --out " + dir + "/snapshot/model.safetensors"},
      {"a hard link", fwd + " --model " + dir + "/snapshot --out " + dir + "/hard.safetensors"},
      {"train --log-file at the blob", train_cmd(dir + "/model-link", dir, "--log-file " + blob)},
  };
  for (const auto & c : cases) {
    std::string out;
    EXPECT_EQ(run_cli(c.second, &out), 1) << c.first << ": " << out;
    EXPECT_TRUE(has(out, "is an input of this command")) << c.first << ": " << out;
  }
  EXPECT_EQ(read_file(blob), before);
  EXPECT_EQ(read_file(dir + "/hard.safetensors"), before);
  // a folder output that would contain the blob the model's weights resolve to
  std::string out;
  EXPECT_EQ(run_cli("merge --model " + dir + "/snapshot --adapter " + golden_case("lora") + "/adapter --out " + dir + "/blobs",
                    &out),
            1)
      << out;
  EXPECT_TRUE(has(out, "contains an input of this command")) << out;
  EXPECT_EQ(read_file(blob), before);
}

TEST(OutputSafety, FolderOutputsInsideTheModelAreRefusedWhenTheyAreItsFiles) {
  const std::string dir = temp_dir("out-folders");
  const std::string model = copy_model(dir), before = read_file(model + "/model.safetensors");
  std::string out;
  EXPECT_EQ(run_cli("quantize --model " + model + " --method nf4 --out " + model + "/model.safetensors", &out), 1) << out;
  EXPECT_EQ(run_cli("merge --model " + model + " --adapter " + golden_case("lora") + "/adapter --out " + model +
                        "/config.json",
                    &out),
            1)
      << out;
  EXPECT_EQ(read_file(model + "/model.safetensors"), before);
}

// ---- item 5: non-finite adapters are refused at load ----

// A LoRA adapter of kjv-llama saved as usual.
std::string saved_adapter(const std::string & dir) {
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q_proj", "v_proj"}},
                                       {"init_lora_weights", false}},
                                      "cfg");
  PeftModel pm(load_model(kjv()), cfg);
  pm.save_pretrained(dir);
  return dir;
}

// A copy of `good` with one value of one tensor set to `v` in its file; the tensor's name in *tensor.
std::string poisoned_copy(const std::string & good, const std::string & dir, float v, std::string * tensor) {
  EXPECT_EQ(run_command("cp -r " + good + " " + dir), 0);
  const std::string file = dir + "/adapter_model.safetensors";
  auto tensors = safetensors_load(file);
  auto it = std::next(tensors.begin(), 3);
  at::Tensor t = it->second.clone();
  t.view({-1})[5] = v;
  it->second = t;
  *tensor = it->first;
  safetensors_save(file, tensors);
  return dir;
}

TEST(NonFiniteAdapters, LoadIsRefusedByTheApiNamingTheFileAndTensor) {
  const std::string root = temp_dir("nonfinite-api"), good = saved_adapter(root + "/good");
  for (float v : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    std::string tensor;
    const std::string bad = poisoned_copy(good, root + (std::isnan(v) ? "/nan" : "/inf"), v, &tensor);
    PeftModel pm(load_model(kjv()));
    const std::string e = error_of([&] { pm.load_adapter(bad, "bad"); });
    EXPECT_TRUE(has(e, bad + "/adapter_model.safetensors: tensor '" + tensor + "' holds non-finite values")) << e;
    EXPECT_TRUE(has(e, std::isnan(v) ? "1 NaN, 0 Inf" : "0 NaN, 1 Inf")) << e;
    EXPECT_TRUE(pm.adapter_names().empty()) << "the model was touched";
    // hot-swapping it over a loaded adapter is refused the same way, and the loaded one still works
    pm.load_adapter(good, "good");
    const std::string h = error_of([&] { pm.hotswap_adapter(bad, "good"); });
    EXPECT_TRUE(has(h, "tensor '" + tensor + "' holds non-finite values")) << h;
    for (const auto & kv : pm.adapter_state_dict("good")) EXPECT_TRUE(at::isfinite(kv.second).all().item<bool>()) << kv.first;
  }
}

TEST(NonFiniteAdapters, GenerateAndExportRefuseThemWithANonZeroExit) {
  const std::string root = temp_dir("nonfinite-cli"), good = saved_adapter(root + "/good");
  std::string tensor, out;
  const std::string bad = poisoned_copy(good, root + "/inf", std::numeric_limits<float>::infinity(), &tensor);
  const std::string gen = "generate --model " + kjv() + " --prompt 'In the beginning' --max-new-tokens 4 --adapter ";
  ASSERT_EQ(run_cli(gen + good, &out), 0) << out;
  EXPECT_EQ(run_cli(gen + bad, &out), 1) << out;
  EXPECT_TRUE(has(out, "tensor '" + tensor + "' holds non-finite values")) << out;
  EXPECT_TRUE(has(out, bad + "/adapter_model.safetensors")) << out;
  EXPECT_EQ(run_cli("export --model " + kjv() + " --adapter " + bad + " --format gguf --out " + root + "/a.gguf", &out), 1)
      << out;
  EXPECT_TRUE(has(out, "tensor '" + tensor + "' holds non-finite values")) << out;
  EXPECT_FALSE(exists(root + "/a.gguf"));
}

// ---- item 8: the whole adapter's memory is checked before anything is allocated ----

// Runs the CLI with `args` (no shell) under a 6 GB address-space limit (were the check gone, it fails
// allocating instead of taking the machine's memory); its exit code, output, peak RSS (kB), wall seconds.
int run_measured(const std::string & args, std::string * out, long * max_rss_kb, double * seconds) {
  const std::string log = temp_dir("measured") + "/out.txt";
  std::vector<std::string> argv_s = {PEFT_CLI};
  std::istringstream ss(args);
  for (std::string a; ss >> a;) argv_s.push_back(a);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    const rlimit as{6ull << 30, 6ull << 30};
    ::setrlimit(RLIMIT_AS, &as);
    std::vector<char *> argv;
    for (auto & a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  rusage ru{};
  ::wait4(pid, &status, 0, &ru);
  *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  *max_rss_kb = ru.ru_maxrss;
  *out = read_file(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(AdapterMemory, AHugeRankOnEveryLinearLayerIsRefusedQuicklyAndSmall) {
  const std::string dir = temp_dir("huge-rank");
  // r = 1000000 on all-linear (more if this machine could hold that: the sum must exceed what is available)
  const ModelConfig c = ModelConfig::load(kjv());
  const double per_rank = 4.0 * c.num_layers *
                          (2.0 * (c.hidden_size + c.hidden_size) + 2.0 * (c.hidden_size + 128) +
                           3.0 * (c.hidden_size + 704));  // q, o; k, v (2 kv heads x 64); gate, up, down
  const int64_t r = std::max<int64_t>(1000000, static_cast<int64_t>(2.0 * available_memory_bytes() / per_rank) + 1);
  write_file_atomic(dir + "/adapter_config.json",
                    nlohmann::json({{"peft_type", "LORA"}, {"r", r}, {"lora_alpha", 16}, {"target_modules", "all-linear"}})
                        .dump());
  safetensors_save(dir + "/adapter_model.safetensors", {{"base_model.model.x", at::zeros({1})}});
  std::string out;
  long rss_kb = 0;
  double seconds = 0;
  const int rc = run_measured("generate --model " + kjv() + " --prompt In --max-new-tokens 2 --adapter " + dir, &out,
                              &rss_kb, &seconds);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_TRUE(has(out, "'r': " + std::to_string(r))) << out;
  EXPECT_TRUE(has(out, "28 adapted module(s) together")) << out;
  EXPECT_TRUE(has(out, "GB available; nothing was allocated")) << out;
  EXPECT_LT(seconds, 20) << out;
  EXPECT_LT(rss_kb, 1024 * 1024) << "peak RSS " << rss_kb << " kB";
  std::cerr << "refused in " << seconds << " s, peak RSS " << rss_kb / 1024 << " MB: " << out;
  // the library refuses it before any layer is touched
  PeftModel pm(load_model(kjv()));
  const std::string e = error_of([&] { pm.load_adapter(dir, "huge"); });
  EXPECT_TRUE(has(e, "LORA adapter 'huge' ('r': " + std::to_string(r) + ") needs ")) << e;
  EXPECT_TRUE(pm.adapter_names().empty());
}

// ---- low: special token ids in config.json ----

TEST(ModelConfigIds, SpecialTokenIdsOutsideTheVocabularyAreRefused) {
  const std::string dir = temp_dir("token-ids");
  const std::string model = dir + "/model";
  ASSERT_EQ(run_command("cp -r " + kjv() + " " + model), 0);
  const nlohmann::json base = read_json_file(kjv() + "/config.json");
  auto with = [&](const std::string & k, const nlohmann::json & v) {
    nlohmann::json j = base;
    j[k] = v;
    write_file_atomic(model + "/config.json", j.dump());
  };
  for (const auto & [field, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"pad_token_id", 1000000}, {"bos_token_id", 4096}, {"eos_token_id", nlohmann::json::array({2, 99999})},
           {"eos_token_id", -7}}) {
    with(field, value);
    const std::string e = error_of([&] { ModelConfig::load(model); });
    EXPECT_TRUE(has(e, model + "/config.json: field '" + field + "'")) << e;
    if (value != -7) EXPECT_TRUE(has(e, "outside the vocabulary [0, 4096)")) << e;
  }
  with("pad_token_id", 1000000);
  std::string out;
  EXPECT_EQ(run_cli("generate --model " + model + " --prompt In --max-new-tokens 2", &out), 1) << out;
  EXPECT_TRUE(has(out, "field 'pad_token_id' is 1000000, outside the vocabulary")) << out;
  // null and -1 mean none
  with("pad_token_id", nullptr);
  EXPECT_EQ(ModelConfig::load(model).pad_token_id, -1);
  with("pad_token_id", -1);
  EXPECT_EQ(ModelConfig::load(model).pad_token_id, -1);
  with("eos_token_id", 2);
  EXPECT_EQ(ModelConfig::load(model).eos_token_ids, std::vector<int64_t>{2});
}

// ---- item 13: a one-machine distributed run listens on loopback only ----

// The inodes of the sockets process `pid` holds.
std::set<std::string> socket_inodes(int pid) {
  std::set<std::string> out;
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR * d = ::opendir(fd_dir.c_str());
  if (!d) return out;
  while (dirent * e = ::readdir(d)) {
    char buf[256];
    const ssize_t n = ::readlink((fd_dir + "/" + e->d_name).c_str(), buf, sizeof buf - 1);
    if (n <= 0) continue;
    const std::string target(buf, static_cast<size_t>(n));
    if (target.rfind("socket:[", 0) == 0) out.insert(target.substr(8, target.size() - 9));
  }
  ::closedir(d);
  return out;
}

// `pid` and its descendants.
std::vector<int> process_tree(int pid) {
  std::vector<int> all = {pid};
  for (size_t i = 0; i < all.size(); ++i) {
    std::ifstream f("/proc/" + std::to_string(all[i]) + "/task/" + std::to_string(all[i]) + "/children");
    for (int c; f >> c;) all.push_back(c);
  }
  return all;
}

// Local addresses ("hex-ip:hex-port") of the listening TCP sockets among `inodes`.
std::vector<std::string> listening(const std::set<std::string> & inodes) {
  std::vector<std::string> out;
  for (const char * table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream f(table);
    std::string line;
    std::getline(f, line);
    while (std::getline(f, line)) {
      std::istringstream ss(line);
      std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
      ss >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (st == "0A" && inodes.count(inode)) out.push_back(local);
    }
  }
  return out;
}

bool loopback(const std::string & local) {
  const std::string ip = local.substr(0, local.find(':'));
  return ip == "0100007F" || ip == "00000000000000000000000001000000" || ip == "0000000000000000FFFF00000100007F";
}

TEST(DistBinding, AOneMachineRunListensOnLoopbackOnly) {
  const std::string dir = temp_dir("dist-bind");
  std::string cmd = std::string(PEFT_CLI) + " " +
                    train_cmd(golden_model("tiny-llama"), dir, "--log-file " + dir + "/log.jsonl --no-plot --nproc-per-node 2");
  cmd.replace(cmd.find("--steps 2"), 9, "--steps 40");
  cmd.replace(cmd.find("--batch-size 3"), 14, "--batch-size 1");
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open((dir + "/out.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char *>(nullptr));
    ::_exit(127);
  }
  std::set<std::string> seen, wide;
  int status = 0, samples = 0, with_workers = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(120)) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL() << "the run did not end";
    }
    const auto tree = process_tree(pid);
    std::set<std::string> inodes;
    for (int p : tree) {
      const auto s = socket_inodes(p);
      inodes.insert(s.begin(), s.end());
    }
    for (const auto & l : listening(inodes)) (loopback(l) ? seen : wide).insert(l);
    ++samples;
    if (tree.size() >= 3) ++with_workers;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::string out = read_file(dir + "/out.txt");
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  EXPECT_GT(with_workers, 5) << "too few samples while the workers ran (" << samples << ")";
  std::string w;
  for (const auto & l : wide) w += l + " ";
  EXPECT_TRUE(wide.empty()) << "listening beyond loopback: " << w;
  std::cerr << samples << " samples (" << with_workers << " with both workers), loopback listeners seen: " << seen.size()
            << "\n";
  EXPECT_TRUE(has(out, "rendezvous /")) << out;
  // the rendezvous folder is removed at the end
  const std::string rv = out.substr(out.find("rendezvous /") + 11);
  EXPECT_FALSE(exists(rv.substr(0, rv.find("/store)")))) << rv;
}

}  // namespace
