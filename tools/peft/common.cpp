#include "common.h"

#include <ATen/Parallel.h>

#include <sys/stat.h>

#include <thread>

#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/util/runtime.h"
#include "peft/io/files.h"

namespace peft::cli {

void add_common_options(CLI::App & cmd, CommonOptions & o) {
  cmd.add_option("--threads", o.threads, "BLAS threads for matrix products (0 = default: OMP_NUM_THREADS if set, else the cores / LOCAL_WORLD_SIZE; at most 1024)")
      ->check(CLI::Range(0, 1024));
  cmd.add_option("--intra-op-threads", o.intra_op_threads, "LibTorch threads for element-wise ops (default 1, at most 1024)")
      ->check(CLI::Range(1, 1024));  // (100000 threads hang the process)
}

RuntimeOptions runtime_options(const CommonOptions & o) {
  RuntimeOptions r;
  r.blas_threads = o.threads;
  r.intra_op_threads = o.intra_op_threads;
  return r;
}

void apply_common_options(const CommonOptions & o) { configure_runtime(runtime_options(o)); }

at::Tensor ids_tensor(const std::vector<std::vector<int64_t>> & rows, const std::string & path) {
  const size_t S = rows[0].size();
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(S)}, at::kLong);
  for (size_t i = 0; i < rows.size(); ++i) {
    PEFT_CHECK(rows[i].size() == S, path, ": row ", i, " has ", rows[i].size(), " ids, row 0 has ", S,
               " (rows must have equal length)");
    for (size_t k = 0; k < S; ++k) t[i][k] = rows[i][k];
  }
  return t;
}

PeftLogitsFn make_logits_fn(PeftModel & m, bool compile) {
  if (!compile) return [&m](const PeftInput & in) { return m.forward(in); };
  auto compiled = std::make_shared<CompiledModel>(peft::compile(m));
  return [compiled](const PeftInput & in) { return compiled->forward(in); };
}

std::string dtype_name(at::ScalarType t) {
  return t == at::kBFloat16 ? "bfloat16" : t == at::kHalf ? "float16" : "float32";
}

const char * const kDtypeHelp =
    "the weights' dtype: float32 (f32, the default), bfloat16 (bf16), float16 (f16: the Linear weights only, "
    "computed in float32 like the rest), or auto (config.json's torch_dtype). Adapters and their training stay float32";

std::vector<std::string> given(const CLI::App & cmd, const std::vector<std::string> & flags) {
  std::vector<std::string> out;
  for (const auto & f : flags) {
    if (cmd.count(f) > 0) out.push_back(f);
  }
  return out;
}

at::ScalarType parse_dtype(const std::string & s) {
  if (s == "float32" || s == "f32") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  if (s == "float16" || s == "f16" || s == "half") return at::kHalf;
  PEFT_USAGE(s != "auto", "--dtype auto needs a checkpoint folder");
  fail(str("--dtype must be float32 (f32), bfloat16 (bf16), float16 (f16) or auto, got '", s, "'"));
}

at::ScalarType auto_dtype(const std::string & model_dir) {
  struct stat st;
  const std::string path = model_dir + "/config.json";
  if (::stat(path.c_str(), &st) != 0) return at::kFloat;  // (load_model says what is missing)
  const nlohmann::json j = read_json_file(path);
  for (const char * key : {"torch_dtype", "dtype"}) {
    if (j.contains(key) && j[key].is_string()) {
      const std::string d = j[key].get<std::string>();
      return d == "bfloat16" ? at::kBFloat16 : d == "float16" ? at::kHalf : at::kFloat;
    }
  }
  return at::kFloat;
}

at::ScalarType resolve_dtype(const std::string & s, const std::string & model_dir) {
  return s == "auto" ? auto_dtype(model_dir) : parse_dtype(s);
}

}  // namespace peft::cli
