// peft forward: the parity interface. Runs the model on IDS.json and writes logits (B, S, V) float32.
#include <iostream>
#include <sstream>

#include "commands.h"
#include "adapter-options.h"
#include "common.h"
#include "quant-options.h"
#include "peft/data/dataset.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/model/causal-lm.h"

namespace peft::cli {

Runner add_forward(CLI::App & app) {
  struct Opts {
    std::string model, ids, out, dtype = "float32";
    bool compile = false;
    CommonOptions common;
    QuantFlags quant;
    AdapterOptions adapters;
    std::string adapter_names;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("forward", "run the model on token ids and write the logits");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--input-ids", o->ids, "JSON array of equal-length arrays of token ids")->required();
  cmd->add_option("--out", o->out, "output .safetensors (tensor 'logits', float32)")->required();
  cmd->add_option("--dtype", o->dtype, kDtypeHelp);
  cmd->add_flag("--compile", o->compile, "run the compiled model");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  add_adapter_options(*cmd, o->adapters);
  cmd->add_option("--adapter-names", o->adapter_names,
                  "mixed-adapter batch: one adapter per row, comma-separated (__base__ = no adapter)");
  return [o]() {
    const at::ScalarType dtype = resolve_dtype(o->dtype, o->model);
    std::vector<std::string> inputs = {o->model, o->ids};
    for (const auto & a : o->adapters.adapters) inputs.push_back(a.substr(0, a.find('=')));
    check_output_file("--out", o->out, inputs);
    const auto rows = read_token_ids(o->ids);
    check_token_ids(o->ids, rows, ModelConfig::load(o->model), 0, /*positions_only_if_learned=*/true);
    at::Tensor ids = ids_tensor(rows, o->ids);
    apply_common_options(o->common);
    const RunModel run = load_run_model(o->model, dtype, o->quant, o->adapters, o->compile);
    at::NoGradGuard no_grad;
    PeftInput in;
    in.input_ids = ids;
    if (!o->adapter_names.empty()) {
      PEFT_CHECK(run.has_adapters, "--adapter-names needs adapters (and not --merge-and-unload)");
      std::stringstream ss(o->adapter_names);
      for (std::string n; std::getline(ss, n, ',');) in.adapter_names.push_back(n);
    }
    at::Tensor logits = run.forward(in);
    safetensors_save(o->out, {{"logits", logits.to(at::kFloat)}});
    return 0;
  };
}

}  // namespace peft::cli
