#include "passes.h"

namespace peft::compile_detail {

size_t remove_noop_casts(Program & p) {
  static const auto to = c10::Symbol::fromQualString("aten::to");
  std::vector<torch::jit::Node *> dead;
  for (torch::jit::Node * n : p.graph->nodes()) {
    if (n->kind() != to || n->inputs().size() != 5) continue;  // to.dtype(self, dtype, non_blocking, copy, format)
    auto copy = constant_of(n->input(3));
    if (!copy || !copy->isBool() || copy->toBool()) continue;
    auto in = n->input(0)->type()->cast<c10::TensorType>();
    auto out = n->output()->type()->cast<c10::TensorType>();
    if (!in || !out || !in->scalarType() || in->scalarType() != out->scalarType()) continue;
    if (!is_none(n->input(4))) continue;
    n->output()->replaceAllUsesWith(n->input(0));
    dead.push_back(n);
  }
  for (auto * n : dead) n->destroy();
  return dead.size();
}

}  // namespace peft::compile_detail
