// Helpers shared by the peft subcommands: thread setup, reading token-id files, writing logits.
#pragma once
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include "peft/error.h"
#include "peft/peft-model.h"

#include <functional>
#include <string>
#include <vector>

namespace peft::cli {

/// A wrong combination of flags (exit 2, like CLI11's own usage errors).
class UsageError : public Error {
 public:
  using Error::Error;
};
/// Throw a UsageError unless `cond`.
#define PEFT_USAGE(cond, ...)                                                  \
  do {                                                                          \
    if (!(cond)) throw ::peft::cli::UsageError(::peft::str(__VA_ARGS__));      \
  } while (0)

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
/// Rows of equal length (read from `path`, named in errors) -> (B, S) int64.
at::Tensor ids_tensor(const std::vector<std::vector<int64_t>> & rows, const std::string & path);

/// The forward a command runs: the model itself, or its compiled form when `compile` is set.
std::function<at::Tensor(const ForwardInput &)> make_logits_fn(PeftModel & m, bool compile);

/// "float32" / "bfloat16" -> dtype, else peft::Error.
at::ScalarType parse_dtype(const std::string & s);
/// The name config.json uses for a dtype ("float32", "bfloat16").
std::string dtype_name(at::ScalarType t);

// ---- checks made before any work (no model loaded, no step taken) ----

/// An output folder (`flag` names it in errors): not empty, not "/", its parent an existing writable
/// folder, not a file, and check_output_not_input.
void check_output_folder(const std::string & flag, const std::string & out, const std::vector<std::string> & inputs);
/// An output file: as above, and not an existing folder.
void check_output_file(const std::string & flag, const std::string & out, const std::vector<std::string> & inputs);
/// The one rule for every output flag of every command: an output is never an input. `inputs` are the
/// files and folders the command reads (the --model folder, adapters, data); every file directly inside
/// an input model folder (one holding config.json: weights, config, tokenizer) counts as an input too,
/// and so do an adapter folder's adapter_config.json and adapter_model.safetensors. `out` may not be one
/// of them, nor a folder containing one, by any name: paths are compared after resolving symlinks (the
/// output's own link and its target), and a hard link to an input is the input.
void check_output_not_input(const std::string & flag, const std::string & out, const std::vector<std::string> & inputs);
/// Token-id rows of `path` against the model: ids in [0, vocab_size), lengths (plus `extra` positions)
/// within max_position_embeddings (with `positions_only_if_learned`, only for a learned position table:
/// a forward pass of a rotary model goes on past it, as in transformers). Errors name the file, the row
/// and the position.
void check_ids(const std::string & path, const std::vector<std::vector<int64_t>> & rows, const ModelConfig & cfg,
               int64_t extra = 0, bool positions_only_if_learned = false);
/// The flags of `cmd` among `flags` that were given (for "does not apply" errors).
std::vector<std::string> given(const CLI::App & cmd, const std::vector<std::string> & flags);

}  // namespace peft::cli
