// A linear layer applied to one row (decode at batch 1) is a matrix-vector product; BLAS's GEMV reads
// the weight at close to memory bandwidth where the GEMM path with M = 1 does not.
#include "passes.h"

namespace peft::compile_detail {

size_t gemv_decode(Program & p) {
  static const auto linear = c10::Symbol::fromQualString("aten::linear");
  std::vector<torch::jit::Node *> nodes;
  for (torch::jit::Node * n : p.graph->nodes()) {
    if (n->kind() != linear) continue;
    auto t = arg(n, "input")->type()->cast<c10::TensorType>();
    if (!t) continue;
    auto sizes = t->sizes().concrete_sizes();
    if (!sizes || sizes->empty()) continue;
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < sizes->size(); ++i) rows *= (*sizes)[i];
    if (rows == 1) nodes.push_back(n);
  }
  for (auto * n : nodes) replace_node(*p.graph, n, "peft::linear_gemv", {arg(n, "input"), arg(n, "weight"), arg(n, "bias")});
  return nodes.size();
}

}  // namespace peft::compile_detail
