// A saved LoRA adapter (a PEFT folder) as llama.cpp's LoRA adapter GGUF, the file that llama.cpp's
// convert_lora_to_gguf.py writes and that llama-cli / llama-server take with --lora: metadata
// general.type = "adapter", adapter.type = "lora", adapter.lora.alpha, general.architecture; one
// <llama.cpp tensor>.lora_a / .lora_b pair per adapted module (see README "llama.cpp interop").
#pragma once
#include <string>
#include <vector>

#include "peft/io/gguf.h"

namespace peft {

struct GgufExportResult {
  std::string architecture;              // llama.cpp's architecture name ("llama", "qwen2")
  float alpha = 0;                       // adapter.lora.alpha as written
  std::vector<std::string> tensors;      // the tensor names, in file order
  std::vector<std::string> folded;       // modules whose scale was folded into lora_b (rsLoRA, alpha_pattern)
};

/// Export the LoRA adapter in folder `adapter_dir` (adapter_config.json + adapter_model.safetensors)
/// for the base model whose config.json is in `model_dir` (no weights are read) to the GGUF file `out`
/// (written atomically). Refused with an error naming the field or module: other methods than LoRA,
/// DoRA, lora_bias, bias != "none", modules_to_save, modules llama.cpp has no LoRA slot for, and
/// architectures llama.cpp does not run the same way (OPT).
GgufExportResult export_lora_gguf(const std::string & model_dir, const std::string & adapter_dir,
                                  const std::string & out, GgmlType type = GgmlType::F32);

}  // namespace peft
