// peft info --model DIR: architecture, parameter count, dtype.
#include <iostream>

#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/model/causal-lm.h"

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
    int64_t n = 0;
    for (const auto & p : named_parameters(*model)) n += p.second.numel();
    std::cout << "architecture: " << c.arch_name() << "\n"
              << "model_type:   " << c.model_type << "\n"
              << "layers:       " << c.num_layers << "\n"
              << "hidden:       " << c.hidden_size << "\n"
              << "heads:        " << c.num_heads << " (kv " << c.num_kv_heads << ")\n"
              << "vocab:        " << c.vocab_size << "\n"
              << "parameters:   " << n << "\n"
              << "dtype:        " << c.torch_dtype << " (loaded as float32)\n";
    return 0;
  };
}

}  // namespace peft::cli
