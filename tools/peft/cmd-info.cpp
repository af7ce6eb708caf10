// peft info --model DIR: architecture, parameter count (quantized weights as their elements) and storage, dtype.
#include <iostream>

#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/model/causal-lm.h"
#include "peft/quant/quantized-linear.h"

namespace peft::cli {

Runner add_info(CLI::App & app) {
  struct Opts {
    std::string model;
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("info", "print a model's architecture, parameter count and dtype");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  return [o]() {
    apply_common_options(o->common);
    auto model = load_model_with(o->model, at::kFloat, o->quant);
    const auto & c = model->config();
    // parameters as transformers counts them: a quantized weight by its elements, not its packed bytes;
    // the storage per dtype / format beside it
    std::map<std::string, std::pair<int64_t, int64_t>> storage;  // dtype or format -> (elements, bytes)
    int64_t n = 0;
    for (const auto & p : named_parameters(*model)) {
      n += p.second.numel();
      auto & s = storage[dtype_name(p.second.scalar_type())];
      s.first += p.second.numel();
      s.second += p.second.numel() * static_cast<int64_t>(p.second.element_size());
    }
    for (const auto & m : named_modules(model)) {
      auto q = std::dynamic_pointer_cast<quant::QuantizedLinear>(m.second);
      if (!q) continue;
      n += q->out_features() * q->in_features();
      auto & s = storage[quant::format_name(q->format())];
      s.first += q->out_features() * q->in_features();
      s.second += q->weight_bytes();
    }
    std::string stored;
    for (const auto & kv : storage) {
      stored += str(stored.empty() ? "" : ", ", kv.first, " ", kv.second.first, " (", kv.second.second, " bytes",
                    kv.first == "float32" || kv.first == "bfloat16" ? "" : ", codes and scales", ")");
    }
    std::cout << "architecture: " << c.arch_name() << "\n"
              << "model_type:   " << c.model_type << "\n"
              << "layers:       " << c.num_layers << "\n"
              << "hidden:       " << c.hidden_size << "\n"
              << "heads:        " << c.num_heads << " (kv " << c.num_kv_heads << ")\n"
              << "vocab:        " << c.vocab_size << "\n"
              << "parameters:   " << n << "\n"
              << "storage:      " << stored << "\n"
              << "dtype:        " << c.torch_dtype << " (loaded as float32)\n";
    return 0;
  };
}

}  // namespace peft::cli
