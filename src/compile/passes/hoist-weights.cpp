// In graphs that run without autograd, every computation whose inputs are only weights (parameters,
// buffers, derived inputs, lists of them, optional ones too) and constants is hoisted out of the graph into a derived input: computed once,
// recomputed only when one of its sources changes in place. Adapter deltas built from small factors
// (LoHa's Hadamard products, LoKr's Kronecker product, flattened IA3 vectors) become plain tensors that
// the algebraic folds can then merge into the base weights.
#include <ATen/core/stack.h>
#include <torch/csrc/jit/ir/alias_analysis.h>

#include <set>

#include "passes.h"

namespace peft::compile_detail {

size_t hoist_weight_computations(Program & p) {
  std::vector<torch::jit::Node *> nodes(p.graph->nodes().begin(), p.graph->nodes().end());
  std::set<const torch::jit::Node *> written;
  {
    torch::jit::AliasDb db(p.graph);
    for (torch::jit::Node * n : nodes) {
      for (torch::jit::Value * o : n->outputs()) {
        if (db.hasWriters(o)) written.insert(n);
      }
    }
  }
  size_t hoisted = 0;
  for (torch::jit::Node * n : nodes) {
    if (!n->blocks().empty() || n->outputs().empty() || n->kind() == c10::prim::Constant) continue;
    bool tensors = true;  // every output a tensor (topk's values and indices: one derived input each)
    for (torch::jit::Value * o : n->outputs()) tensors = tensors && o->type()->cast<c10::TensorType>() != nullptr;
    if (!tensors) continue;
    const c10::FunctionSchema * schema = n->maybeSchema();
    if (!schema || schema->is_mutable() || n->isNondeterministic()) continue;
    // a value the graph then changes in place, itself or through a view (LibTorch's functional linear
    // adds a bias with add_), would change the derived input, again on every call: it stays in the graph
    if (written.count(n)) continue;
    // inputs: constants, weights, or lists of weights (torch.cat of adapters' factors); at least one weight
    struct Arg {
      c10::optional<c10::IValue> constant;
      std::vector<int> sources;  // indices into `from`: one for a weight, one per element for a list
      bool list = false;
      bool optional = false;  // a list of optional tensors
    };
    std::vector<Arg> args;
    std::vector<size_t> from;
    bool ok = true;
    auto weight = [&](torch::jit::Value * v) {
      const int64_t idx = p.value_index(v);
      if (idx < 0) return -1;
      from.push_back(static_cast<size_t>(idx));
      return static_cast<int>(from.size()) - 1;
    };
    for (torch::jit::Value * in : n->inputs()) {
      Arg a;
      if (int w = weight(in); w >= 0) {
        a.sources.push_back(w);
      } else if (in->node()->kind() == c10::prim::ListConstruct && in->node()->inputs().size() > 0 &&
                 (in->type()->isSubtypeOf(*c10::ListType::ofTensors()) ||
                  in->type()->isSubtypeOf(*c10::ListType::ofOptionalTensors()))) {
        a.list = true;
        a.optional = !in->type()->isSubtypeOf(*c10::ListType::ofTensors());  // index_put's Tensor?[] indices
        for (torch::jit::Value * e : in->node()->inputs()) {
          const int w2 = weight(e);
          if (w2 < 0) {
            ok = false;
            break;
          }
          a.sources.push_back(w2);
        }
      } else if (auto c = constant_of(in)) {
        a.constant = *c;
      } else {
        ok = false;
      }
      if (!ok) break;
      args.push_back(std::move(a));
    }
    if (!ok || from.empty()) continue;
    torch::jit::Operation op = n->getOperation();
    const size_t n_out = n->outputs().size();
    auto output = [op, args, n_out](const std::vector<at::Tensor> & t, size_t which) mutable {
      torch::jit::Stack stack;
      for (const Arg & a : args) {
        if (a.constant) {
          stack.push_back(*a.constant);
        } else if (a.list && a.optional) {
          c10::List<c10::optional<at::Tensor>> l;
          for (int i : a.sources) l.push_back(t[static_cast<size_t>(i)]);
          stack.emplace_back(l);
        } else if (a.list) {
          c10::List<at::Tensor> l;
          for (int i : a.sources) l.push_back(t[static_cast<size_t>(i)]);
          stack.emplace_back(l);
        } else {
          stack.emplace_back(t[static_cast<size_t>(a.sources.front())]);
        }
      }
      op(stack);
      return stack[stack.size() - n_out + which].toTensor();
    };
    std::vector<at::Tensor> now;
    for (size_t f : from) now.push_back(p.value(f));
    for (size_t k = 0; k < n_out; ++k) {
      if (n->outputs()[k]->uses().empty()) continue;
      auto compute = [output, k](const std::vector<at::Tensor> & t) mutable { return output(t, k); };
      at::Tensor example;
      {
        at::NoGradGuard g;
        example = compute(now);
      }
      torch::jit::Value * v = p.add_derived(from, compute, std::string("hoisted_") + n->kind().toUnqualString(), example);
      n->outputs()[k]->replaceAllUsesWith(v);
    }
    n->destroy();
    ++hoisted;
  }
  return hoisted;
}

}  // namespace peft::compile_detail
