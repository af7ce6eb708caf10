// Fold adapters into derived copies of the base weights, for graphs that run without autograd.
// The derived weight is recomputed whenever a source tensor changes in place (its version counter).
#include "passes.h"

namespace peft::compile_detail {

namespace {

using torch::jit::Node;
using torch::jit::Value;

bool dropout_inactive(const Value * p, const Value * train) {
  auto pv = constant_of(p), tv = constant_of(train);
  return pv && tv && (!tv->toBool() || pv->toDouble() == 0.0);
}

// Value index of v, or -1 when v is not a source/derived input.
int64_t idx(Program & p, const Value * v) { return p.value_index(v); }

bool fold_lora(Program & p, Node * n) {
  // lora_add(y, x, A, B, bias?, scale, dropout, train), y = linear(x, W, b?)
  Node * lin = n->input(0)->node();
  if (lin->kind() != c10::Symbol::fromQualString("aten::linear") || lin->input(0) != n->input(1)) return false;
  if (n->input(0)->uses().size() != 1 || !dropout_inactive(n->input(6), n->input(7))) return false;
  int64_t W = idx(p, lin->input(1)), A = idx(p, n->input(2)), B = idx(p, n->input(3)), s = idx(p, n->input(5));
  if (W < 0 || A < 0 || B < 0 || s < 0) return false;
  const bool has_lb = !is_none(n->input(4));
  const int64_t lb = has_lb ? idx(p, n->input(4)) : -1;
  const bool has_b = !is_none(lin->input(2));
  const int64_t b = has_b ? idx(p, lin->input(2)) : -1;
  if ((has_lb && lb < 0) || (has_b && b < 0)) return false;
  {
    torch::jit::WithInsertPoint guard(lin);
    Value * Wf = p.add_derived(
        {size_t(W), size_t(A), size_t(B), size_t(s)},
        [](const std::vector<at::Tensor> & t) {
          return (t[0].to(at::kFloat) + at::matmul(t[2], t[1]).to(at::kFloat) * t[3]).to(t[0].scalar_type());
        },
        "folded_lora_weight", p.value(W));
    lin->replaceInput(1, Wf);
    if (has_lb) {
      std::vector<size_t> from = {size_t(lb), size_t(s)};
      if (has_b) from.push_back(size_t(b));
      at::Tensor example = p.value(lb);
      Value * bf = p.add_derived(
          from,
          [has_b](const std::vector<at::Tensor> & t) {
            at::Tensor out = t[0] * t[1];
            return has_b ? (t[2].to(at::kFloat) + out).to(t[2].scalar_type()) : out;
          },
          "folded_lora_bias", example);
      lin->replaceInput(2, bf);
    }
  }
  n->output()->replaceAllUsesWith(n->input(0));
  n->destroy();
  return true;
}

bool fold_dora(Program & p, Node * n) {
  // dora_add(y, x, W, A, B, m, scale, dropout, train), y = linear(x, W, b?)
  Node * lin = n->input(0)->node();
  if (lin->kind() != c10::Symbol::fromQualString("aten::linear") || lin->input(0) != n->input(1) ||
      lin->input(1) != n->input(2)) {
    return false;
  }
  if (n->input(0)->uses().size() != 1 || !dropout_inactive(n->input(7), n->input(8))) return false;
  int64_t W = idx(p, n->input(2)), A = idx(p, n->input(3)), B = idx(p, n->input(4)), m = idx(p, n->input(5)),
          s = idx(p, n->input(6));
  if (W < 0 || A < 0 || B < 0 || m < 0 || s < 0) return false;
  Value * Wf = p.add_derived(
      {size_t(W), size_t(A), size_t(B), size_t(m), size_t(s)},
      [](const std::vector<at::Tensor> & t) {
        at::Tensor V = t[0].to(at::kFloat) + at::matmul(t[2], t[1]).to(at::kFloat) * t[4];
        return ((t[3] / V.norm(2, {1})).unsqueeze(1) * V).to(t[0].scalar_type());
      },
      "folded_dora_weight", p.value(W));
  lin->replaceInput(1, Wf);
  n->output()->replaceAllUsesWith(n->input(0));
  n->destroy();
  return true;
}

bool fold_vera(Program & p, Node * n) {
  // vera_add(y, x, A, B, lambda_d, lambda_b, dropout, train), y = linear(x, W, b?)
  Node * lin = n->input(0)->node();
  if (lin->kind() != c10::Symbol::fromQualString("aten::linear") || lin->input(0) != n->input(1)) return false;
  if (n->input(0)->uses().size() != 1 || !dropout_inactive(n->input(6), n->input(7))) return false;
  int64_t W = idx(p, lin->input(1)), A = idx(p, n->input(2)), B = idx(p, n->input(3)), d = idx(p, n->input(4)),
          b = idx(p, n->input(5));
  if (W < 0 || A < 0 || B < 0 || d < 0 || b < 0) return false;
  Value * Wf = p.add_derived(
      {size_t(W), size_t(A), size_t(B), size_t(d), size_t(b)},
      [](const std::vector<at::Tensor> & t) {
        at::Tensor delta = at::matmul(t[4].unsqueeze(1) * t[2], t[3].unsqueeze(1) * t[1]);
        return (t[0].to(at::kFloat) + delta.to(at::kFloat)).to(t[0].scalar_type());
      },
      "folded_vera_weight", p.value(W));
  lin->replaceInput(1, Wf);
  n->output()->replaceAllUsesWith(n->input(0));
  n->destroy();
  return true;
}

bool fold_embedding(Program & p, Node * n) {
  // lora_embedding_add(y, ids, A, B, scale, padding_idx), y = embedding(E, ids, ...)
  Node * emb = n->input(0)->node();
  if (emb->kind() != c10::Symbol::fromQualString("aten::embedding") || emb->input(1) != n->input(1)) return false;
  if (n->input(0)->uses().size() != 1) return false;
  int64_t E = idx(p, emb->input(0)), A = idx(p, n->input(2)), B = idx(p, n->input(3)), s = idx(p, n->input(4));
  if (E < 0 || A < 0 || B < 0 || s < 0) return false;
  Value * Ef = p.add_derived(
      {size_t(E), size_t(A), size_t(B), size_t(s)},
      [](const std::vector<at::Tensor> & t) {
        return (t[0].to(at::kFloat) + at::matmul(t[2], t[1]).t().to(at::kFloat) * t[3]).to(t[0].scalar_type());
      },
      "folded_lora_embedding", p.value(E));
  emb->replaceInput(0, Ef);
  n->output()->replaceAllUsesWith(n->input(0));
  n->destroy();
  return true;
}

}  // namespace

size_t fold_adapters(Program & p) {
  static const auto lora = c10::Symbol::fromQualString("peft::lora_add");
  static const auto dora = c10::Symbol::fromQualString("peft::dora_add");
  static const auto emb = c10::Symbol::fromQualString("peft::lora_embedding_add");
  static const auto vera = c10::Symbol::fromQualString("peft::vera_add");
  std::vector<Node *> nodes;
  for (Node * n : p.graph->nodes()) {
    if (n->kind() == lora || n->kind() == dora || n->kind() == emb || n->kind() == vera) nodes.push_back(n);
  }
  size_t folded = 0;
  for (Node * n : nodes) {  // graph order: a chain of adapters on one layer folds step by step
    if (n->kind() == lora) folded += fold_lora(p, n);
    else if (n->kind() == dora) folded += fold_dora(p, n);
    else if (n->kind() == vera) folded += fold_vera(p, n);
    else folded += fold_embedding(p, n);
  }
  return folded;
}

}  // namespace peft::compile_detail
