// Shared test helpers: paths to bundled golden data, tolerance checks, running the CLI.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace peft::test {

std::string data_path(const std::string & rel);            // tests/data/<rel>
std::string golden_case(const std::string & name);         // tests/data/golden/cases/<name>
std::string golden_model(const std::string & name);        // tests/data/golden/models/<name>
std::string tokenizer_ref_dir();                         // the npm reference tokenizers' outputs (build/tokenizer-reference)
std::string temp_dir(const std::string & tag);             // fresh empty folder under /tmp
bool exists(const std::string & path);                     // a file or folder is there
/// Write <dir>/data.txt, a small training text (120 numbered lines, blank-line separated); returns its path.
std::string make_text(const std::string & dir);
/// The objects of a JSON-lines file (a training log), without the fields `drop` (timings and memory).
std::vector<nlohmann::json> read_jsonl(const std::string & path,
                                       const std::vector<std::string> & drop = {"tokens_per_second", "peak_rss_mb"});
at::Tensor golden_ids(const std::string & case_name);      // input_ids.json of a case, (B, S) int64
std::map<std::string, at::Tensor> golden_expected(const std::string & case_name);

/// |got - want| <= atol + rtol * |want| everywhere; the failure message gives the worst element.
::testing::AssertionResult all_close(const at::Tensor & got, const at::Tensor & want, double atol = 1e-4,
                                     double rtol = 1e-3);
#define EXPECT_CLOSE(got, want) EXPECT_TRUE(::peft::test::all_close((got), (want)))

/// The message of the peft::Error `f` throws, or "" if it throws none.
std::string error_of(const std::function<void()> & f);

/// Run a shell command; returns its exit code, stdout and stderr together in *out if given.
int run_command(const std::string & cmd, std::string * out = nullptr);
/// Run the peft CLI with arguments (run_command).
int run_cli(const std::string & args, std::string * out = nullptr);

}  // namespace peft::test
