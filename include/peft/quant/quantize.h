// Quantized base models: which Linear layers become Linear4bit / Linear8bit (transformers' load_in_4bit /
// load_in_8bit: every Linear but the skipped ones, lm_head by default; embeddings and norms stay float),
// quantizing at load or taking a bitsandbytes checkpoint's tensors, and config.json's quantization_config.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/nn/module.h"
#include "peft/quant/formats.h"
#include "peft/util/options.h"

namespace peft::quant {

struct QuantOptions {
  Format format = Format::none;   // none, nf4, fp4, int8
  int64_t blocksize = 64;         // 4-bit blocks (transformers' default 64)
  bool double_quant = false;      // bnb_4bit_use_double_quant
  double int8_threshold = 6.0;    // llm_int8_threshold, written to quantization_config (see README)
  std::vector<std::string> skip = {"lm_head"};  // module names (or dotted paths) kept in float
  bool enabled() const { return format != Format::none; }
};

/// Options that cannot work (OptionError naming the field as `namer` names it: "format", "double_quant",
/// "blocksize"): double_quant without a 4-bit format, a blocksize that is not a power of two in [32, 4096].
void check_options(const QuantOptions & o, const FieldNamer & namer = {});

/// Does the module at `path` stay in float under `skip`? (a name matches a whole path component run)
bool skipped(const std::string & path, const std::vector<std::string> & skip);

/// Replace the float Linear layers below `root` by quantized ones. Checkpoint tensors of a quantized
/// checkpoint (bitsandbytes' keys: `weight` + `weight.absmax`/... or `weight` + `SCB`) are taken from
/// `tensors` and erased there; with `opts.enabled()` the remaining Linear weights found in `tensors`
/// (float) are quantized. `source` is named in errors (missing or inconsistent quant-state keys).
/// Returns the number of layers replaced.
int64_t load_quantized(const ModulePtr & root, std::map<std::string, at::Tensor> & tensors, const QuantOptions & opts,
                       const std::string & source);
/// Quantize the float Linear layers of a model already in memory (benchmarks, `peft quantize`).
int64_t quantize_modules(const ModulePtr & root, const QuantOptions & opts);
/// Replace every quantized layer by a float Linear holding its dequantized weight in `dtype`.
int64_t dequantize_modules(const ModulePtr & root, at::ScalarType dtype = at::kFloat);
/// How far the last writes into quantized layers (merges) moved the weights from what was written:
/// the rounding of quantizing the merged weight again, over all layers.
struct RequantizationError {
  double max_abs = 0, mean_abs = 0;
};
RequantizationError requantization_error(const ModulePtr & root);
/// The tensors of every quantized layer under bitsandbytes' checkpoint keys (added to `out`).
void export_quantized(const ModulePtr & root, std::map<std::string, at::Tensor> & out);

/// transformers' BitsAndBytesConfig.to_dict() for these options (config.json's quantization_config).
nlohmann::json quantization_config(const QuantOptions & opts);
/// Options from a config.json's quantization_config; what peft.cpp cannot load is an error naming the field.
QuantOptions options_from_config(const nlohmann::json & qc, const std::string & source);

/// Bytes and parameter counts of a model's weights, quantized layers counted by their stored bytes.
struct WeightFootprint {
  int64_t params = 0, bytes = 0;                      // all weights
  int64_t quantized_params = 0, quantized_bytes = 0;  // the quantized layers' weights alone
};
WeightFootprint weight_footprint(const ModulePtr & root);

}  // namespace peft::quant
