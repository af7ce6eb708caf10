// peft merge: fold adapters into the base weights and write a plain Hugging Face checkpoint folder
// (config.json, model.safetensors, the tokenizer files and generation_config.json when the model has them), each
// file written atomically.
#include <sys/stat.h>

#include <iostream>

#include "adapter-options.h"
#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/error.h"
#include "peft/io/files.h"

namespace peft::cli {

Runner add_merge(CLI::App & app) {
  struct Opts {
    std::string model, out, dtype = "float32";
    bool safe = false, unsafe = false;
    CommonOptions common;
    QuantFlags quant;
    AdapterOptions adapters;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("merge", "merge adapters into the base model and save it as a checkpoint folder");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--out", o->out, "folder for the merged checkpoint")->required();
  auto * dtype_opt = cmd->add_option("--dtype", o->dtype,
                                     "the merged weights' dtype: float32 (f32, the default), bfloat16 (bf16), float16 "
                                     "(f16: merged in float32, written as float16) or auto (config.json's torch_dtype); "
                                     "on a quantized base: write the merged weights dequantized instead of quantized again");
  cmd->add_flag("--safe-merge", o->safe, "refuse a merge that produces non-finite weights (the default)");
  cmd->add_flag("--unsafe-merge", o->unsafe, "skip the check for non-finite merged weights");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant, /*writes_config=*/true);
  add_adapter_options(*cmd, o->adapters, AdapterFlags::merge);
  return [o, dtype_opt]() {
    PEFT_USAGE(!o->adapters.adapters.empty(), "merge needs at least one --adapter");
    PEFT_USAGE(!(o->safe && o->unsafe), "--safe-merge and --unsafe-merge exclude each other");
    // float16 is written, not computed in (LibTorch 1.13 has no float16 CPU kernels): the merge runs in float32
    const bool to_half = o->dtype == "float16" || o->dtype == "f16" || o->dtype == "half" ||
                         (o->dtype == "auto" && read_json_file(o->model + "/config.json").value("torch_dtype", "") == "float16");
    const at::ScalarType dtype = to_half ? at::kFloat : resolve_dtype(o->dtype, o->model);
    std::vector<std::string> inputs = {o->model};
    for (const auto & a : o->adapters.adapters) inputs.push_back(a.substr(0, a.find('=')));
    check_output_folder("--out", o->out, inputs);  // never over the base model or an adapter
    nlohmann::json config = read_json_file(o->model + "/config.json");
    apply_common_options(o->common);
    auto base = load_model_with(o->model, dtype, o->quant);
    // --dtype on a quantized base: merge into the dequantized weights (exact), write them in that dtype
    const bool dequantize = dtype_opt->count() > 0 && quant::dequantize_modules(base, dtype) > 0;
    if (dequantize) config.erase("quantization_config");
    Prepared run = apply_adapter_options(base, o->adapters);
    auto plain = run.peft->merge_and_unload(/*safe_merge=*/!o->unsafe);
    if (to_half) {
      PEFT_USAGE(quant::weight_footprint(plain).quantized_params == 0,
                 "--dtype ", o->dtype, " on a quantized base: give --dtype float16 explicitly to write it dequantized");
      at::NoGradGuard g;
      plain->to(at::kHalf);
    }
    const at::ScalarType written = to_half ? at::kHalf : dtype;
    config["torch_dtype"] = dtype_name(written);  // transformers' names: "float32", "bfloat16", "float16"
    if (dequantize) std::cerr << "merged into the dequantized base, written in " << dtype_name(written) << "\n";
    if (quant::weight_footprint(plain).quantized_params > 0) {
      // a quantized base: the merged weights were quantized again (PEFT's way)
      const auto err = quant::requantization_error(plain);
      if (!config.contains("quantization_config")) config["quantization_config"] = quant::quantization_config(quant_options(o->quant));
      std::cerr << "merged into the quantized weights and quantized again: weights moved by up to " << err.max_abs
                << " (mean " << err.mean_abs << ") from the exact merge; --dtype float32 writes them dequantized\n";
    }
    // the tokenizer and generation_config.json (generate's and serve's defaults) go along, in the same folder write
    std::map<std::string, std::string> extra;
    struct stat st;
    for (const char * f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                            "generation_config.json"}) {
      const std::string p = o->model + "/" + f;
      if (::stat(p.c_str(), &st) == 0) extra[f] = read_file(p);
    }
    save_model(*plain, o->out, config, extra);
    std::cerr << "merged " << o->adapters.adapters.size() << " adapter(s) into " << o->out << "\n";
    return 0;
  };
}

}  // namespace peft::cli
