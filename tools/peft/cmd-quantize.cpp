// peft quantize --model DIR --out DIR --method nf4|fp4|int8: write a checkpoint folder quantized in
// bitsandbytes' key layout with transformers' quantization_config, as a model saved after
// from_pretrained(load_in_4bit / load_in_8bit) is; it loads here and in transformers.
#include <sys/stat.h>

#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/io/files.h"
#include "quant-options.h"

namespace peft::cli {

Runner add_quantize(CLI::App & app) {
  struct Opts {
    std::string model, out;
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("quantize", "write a model quantized (NF4, FP4 or int8) in bitsandbytes' format");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder (float)")->required();
  cmd->add_option("--out", o->out, "folder for the quantized checkpoint")->required();
  cmd->add_option("--method", o->quant.quantize, "nf4, fp4 or int8")->required();
  cmd->add_option("--quantize-skip", o->quant.skip, "comma-separated modules kept in float (default lm_head)");
  cmd->add_flag("--double-quant", o->quant.double_quant, "4-bit: quantize the block scales too");
  cmd->add_option("--blocksize", o->quant.blocksize, "4-bit block size (default 64)");
  cmd->add_option("--int8-threshold", o->quant.int8_threshold, "int8: llm_int8_threshold for quantization_config");
  add_common_options(*cmd, o->common);
  return [o]() {
    const quant::QuantOptions q = quant_options(o->quant);
    PEFT_USAGE(q.enabled(), "--method must be nf4, fp4 or int8");
    check_output_folder("--out", o->out, {o->model});
    nlohmann::json config = read_json_file(o->model + "/config.json");
    PEFT_CHECK(!config.contains("quantization_config"), o->model, "/config.json: the model is already quantized");
    apply_common_options(o->common);
    auto model = load_model_with(o->model, at::kFloat, o->quant);
    const auto fp = quant::weight_footprint(model);
    config["quantization_config"] = quant::quantization_config(q);
    config["torch_dtype"] = "float32";  // the layers kept in float
    std::map<std::string, std::string> extra;  // the tokenizer goes along, in the same folder write
    struct stat st;
    for (const char * f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}) {
      const std::string p = o->model + "/" + f;
      if (::stat(p.c_str(), &st) == 0) extra[f] = read_file(p);
    }
    save_model(*model, o->out, config, extra);
    std::fprintf(stderr, "quantized %s: %.2f bytes per quantized weight (%lld weights, %.1f MB), whole model %.1f MB\n",
                 quant::format_name(q.format).c_str(), double(fp.quantized_bytes) / std::max<int64_t>(fp.quantized_params, 1),
                 static_cast<long long>(fp.quantized_params), fp.quantized_bytes / 1e6, fp.bytes / 1e6);
    return 0;
  };
}

}  // namespace peft::cli
