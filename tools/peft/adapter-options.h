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
#include "peft/peft-model.h"

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

}  // namespace peft::cli
