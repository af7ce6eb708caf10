// A linear layer applied to one row (decode at batch 1) is a matrix-vector product; BLAS's GEMV reads
// the weight far faster than the GEMM path with M = 1 (peft::linear_gemv). With 2..16 rows (batched
// decode) OpenBLAS's GEMM packs the weight before using it. peft::linear_small reads each weight once for
// all of 1..16 rows, at close to memory bandwidth (one row, one thread: 1.7-2.3x OpenBLAS's GEMV,
// bench/quant-kernels.cpp's f32small rows); no-grad graphs only (its kernel has no backward;
// CompileOptions::small_row_linear), else one row goes to GEMV.
#include "passes.h"
#include "peft/ops/adapter-ops.h"

namespace peft::compile_detail {

size_t gemv_decode(Program & p, bool small_rows) {
  static const auto linear = c10::Symbol::fromQualString("aten::linear");
  std::vector<std::pair<torch::jit::Node *, const char *>> nodes;
  for (torch::jit::Node * n : p.graph->nodes()) {
    if (n->kind() != linear) continue;
    auto t = arg(n, "input")->type()->cast<c10::TensorType>();
    if (!t) continue;
    auto sizes = t->sizes().concrete_sizes();
    if (!sizes || sizes->empty()) continue;
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < sizes->size(); ++i) rows *= (*sizes)[i];
    if (small_rows && rows >= 1 && rows <= ops::kSmallRows) nodes.emplace_back(n, "peft::linear_small");
    else if (rows == 1) nodes.emplace_back(n, "peft::linear_gemv");
  }
  for (auto & n : nodes) replace_node(*p.graph, n.first, n.second, {arg(n.first, "input"), arg(n.first, "weight"), arg(n.first, "bias")});
  return nodes.size();
}

}  // namespace peft::compile_detail
