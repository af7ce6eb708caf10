// peft export --model DIR --adapter DIR --format gguf --out FILE.gguf [--dtype f32|f16]: a saved LoRA
// adapter as llama.cpp's LoRA adapter GGUF (llama-cli / llama-server --lora FILE.gguf). Only the base
// model's config.json is read, not its weights.
#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/peft-model/export-gguf.h"

namespace peft::cli {

Runner add_export(CLI::App & app) {
  struct Opts {
    std::string model, adapter, format, out, dtype = "f32";
    CommonOptions common;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("export", "write a LoRA adapter in another program's format (gguf: llama.cpp's --lora file)");
  cmd->add_option("--model", o->model, "the base model's Hugging Face folder (its config.json is read)")->required();
  cmd->add_option("--adapter", o->adapter, "the LoRA adapter folder (adapter_config.json, adapter_model.safetensors)")->required();
  cmd->add_option("--format", o->format, "gguf (llama.cpp's LoRA adapter file)")->required()->check(CLI::IsMember({"gguf"}));
  cmd->add_option("--out", o->out, "the file to write")->required();
  cmd->add_option("--dtype", o->dtype, "f32 (default) or f16: the type of the stored tensors")->check(CLI::IsMember({"f32", "f16"}));
  add_common_options(*cmd, o->common);
  return [o]() {
    // never over the base model, the adapter folder, or a file in either (the model's weights included)
    check_output_file("--out", o->out, {o->model, o->adapter});
    apply_common_options(o->common);
    const auto r = export_lora_gguf(o->model, o->adapter, o->out, o->dtype == "f16" ? GgmlType::F16 : GgmlType::F32);
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
