// A whole model folder (a base model, or one `peft merge` wrote) as a llama.cpp GGUF model file, the
// file convert_hf_to_gguf.py (+ llama-quantize --pure) writes: general.* and <arch>.* hyper-parameters,
// the tokenizer (gguf-tokenizer.h), the weights under llama.cpp's tensor names in F32, F16, BF16, Q8_0 or
// Q4_0 (norms and biases F32; a 2-D weight whose rows are not whole 32-value blocks F16 when quantizing).
// Tensors are read one at a time and streamed into the file, so no model is held in memory whole.
#pragma once
#include <string>
#include <vector>

#include "peft/io/gguf.h"

namespace peft {

struct GgufModelExportResult {
  std::string architecture;     // llama.cpp's name ("llama", "qwen2", "qwen3", "gpt2", "gptneox")
  std::string tokenizer;        // tokenizer.ggml.model / pre ("gpt2 / gpt-2")
  size_t tensors = 0;           // tensors written
  size_t kept_f16 = 0;          // weights kept F16 when quantizing (rows not whole 32-value blocks)
  std::vector<std::string> notes;  // what llama.cpp will do differently (a sliding window it ignores)
};

/// The model architectures export_model_gguf writes (config.json model_type values).
std::vector<std::string> gguf_model_types();

/// Export the model in `model_dir` (config.json, *.safetensors, tokenizer.json) to the GGUF file `out`
/// (written atomically) with its 2-D weights as `type`. Refused with an error naming the file and field:
/// an architecture or setting llama.cpp runs differently (model_type, rope_scaling, hidden_act, ...), a
/// tokenizer it cannot read, a checkpoint tensor with no place in the file.
GgufModelExportResult export_model_gguf(const std::string & model_dir, const std::string & out, GgmlType type);

}  // namespace peft
