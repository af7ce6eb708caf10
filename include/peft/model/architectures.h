// The supported architectures, one row each: the model_type of config.json, the Hugging Face class
// name, the reader of its own config.json fields, its builder (both defined in its file under
// src/model/arch/), and PEFT's default target modules for it (peft.utils.constants' per-model mappings:
// plain module names, so the adapter layer needs no per-architecture code).
// Adding an architecture = its file under src/model/arch/ + one row in src/model/architectures.cpp
// (see docs/adding-an-architecture.md).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/model/config.h"

namespace peft {

class CausalLM;
class ConfigReader;

/// Module names PEFT targets by default for a model type, one list per PEFT mapping.
struct DefaultTargets {
  std::vector<std::string> lora;             // TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (also OFT, BOFT, VeRA)
  std::vector<std::string> ia3;              // ..._IA3_TARGET_MODULES_MAPPING
  std::vector<std::string> ia3_feedforward;  // ..._IA3_FEEDFORWARD_MODULES_MAPPING
  std::vector<std::string> adalora;          // ..._ADALORA_TARGET_MODULES_MAPPING
  std::vector<std::string> ln_tuning;        // ..._LNTUNING_TARGET_MODULES_MAPPING
};

struct Architecture {
  std::string model_type;  // "llama"
  std::string class_name;  // "LlamaForCausalLM"
  /// Read the architecture's own config.json fields into `c` (common fields are read already).
  void (*read_config)(const ConfigReader & r, ModelConfig & c);
  std::shared_ptr<CausalLM> (*build)(const ModelConfig & c);
  DefaultTargets targets;
  /// Rename the architecture's own config.json names to the common ones before anything is read
  /// (GPT-2's n_embd -> hidden_size, ...); may be null.
  void (*rename)(nlohmann::json & config) = nullptr;
  /// llama.cpp's name for it (general.architecture, as convert_hf_to_gguf.py writes it); empty: no llama.cpp
  /// GGUF export (model files: src/model/export-gguf-model.cpp's table says which layouts it writes).
  std::string gguf_arch;
  /// convert_hf_to_gguf.py permutes the q/k projections' rows per head (its LlamaModel): the LoRA B rows
  /// of q_proj / k_proj are permuted the same way on export.
  bool gguf_permute_qk = false;
};

const std::vector<Architecture> & architectures();
/// The row for `model_type`, or nullptr.
const Architecture * find_architecture(const std::string & model_type);

}  // namespace peft
