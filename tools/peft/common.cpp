#include "common.h"

#include <ATen/Parallel.h>

#include <thread>

#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/util/runtime.h"
#include "peft/io/files.h"

namespace peft::cli {

void add_common_options(CLI::App & cmd, CommonOptions & o) {
  cmd.add_option("--threads", o.threads, "BLAS threads for matrix products (0 = all cores)")->check(CLI::NonNegativeNumber);
  cmd.add_option("--intra-op-threads", o.intra_op_threads, "LibTorch threads for element-wise ops (default 1)")
      ->check(CLI::PositiveNumber);
}

void apply_common_options(const CommonOptions & o) {
  RuntimeOptions r;
  r.blas_threads = o.threads;
  r.intra_op_threads = o.intra_op_threads;
  configure_runtime(r);
}

std::vector<std::vector<int64_t>> read_ragged_ids_json(const std::string & path) {
  nlohmann::json j = read_json_file(path);
  PEFT_CHECK(j.is_array() && !j.empty(), path, ": expected a non-empty JSON array of arrays of token ids");
  std::vector<std::vector<int64_t>> rows;
  for (size_t i = 0; i < j.size(); ++i) {
    PEFT_CHECK(j[i].is_array() && !j[i].empty(), path, ": row ", i, " is not a non-empty array of token ids");
    std::vector<int64_t> row;
    for (const auto & x : j[i]) {
      PEFT_CHECK(x.is_number_integer(), path, ": row ", i, " holds a non-integer token id ", x.dump());
      row.push_back(x.get<int64_t>());
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

at::Tensor read_ids_json(const std::string & path) {
  auto rows = read_ragged_ids_json(path);
  const size_t S = rows[0].size();
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(S)}, at::kLong);
  for (size_t i = 0; i < rows.size(); ++i) {
    PEFT_CHECK(rows[i].size() == S, path, ": row ", i, " has ", rows[i].size(), " ids, row 0 has ", S,
               " (rows must have equal length)");
    for (size_t k = 0; k < S; ++k) t[i][k] = rows[i][k];
  }
  return t;
}

std::function<at::Tensor(const ForwardInput &)> make_logits_fn(PeftModel & m, bool compile) {
  if (!compile) return [&m](const ForwardInput & in) { return m.forward(in); };
  auto compiled = std::make_shared<CompiledModel>(peft::compile(m));
  return [compiled](const ForwardInput & in) { return compiled->forward(in); };
}

at::ScalarType parse_dtype(const std::string & s) {
  if (s == "float32" || s == "f32") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  fail(str("--dtype must be float32 or bfloat16, got '", s, "'"));
}

}  // namespace peft::cli
