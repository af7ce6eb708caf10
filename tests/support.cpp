#include "support.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <utility>
#include <vector>
#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"

namespace peft::test {

std::string data_path(const std::string & rel) { return std::string(PEFT_TEST_DATA) + "/" + rel; }
std::string golden_case(const std::string & name) { return data_path("golden/cases/" + name); }
std::string golden_model(const std::string & name) { return data_path("golden/models/" + name); }

bool exists(const std::string & path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::vector<nlohmann::json> read_jsonl(const std::string & path, const std::vector<std::string> & drop) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    for (const auto & d : drop) j.erase(d);
    out.push_back(j);
  }
  return out;
}

std::string make_text(const std::string & dir) {
  std::ofstream f(dir + "/data.txt");
  for (int i = 0; i < 120; ++i) f << "Story " << i << ": a small model read line " << i * 7 << " and wrote it down.\n\n";
  return dir + "/data.txt";
}

std::string tokenizer_ref_dir() { return std::string(PEFT_TOKENIZER_REF); }

namespace {

// The folders temp_dir made, removed when the test process ends (by the process that made them: a forked
// child leaving does not take its parent's folders; PEFT_KEEP_TEST_DIRS=1 keeps them for a look).
struct TempDirs {
  std::mutex mu;
  std::vector<std::pair<std::string, pid_t>> dirs;
  ~TempDirs() {
    const char * keep = std::getenv("PEFT_KEEP_TEST_DIRS");
    if (keep && *keep && std::string(keep) != "0") return;
    for (const auto & d : dirs) {
      if (d.second != ::getpid()) continue;
      std::error_code ec;
      std::filesystem::remove_all(d.first, ec);
    }
  }
};
TempDirs & temp_dirs() {
  static TempDirs t;
  return t;
}

}  // namespace

std::string temp_dir(const std::string & tag) {
  std::string t = "/tmp/peft-test-" + tag + "-XXXXXX";
  char * p = ::mkdtemp(t.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  TempDirs & td = temp_dirs();
  std::lock_guard<std::mutex> g(td.mu);
  td.dirs.emplace_back(p, ::getpid());
  return p;
}

at::Tensor golden_ids(const std::string & case_name) {
  auto j = nlohmann::json::parse(read_file(golden_case(case_name) + "/input_ids.json"));
  const int64_t B = j.size(), S = j[0].size();
  at::Tensor t = at::empty({B, S}, at::kLong);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t k = 0; k < S; ++k) t[i][k] = j[i][k].get<int64_t>();
  return t;
}

std::map<std::string, at::Tensor> golden_expected(const std::string & case_name) {
  return safetensors_load(golden_case(case_name) + "/expected.safetensors");
}

::testing::AssertionResult all_close(const at::Tensor & got, const at::Tensor & want, double atol, double rtol) {
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " != expected " << want.sizes();
  }
  if (want.numel() == 0) return ::testing::AssertionSuccess();  // equal empty shapes (an AdaLoRA module of rank 0)
  at::Tensor g = got.detach().to(at::kDouble), w = want.detach().to(at::kDouble);
  at::Tensor excess = (g - w).abs() - (atol + rtol * w.abs());
  double worst = excess.max().item<double>();
  if (worst <= 0 && !at::isnan(g).any().item<bool>()) return ::testing::AssertionSuccess();
  int64_t idx = excess.flatten().argmax().item<int64_t>();
  return ::testing::AssertionFailure() << "max |got-want| = " << (g - w).abs().max().item<double>() << " at flat index "
                                       << idx << " (got " << g.flatten()[idx].item<double>() << ", want "
                                       << w.flatten()[idx].item<double>() << ")";
}

std::string error_of(const std::function<void()> & f) {
  try {
    f();
  } catch (const peft::Error & e) {
    return e.what();
  }
  return "";
}

int run_cli(const std::string & args, std::string * out) { return run_command(std::string(PEFT_CLI) + " " + args, out); }

int run_command(const std::string & command, std::string * out) {
  std::string cmd = command + " 2>&1";
  FILE * f = ::popen(cmd.c_str(), "r");
  if (!f) return -1;
  std::string text;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) text.append(buf.data(), n);
  int rc = ::pclose(f);
  if (out) *out = text;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace peft::test
