// Helpers shared by the peft subcommands: thread setup, token-id rows as a tensor, the forward to run.
#pragma once
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include "peft/error.h"
#include "peft/io/output-paths.h"
#include "peft/peft-model.h"
#include "peft/util/runtime.h"

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
/// What --threads / --intra-op-threads ask of the runtime.
RuntimeOptions runtime_options(const CommonOptions & o);

/// Rows of equal length (read from `path`, named in errors) -> (B, S) int64.
at::Tensor ids_tensor(const std::vector<std::vector<int64_t>> & rows, const std::string & path);

/// The forward a command runs: the model itself, or its compiled form when `compile` is set (a PeftInput:
/// per-row adapters allowed).
PeftLogitsFn make_logits_fn(PeftModel & m, bool compile);

/// --dtype's value -> the dtype weights load in: "float32" / "f32", "bfloat16" / "bf16". "float16" / "f16" is
/// refused with a peft::Error naming --dtype (LibTorch 1.13's CPU kernels have no float16 matmul, softmax or
/// SiLU); "auto" too (it needs the checkpoint: resolve_dtype); anything else is a peft::Error.
at::ScalarType parse_dtype(const std::string & s);
/// parse_dtype, and "auto": the torch_dtype (or transformers' newer "dtype") of `model_dir`/config.json where
/// the kernels serve it: float32 and bfloat16 as they are; float16 and a missing or unknown entry load as
/// float32 (float16 widens exactly).
at::ScalarType resolve_dtype(const std::string & s, const std::string & model_dir);
/// The dtype "auto" loads `model_dir` in (see resolve_dtype).
at::ScalarType auto_dtype(const std::string & model_dir);
/// The name config.json uses for a dtype ("float32", "bfloat16", "float16").
std::string dtype_name(at::ScalarType t);
/// --dtype's help text (the choices and the default of the commands that load a model).
extern const char * const kDtypeHelp;

/// The flags of `cmd` among `flags` that were given (for "does not apply" errors).
std::vector<std::string> given(const CLI::App & cmd, const std::vector<std::string> & flags);

}  // namespace peft::cli
