// peft export --model DIR [--adapter DIR] --format gguf --out FILE.gguf [--dtype TYPE]: llama.cpp's files.
//  - with --adapter: the LoRA adapter as llama.cpp's LoRA adapter GGUF (llama-cli --lora FILE.gguf); only
//    the base model's config.json is read; --dtype f32 | f16;
//  - without: the whole model (a base, or a folder peft merge wrote) as a llama.cpp model GGUF, its
//    tokenizer included; --dtype f32 | f16 | bf16 | q8_0 | q4_0.
#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/io/ggml-quants.h"
#include "peft/model/export-gguf-model.h"
#include "peft/peft-model/export-gguf.h"

namespace peft::cli {

namespace {

GgmlType ggml_type_of(const std::string & dtype) {
  if (dtype == "f16") return GgmlType::F16;
  if (dtype == "bf16") return GgmlType::BF16;
  if (dtype == "q8_0") return GgmlType::Q8_0;
  if (dtype == "q4_0") return GgmlType::Q4_0;
  return GgmlType::F32;
}

}  // namespace

Runner add_export(CLI::App & app) {
  struct Opts {
    std::string model, adapter, format, out, dtype = "f32";
    CommonOptions common;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("export", "write a model or a LoRA adapter as llama.cpp's GGUF file");
  cmd->add_option("--model", o->model, "the Hugging Face model folder (a base, or a merged model)")->required();
  cmd->add_option("--adapter", o->adapter,
                  "a LoRA adapter folder: write llama.cpp's --lora file for it (only the model's config.json is read)");
  cmd->add_option("--format", o->format, "gguf (llama.cpp)")->required()->check(CLI::IsMember({"gguf"}));
  cmd->add_option("--out", o->out, "the file to write")->required();
  cmd->add_option("--dtype", o->dtype, "the stored weights: f32 (default), f16, bf16, q8_0, q4_0 (an adapter: f32 or f16)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0"}));
  add_common_options(*cmd, o->common);
  return [o]() {
    const bool adapter = !o->adapter.empty();
    PEFT_USAGE(!adapter || o->dtype == "f32" || o->dtype == "f16",
               "--dtype ", o->dtype, " with --adapter: llama.cpp's LoRA adapter file is f32 or f16");
    // never over the model, the adapter folder, or a file in either (the model's weights included)
    check_output_file("--out", o->out, adapter ? std::vector<std::string>{o->model, o->adapter}
                                               : std::vector<std::string>{o->model});
    apply_common_options(o->common);
    const GgmlType type = ggml_type_of(o->dtype);
    if (!adapter) {
      const auto r = export_model_gguf(o->model, o->out, type);
      std::cerr << "wrote " << o->out << ": llama.cpp model, architecture '" << r.architecture << "', " << r.tensors
                << " tensors (" << o->dtype << "), tokenizer " << r.tokenizer << "\n";
      if (r.kept_f16 > 0) std::cerr << r.kept_f16 << " weight(s) kept f16: their rows are not whole 32-value blocks\n";
      for (const auto & n : r.notes) std::cerr << "note: " << n << "\n";
      return 0;
    }
    const auto r = export_lora_gguf(o->model, o->adapter, o->out, type);
    std::cerr << "wrote " << o->out << ": llama.cpp LoRA adapter for architecture '" << r.architecture << "', "
              << r.tensors.size() / 2 << " lora_a/lora_b pairs (" << o->dtype << "), alpha " << r.alpha << "\n";
    if (!r.folded.empty()) {
      std::cerr << "the scale of " << r.folded.size() << " module(s) (" << r.folded.front()
                << (r.folded.size() > 1 ? ", ..." : "")
                << ") is not alpha / r (rsLoRA or alpha_pattern): folded into their lora_b\n";
    }
    return 0;
  };
}

}  // namespace peft::cli
