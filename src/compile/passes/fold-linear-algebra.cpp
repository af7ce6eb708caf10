// Algebraic folds of weight-side factors into a linear layer's weight (no-autograd graphs), for
// adapters written in plain ATen ops once their weight-only parts are hoisted:
//   linear(x, W, b) + linear(x, D)  ->  linear(x, W + D, b)          (LoHa, LoKr, any additive delta)
//   linear(x, W, b) * l             ->  linear(x, W * l[:, None], b * l)   (IA3 on the output)
//   linear(x * l, W, b)             ->  linear(x, W * l[None, :], b)       (IA3 on the input)
//   linear(block_rotate(x, Q), W, b) -> linear(x, W BD(Q)^T, b)            (OFT, BOFT)
//   linear(x, W) + b                ->  linear(x, W, b)                    (bias added after a scale)
#include "passes.h"
#include "peft/ops/adapter-math.h"

namespace peft::compile_detail {

namespace {

using torch::jit::Node;
using torch::jit::Value;

const c10::Symbol kLinear = c10::Symbol::fromQualString("aten::linear");
const c10::Symbol kAdd = c10::Symbol::fromQualString("aten::add");
const c10::Symbol kMul = c10::Symbol::fromQualString("aten::mul");
const c10::Symbol kRotate = c10::Symbol::fromQualString("peft::block_rotate");

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
    if (arg(base, "input") != arg(delta, "input") || !is_none(arg(delta, "bias"))) continue;
    int64_t W = p.value_index(arg(base, "weight")), D = p.value_index(arg(delta, "weight"));
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

// linear(x, W, None) + b with b a known vector: the bias moves into the linear.
bool fold_bias_add(Program & p, Node * n) {
  if (n->inputs().size() != 3) return false;
  auto alpha = constant_of(n->input(2));
  if (!alpha || !alpha->isInt() || alpha->toInt() != 1) return false;
  for (int order = 0; order < 2; ++order) {
    Value * a = n->input(order), * b = n->input(1 - order);
    if (!is_linear(a) || !single_use(a) || !is_none(arg(a->node(), "bias"))) continue;
    int64_t bi = p.value_index(b), W = p.value_index(arg(a->node(), "weight"));
    if (bi < 0 || W < 0 || p.value(bi).dim() != 1 || p.value(bi).size(0) != p.value(W).size(0)) continue;
    a->node()->replaceInput(2, b);
    n->output()->replaceAllUsesWith(a);
    n->destroy();
    return true;
  }
  return false;
}

// linear(block_rotate(x, Q), W, b): the rotation moves into the weight, W' = W BD(Q)^T.
bool fold_rotate(Program & p, Node * lin) {
  Value * in = arg(lin, "input");
  if (in->node()->kind() != kRotate || !single_use(in)) return false;
  Node * rot = in->node();
  int64_t Q = p.value_index(arg(rot, "Q")), W = p.value_index(arg(lin, "weight"));
  if (Q < 0 || W < 0) return false;
  Value * Wf = p.add_derived(
      {size_t(W), size_t(Q)},
      [](const std::vector<at::Tensor> & t) {
        return math::rotate_weight(t[0].to(at::kFloat), t[1].to(at::kFloat)).to(t[0].scalar_type());
      },
      "folded_rotation", p.value(W));
  lin->replaceInput(1, Wf);
  lin->replaceInput(0, arg(rot, "x"));
  rot->destroy();
  return true;
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
      int64_t W = p.value_index(arg(lin, "weight"));
      if (W < 0 || p.value(W).size(0) != p.value(l).size(0)) continue;
      const bool has_b = !is_none(arg(lin, "bias"));
      const int64_t b = has_b ? p.value_index(arg(lin, "bias")) : -1;
      if (has_b && b < 0) continue;  // a computed bias: leave the graph as it is
      Value * Wf = p.add_derived(
          {size_t(W), size_t(l)},
          [](const std::vector<at::Tensor> & v) { return (v[0].to(at::kFloat) * v[1].unsqueeze(1)).to(v[0].scalar_type()); },
          "folded_row_scale", p.value(W));
      lin->replaceInput(1, Wf);
      if (has_b) {
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
      if (lin->kind() != kLinear || arg(lin, "input") != n->output()) continue;
      int64_t W = p.value_index(arg(lin, "weight"));
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
      if (n->kind() == kAdd || n->kind() == kMul || n->kind() == kLinear) nodes.push_back(n);
    }
    for (Node * n : nodes) {
      if ((n->kind() == kAdd && (fold_add(p, n) || fold_bias_add(p, n))) || (n->kind() == kMul && fold_mul(p, n)) ||
          (n->kind() == kLinear && fold_rotate(p, n))) {
        ++folded;
        changed = true;
        break;  // the node list is stale after a rewrite
      }
    }
  }
  return folded;
}

}  // namespace peft::compile_detail
