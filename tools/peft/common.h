// Helpers shared by the peft subcommands: thread setup, reading token-id files, writing logits.
#pragma once
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include "peft/peft-model.h"

#include <functional>
#include <string>
#include <vector>

namespace peft::cli {

/// Options every subcommand has.
struct CommonOptions {
  int threads = 0;           // BLAS threads, 0 = all cores
  int intra_op_threads = 1;  // LibTorch's OpenMP pool
};
void add_common_options(CLI::App & cmd, CommonOptions & o);
/// Apply --threads / --intra-op-threads (see peft/util/runtime.h for why the defaults).
void apply_common_options(const CommonOptions & o);

/// A JSON array of equal-length arrays of token ids -> (B, S) int64. Errors name the file.
at::Tensor read_ids_json(const std::string & path);
std::vector<std::vector<int64_t>> read_ragged_ids_json(const std::string & path);

/// The forward a command runs: the model itself, or its compiled form when `compile` is set.
std::function<at::Tensor(const ForwardInput &)> make_logits_fn(PeftModel & m, bool compile);

/// "float32" / "bfloat16" -> dtype, else peft::Error.
at::ScalarType parse_dtype(const std::string & s);

}  // namespace peft::cli
