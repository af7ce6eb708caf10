// The table of upstream-PEFT golden cases with one adapter (tests/data/golden/cases/<name>), shared by
// the eager tests and the compiled-parity matrix. A method joins by adding a row.
#pragma once
#include <string>
#include <vector>

namespace peft::test {

struct GoldenCase {
  std::string name;   // folder under golden/cases
  std::string model;  // folder under golden/models
};

inline const std::vector<GoldenCase> & single_adapter_cases() {
  static const std::vector<GoldenCase> cases = {
      {"lora", "tiny-llama"},         {"lora_rslora_dropout", "tiny-llama"}, {"lora_bias_opt", "tiny-opt"},
      {"dora", "tiny-llama"},         {"lora_embedding", "tiny-llama"},      {"lora_modules_to_save", "tiny-llama"},
      {"ia3", "tiny-llama"},          {"ia3_opt", "tiny-opt"},               {"loha", "tiny-llama"},
      {"lokr", "tiny-llama"},         {"ln_tuning", "tiny-opt"},             {"adalora", "tiny-llama"},
      {"oft", "tiny-llama"},          {"boft", "tiny-llama"},                {"vera", "tiny-llama"},
  };
  return cases;
}

}  // namespace peft::test
