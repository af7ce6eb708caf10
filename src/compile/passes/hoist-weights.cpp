// In graphs that run without autograd, every computation whose inputs are only weights (parameters,
// buffers, derived inputs) and constants is hoisted out of the graph into a derived input: computed once,
// recomputed only when one of its sources changes in place. Adapter deltas built from small factors
// (LoHa's Hadamard products, LoKr's Kronecker product, flattened IA3 vectors) become plain tensors that
// the algebraic folds can then merge into the base weights.
#include <ATen/core/stack.h>

#include "passes.h"

namespace peft::compile_detail {

size_t hoist_weight_computations(Program & p) {
  std::vector<torch::jit::Node *> nodes(p.graph->nodes().begin(), p.graph->nodes().end());
  size_t hoisted = 0;
  for (torch::jit::Node * n : nodes) {
    if (!n->blocks().empty() || n->outputs().size() != 1 || n->kind() == c10::prim::Constant) continue;
    if (!n->output()->type()->cast<c10::TensorType>()) continue;
    const c10::FunctionSchema * schema = n->maybeSchema();
    if (!schema || schema->is_mutable() || n->isNondeterministic()) continue;
    // inputs: constants or weights, at least one weight
    std::vector<c10::optional<c10::IValue>> consts;
    std::vector<size_t> from;
    std::vector<int> slot;  // per input: index into `from`, or -1 for a constant
    bool ok = true;
    for (torch::jit::Value * in : n->inputs()) {
      int64_t idx = p.value_index(in);
      if (idx >= 0) {
        slot.push_back(static_cast<int>(from.size()));
        from.push_back(static_cast<size_t>(idx));
        consts.emplace_back();
        continue;
      }
      auto c = constant_of(in);
      if (!c) {
        ok = false;
        break;
      }
      slot.push_back(-1);
      consts.push_back(*c);
    }
    if (!ok || from.empty()) continue;
    torch::jit::Operation op = n->getOperation();
    auto compute = [op, consts, slot](const std::vector<at::Tensor> & t) mutable {
      torch::jit::Stack stack;
      for (size_t i = 0; i < slot.size(); ++i) {
        if (slot[i] >= 0) stack.emplace_back(t[slot[i]]);
        else stack.push_back(*consts[i]);
      }
      op(stack);
      return stack.back().toTensor();
    };
    std::vector<at::Tensor> now;
    for (size_t f : from) now.push_back(p.value(f));
    at::Tensor example;
    {
      at::NoGradGuard g;
      example = compute(now);
    }
    torch::jit::Value * v = p.add_derived(from, compute, std::string("hoisted_") + n->kind().toUnqualString(), example);
    n->output()->replaceAllUsesWith(v);
    n->destroy();
    ++hoisted;
  }
  return hoisted;
}

}  // namespace peft::compile_detail
