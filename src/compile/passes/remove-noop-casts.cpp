#include "passes.h"

namespace peft::compile_detail {

size_t remove_noop_casts(Program & p) {
  static const auto to = c10::Symbol::fromQualString("aten::to");
  std::vector<torch::jit::Node *> dead;
  for (torch::jit::Node * n : p.graph->nodes()) {
    if (n->kind() != to || n->inputs().size() != 5) continue;  // to.dtype(self, dtype, non_blocking, copy, format)
    auto copy = constant_of(arg(n, "copy"));
    if (!copy || !copy->isBool() || copy->toBool()) continue;
    auto in = arg(n, "self")->type()->cast<c10::TensorType>();
    auto out = n->output()->type()->cast<c10::TensorType>();
    if (!in || !out || !in->scalarType() || in->scalarType() != out->scalarType()) continue;
    if (!is_none(arg(n, "memory_format"))) continue;
    n->output()->replaceAllUsesWith(arg(n, "self"));
    dead.push_back(n);
  }
  for (auto * n : dead) n->destroy();
  return dead.size();
}

}  // namespace peft::compile_detail
