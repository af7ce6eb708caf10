// The quantization flags every command that loads a model has (--quantize, --quantize-skip,
// --double-quant, --blocksize, --int8-threshold), and the load options they make.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "peft/model/causal-lm.h"

namespace peft::cli {

struct QuantFlags {
  std::string quantize = "none";
  std::string skip = "lm_head";
  bool double_quant = false;
  int64_t blocksize = 64;
  double int8_threshold = 6.0;
};
/// `writes_config`: the command writes quantization_config (peft merge): it also has --int8-threshold, which
/// only goes into that file (computing does not use it).
void add_quant_options(CLI::App & cmd, QuantFlags & q, bool writes_config = false);
/// The quantization the flags ask for (a usage error for flags that do not apply, e.g. --double-quant with int8).
quant::QuantOptions quant_options(const QuantFlags & q);
/// The same, unchecked (for a caller that checks the options itself: peft::TrainJob).
quant::QuantOptions parse_quant_flags(const QuantFlags & q);
/// The flag of a QuantOptions field ("blocksize" -> "--blocksize").
std::string quant_flag(const std::string & field);
/// load_model with `dtype` and the flags' quantization.
std::shared_ptr<CausalLM> load_model_with(const std::string & dir, at::ScalarType dtype, const QuantFlags & q);

}  // namespace peft::cli
