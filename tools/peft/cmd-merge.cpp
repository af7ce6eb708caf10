// peft merge: fold adapters into the base weights and write a plain Hugging Face checkpoint folder
// (config.json, model.safetensors, tokenizer.json when the model has one), each file written atomically.
#include <sys/stat.h>

#include <iostream>

#include "adapter-options.h"
#include "commands.h"
#include "common.h"
#include "peft/error.h"
#include "peft/io/files.h"

namespace peft::cli {

Runner add_merge(CLI::App & app) {
  struct Opts {
    std::string model, out, dtype = "float32";
    bool safe = false;
    CommonOptions common;
    AdapterOptions adapters;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("merge", "merge adapters into the base model and save it as a checkpoint folder");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--out", o->out, "folder for the merged checkpoint")->required();
  cmd->add_option("--dtype", o->dtype, "float32 or bfloat16 (weights are stored in this dtype)");
  cmd->add_flag("--safe-merge", o->safe, "refuse a merge that produces non-finite weights");
  add_common_options(*cmd, o->common);
  add_adapter_options(*cmd, o->adapters);
  return [o]() {
    apply_common_options(o->common);
    PEFT_CHECK(!o->adapters.adapters.empty(), "merge needs at least one --adapter");
    PEFT_CHECK(!o->adapters.merge && !o->adapters.unmerge && !o->adapters.merge_and_unload && !o->adapters.disable,
               "merge takes --adapter, --active and --weighted only");
    auto base = load_model(o->model, parse_dtype(o->dtype));
    Prepared run = apply_adapter_options(base, o->adapters);
    auto plain = run.peft->merge_and_unload(o->safe);
    nlohmann::json config = read_json_file(o->model + "/config.json");
    config["torch_dtype"] = o->dtype;
    save_model(*plain, o->out, config);
    struct stat st;
    const std::string tok = o->model + "/tokenizer.json";
    if (::stat(tok.c_str(), &st) == 0) write_file_atomic(o->out + "/tokenizer.json", read_file(tok));
    std::cerr << "merged " << o->adapters.adapters.size() << " adapter(s) into " << o->out << "\n";
    return 0;
  };
}

}  // namespace peft::cli
