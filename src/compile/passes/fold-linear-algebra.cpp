// Algebraic folds of weight-side factors into a linear layer's weight (no-autograd graphs), for
// adapters written in plain ATen ops once their weight-only parts are hoisted:
//   linear(x, W, b) + linear(x, D)  ->  linear(x, W + D, b)          (LoHa, LoKr, any additive delta)
//   linear(x, W, b) * l             ->  linear(x, W * l[:, None], b * l)   (IA3 on the output)
//   linear(x * l, W, b)             ->  linear(x, W * l[None, :], b)       (IA3 on the input)
#include "passes.h"

namespace peft::compile_detail {

namespace {

using torch::jit::Node;
using torch::jit::Value;

const c10::Symbol kLinear = c10::Symbol::fromQualString("aten::linear");
const c10::Symbol kAdd = c10::Symbol::fromQualString("aten::add");
const c10::Symbol kMul = c10::Symbol::fromQualString("aten::mul");

bool is_linear(const Value * v) { return v->node()->kind() == kLinear; }
bool single_use(const Value * v) { return v->uses().size() == 1; }

// linear(x, W, b) + linear(x, D, None): both single-use, same x, weights known.
bool fold_add(Program & p, Node * n) {
  if (n->inputs().size() != 3) return false;
  auto alpha = constant_of(n->input(2));
  if (!alpha || !alpha->isInt() || alpha->toInt() != 1) return false;
  for (int order = 0; order < 2; ++order) {
    Value * a = n->input(order), * b = n->input(1 - order);
    if (!is_linear(a) || !is_linear(b) || !single_use(a) || !single_use(b)) continue;
    Node * base = a->node(), * delta = b->node();
    if (base->input(0) != delta->input(0) || !is_none(delta->input(2))) continue;
    int64_t W = p.value_index(base->input(1)), D = p.value_index(delta->input(1));
    if (W < 0 || D < 0) continue;
    if (p.value(W).sizes() != p.value(D).sizes()) continue;
    Value * Wf = p.add_derived(
        {size_t(W), size_t(D)},
        [](const std::vector<at::Tensor> & t) { return (t[0].to(at::kFloat) + t[1].to(at::kFloat)).to(t[0].scalar_type()); },
        "folded_delta_weight", p.value(W));
    base->replaceInput(1, Wf);
    n->output()->replaceAllUsesWith(a);
    n->destroy();
    delta->destroy();
    return true;
  }
  return false;
}

// linear(x, W, b) * l (output scale) or linear(x * l, W, b) (input scale); l a known vector.
bool fold_mul(Program & p, Node * n) {
  if (n->inputs().size() != 2) return false;
  for (int order = 0; order < 2; ++order) {
    Value * t = n->input(order), * lv = n->input(1 - order);
    int64_t l = p.value_index(lv);
    if (l < 0 || p.value(l).dim() != 1) continue;
    // output side
    if (is_linear(t) && single_use(t)) {
      Node * lin = t->node();
      int64_t W = p.value_index(lin->input(1));
      if (W < 0 || p.value(W).size(0) != p.value(l).size(0)) continue;
      Value * Wf = p.add_derived(
          {size_t(W), size_t(l)},
          [](const std::vector<at::Tensor> & v) { return (v[0].to(at::kFloat) * v[1].unsqueeze(1)).to(v[0].scalar_type()); },
          "folded_row_scale", p.value(W));
      lin->replaceInput(1, Wf);
      if (!is_none(lin->input(2))) {
        int64_t b = p.value_index(lin->input(2));
        if (b < 0) return false;
        Value * bf = p.add_derived(
            {size_t(b), size_t(l)},
            [](const std::vector<at::Tensor> & v) { return (v[0].to(at::kFloat) * v[1]).to(v[0].scalar_type()); },
            "folded_bias_scale", p.value(b));
        lin->replaceInput(2, bf);
      }
      n->output()->replaceAllUsesWith(t);
      n->destroy();
      return true;
    }
    // input side: every use of x * l is a linear whose weight we know
    if (single_use(n->output())) {
      Node * lin = n->output()->uses()[0].user;
      if (lin->kind() != kLinear || lin->input(0) != n->output()) continue;
      int64_t W = p.value_index(lin->input(1));
      if (W < 0 || p.value(W).size(1) != p.value(l).size(0)) continue;
      Value * Wf = p.add_derived(
          {size_t(W), size_t(l)},
          [](const std::vector<at::Tensor> & v) { return (v[0].to(at::kFloat) * v[1].unsqueeze(0)).to(v[0].scalar_type()); },
          "folded_column_scale", p.value(W));
      lin->replaceInput(1, Wf);
      lin->replaceInput(0, t);
      n->destroy();
      return true;
    }
  }
  return false;
}

}  // namespace

size_t fold_linear_algebra(Program & p) {
  size_t folded = 0;
  for (bool changed = true; changed;) {  // chains (several adapters on one layer) fold one step a round
    changed = false;
    std::vector<Node *> nodes;
    for (Node * n : p.graph->nodes()) {
      if (n->kind() == kAdd || n->kind() == kMul) nodes.push_back(n);
    }
    for (Node * n : nodes) {
      if ((n->kind() == kAdd && fold_add(p, n)) || (n->kind() == kMul && fold_mul(p, n))) {
        ++folded;
        changed = true;
        break;  // the node list is stale after a rewrite
      }
    }
  }
  return folded;
}

}  // namespace peft::compile_detail
