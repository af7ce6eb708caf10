// The adapter flags shared by forward, generate and train:
//   --adapter PATH[=NAME] (repeatable; the first loaded is active), --active NAME[,NAME...],
//   --disable-adapters, --merge, --unmerge, --merge-and-unload,
//   --weighted NAME=TYPE:ADAPTER*WEIGHT,...[:density=D] (add_weighted_adapter; the last one is activated).
#pragma once
#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "peft/model/causal-lm.h"
#include "common.h"
#include "peft/peft-model.h"
#include "quant-options.h"

namespace peft::cli {

struct AdapterOptions {
  std::vector<std::string> adapters;
  std::vector<std::string> weighted;  // NAME=TYPE:ADAPTER*WEIGHT,...[:density=D]
  std::string active;
  bool disable = false, merge = false, unmerge = false, merge_and_unload = false, allow_base_weights = false;
  int64_t init_seed = -1;  // seed of the global generator before the adapters load (-1: left as it is)
};

/// Which adapter flags a command has: all of them (a command that runs the model), or those that choose what
/// `peft merge` folds in (--adapter, --active, --weighted, --allow-base-weights, --init-seed; not
/// --disable-adapters / --merge / --unmerge / --merge-and-unload, which only say how a run uses them).
enum class AdapterFlags { run, merge };
void add_adapter_options(CLI::App & cmd, AdapterOptions & o, AdapterFlags which = AdapterFlags::run);

/// What the model runs as after the flags are applied: a PeftModel (adapters loaded) or the plain model.
struct Prepared {
  std::shared_ptr<CausalLM> plain;   // set when no adapters remain (none given, or merge-and-unload)
  std::shared_ptr<PeftModel> peft;   // set otherwise
};
Prepared apply_adapter_options(std::shared_ptr<CausalLM> model, const AdapterOptions & o);

/// A model loaded as the commands that run one (forward, generate, eval) load it: the checkpoint with
/// --dtype / --quantize, the adapter flags applied, a PeftModel either way (no adapters: the plain model
/// wrapped), and its forward (compiled with --compile).
struct RunModel {
  std::shared_ptr<PeftModel> model;
  bool has_adapters = false;  // adapters remain (false: none given, or --merge-and-unload)
  PeftLogitsFn forward;
};
RunModel load_run_model(const std::string & dir, at::ScalarType dtype, const QuantFlags & quant, const AdapterOptions & adapters,
                        bool compile);

}  // namespace peft::cli
