// Fold adapters into derived copies of the base weights, for graphs that run without autograd.
// The derived weight is recomputed whenever a source tensor changes in place (its version counter).
// The formulas are peft::math's, the ones the layers' merges and the op kernels use.
#include "passes.h"
#include "peft/ops/adapter-math.h"

namespace peft::compile_detail {

namespace {

using torch::jit::Node;
using torch::jit::Value;

const c10::Symbol kLinear = c10::Symbol::fromQualString("aten::linear");
const c10::Symbol kEmbedding = c10::Symbol::fromQualString("aten::embedding");

bool dropout_inactive(Node * n) {
  auto pv = constant_of(arg(n, "dropout")), tv = constant_of(arg(n, "train"));
  return pv && tv && (!tv->toBool() || pv->toDouble() == 0.0);
}

// Source/derived input index of v, or -1 when v is computed in the graph.
int64_t idx(Program & p, const Value * v) { return p.value_index(v); }

// The linear node producing the adapter's `y`, when it applies to the adapter's own `x` and nothing
// else reads its output.
Node * base_linear(Node * n) {
  Node * lin = arg(n, "y")->node();
  if (lin->kind() != kLinear || arg(lin, "input") != arg(n, "x") || arg(n, "y")->uses().size() != 1) return nullptr;
  return lin;
}

void drop_adapter_node(Node * n) {
  n->output()->replaceAllUsesWith(arg(n, "y"));
  n->destroy();
}

bool fold_lora(Program & p, Node * n) {
  Node * lin = base_linear(n);
  if (!lin || !dropout_inactive(n)) return false;
  int64_t W = idx(p, arg(lin, "weight")), A = idx(p, arg(n, "A")), B = idx(p, arg(n, "B")), s = idx(p, arg(n, "scale"));
  if (W < 0 || A < 0 || B < 0 || s < 0) return false;
  const bool has_lb = !is_none(arg(n, "bias"));
  const int64_t lb = has_lb ? idx(p, arg(n, "bias")) : -1;
  const bool has_b = !is_none(arg(lin, "bias"));
  const int64_t b = has_b ? idx(p, arg(lin, "bias")) : -1;
  if ((has_lb && lb < 0) || (has_b && b < 0)) return false;
  {
    torch::jit::WithInsertPoint guard(lin);
    Value * Wf = p.add_derived(
        {size_t(W), size_t(A), size_t(B), size_t(s)},
        [](const std::vector<at::Tensor> & t) {
          return (t[0].to(at::kFloat) + math::lora_delta(t[1], t[2], t[3]).to(at::kFloat)).to(t[0].scalar_type());
        },
        "folded_lora_weight", p.value(W));
    lin->replaceInput(1, Wf);
    if (has_lb) {
      std::vector<size_t> from = {size_t(lb), size_t(s)};
      if (has_b) from.push_back(size_t(b));
      Value * bf = p.add_derived(
          from,
          [has_b](const std::vector<at::Tensor> & t) {
            at::Tensor out = t[0] * t[1];
            return has_b ? (t[2].to(at::kFloat) + out).to(t[2].scalar_type()) : out;
          },
          "folded_lora_bias", p.value(lb));
      lin->replaceInput(2, bf);
    }
  }
  drop_adapter_node(n);
  return true;
}

bool fold_dora(Program & p, Node * n) {
  // y = x Wc^T + b (Wc: the base weight, or a copy with earlier adapters folded in), and
  // dora_add(y) = y + (g - 1)(y - b) + g s x (BA)^T = x (g (Wc + s B A))^T + b, g = m / ||W + s B A||
  Node * lin = base_linear(n);
  if (!lin || !dropout_inactive(n)) return false;
  const bool lin_bias = !is_none(arg(lin, "bias")), dora_bias = !is_none(arg(n, "bias"));
  if (lin_bias != dora_bias || (lin_bias && arg(lin, "bias") != arg(n, "bias"))) return false;
  int64_t Wc = idx(p, arg(lin, "weight")), W = idx(p, arg(n, "W")), A = idx(p, arg(n, "A")), B = idx(p, arg(n, "B")),
          m = idx(p, arg(n, "m")), s = idx(p, arg(n, "scale"));
  if (Wc < 0 || W < 0 || A < 0 || B < 0 || m < 0 || s < 0) return false;
  Value * Wf = p.add_derived(
      {size_t(Wc), size_t(W), size_t(A), size_t(B), size_t(m), size_t(s)},
      [](const std::vector<at::Tensor> & t) {
        at::Tensor norm = math::dora_weight_norm(t[1], t[2], t[3], t[5]);
        return math::dora_weight(t[0], t[2], t[3], t[4], t[5], norm).to(t[0].scalar_type());
      },
      "folded_dora_weight", p.value(Wc));
  lin->replaceInput(1, Wf);
  drop_adapter_node(n);
  return true;
}

bool fold_vera(Program & p, Node * n) {
  Node * lin = base_linear(n);
  if (!lin || !dropout_inactive(n)) return false;
  int64_t W = idx(p, arg(lin, "weight")), A = idx(p, arg(n, "A")), B = idx(p, arg(n, "B")),
          d = idx(p, arg(n, "lambda_d")), b = idx(p, arg(n, "lambda_b"));
  if (W < 0 || A < 0 || B < 0 || d < 0 || b < 0) return false;
  Value * Wf = p.add_derived(
      {size_t(W), size_t(A), size_t(B), size_t(d), size_t(b)},
      [](const std::vector<at::Tensor> & t) {
        return (t[0].to(at::kFloat) + math::vera_delta(t[1], t[2], t[3], t[4]).to(at::kFloat)).to(t[0].scalar_type());
      },
      "folded_vera_weight", p.value(W));
  lin->replaceInput(1, Wf);
  drop_adapter_node(n);
  return true;
}

bool fold_embedding(Program & p, Node * n) {
  Node * emb = arg(n, "y")->node();
  if (emb->kind() != kEmbedding || arg(emb, "indices") != arg(n, "ids") || arg(n, "y")->uses().size() != 1) return false;
  int64_t E = idx(p, arg(emb, "weight")), A = idx(p, arg(n, "A")), B = idx(p, arg(n, "B")), s = idx(p, arg(n, "scale"));
  if (E < 0 || A < 0 || B < 0 || s < 0) return false;
  Value * Ef = p.add_derived(
      {size_t(E), size_t(A), size_t(B), size_t(s)},
      [](const std::vector<at::Tensor> & t) {
        return (t[0].to(at::kFloat) + math::lora_embedding_delta(t[1], t[2], t[3]).to(at::kFloat)).to(t[0].scalar_type());
      },
      "folded_lora_embedding", p.value(E));
  emb->replaceInput(0, Ef);
  drop_adapter_node(n);
  return true;
}

bool fold_dora_embedding(Program & p, Node * n) {
  // y = embedding(Ec, ids) (Ec: the base weight, or a copy with earlier adapters folded in), and
  // dora_embedding_add(y) = g * (y + s lookup(ids, A^T) B^T) = embedding(g * (Ec + s (B A)^T), ids), g = m / ||E^T + s B A||
  Node * emb = arg(n, "y")->node();
  if (emb->kind() != kEmbedding || arg(emb, "indices") != arg(n, "ids") || arg(n, "y")->uses().size() != 1) return false;
  int64_t Ec = idx(p, arg(emb, "weight")), E = idx(p, arg(n, "E")), A = idx(p, arg(n, "A")), B = idx(p, arg(n, "B")),
          m = idx(p, arg(n, "m")), s = idx(p, arg(n, "scale"));
  if (Ec < 0 || E < 0 || A < 0 || B < 0 || m < 0 || s < 0) return false;
  Value * Ef = p.add_derived(
      {size_t(Ec), size_t(E), size_t(A), size_t(B), size_t(m), size_t(s)},
      [](const std::vector<at::Tensor> & t) {
        at::Tensor norm = math::dora_embedding_norm(t[1], t[2], t[3], t[5]);
        return math::dora_embedding_weight(t[0], t[2], t[3], t[4], t[5], norm).to(t[0].scalar_type());
      },
      "folded_dora_embedding", p.value(Ec));
  emb->replaceInput(0, Ef);
  drop_adapter_node(n);
  return true;
}

bool fold_road(Program & p, Node * n) {
  // road_rotate(linear(x, W, b)) = linear(x, R W, R b), R = road_matrix (the layer's merge)
  Node * lin = arg(n, "y")->node();
  if (lin->kind() != kLinear || arg(n, "y")->uses().size() != 1) return false;
  auto variant = constant_of(arg(n, "variant")), group = constant_of(arg(n, "group_size"));
  if (!variant || !group || !variant->isInt() || !group->isInt()) return false;
  int64_t W = idx(p, arg(lin, "weight")), th = idx(p, arg(n, "theta")), al = idx(p, arg(n, "alpha"));
  if (W < 0 || th < 0 || al < 0) return false;
  // the op runs in theta's dtype: fold only where the linear already does
  if (p.value(W).scalar_type() != p.value(th).scalar_type()) return false;
  const bool has_b = !is_none(arg(lin, "bias"));
  const int64_t b = has_b ? idx(p, arg(lin, "bias")) : -1;
  if (has_b && b < 0) return false;
  const int64_t v = variant->toInt(), g = group->toInt();
  auto rotation = [v, g](const at::Tensor & theta, const at::Tensor & alpha) {
    const auto cols = math::road_cols(theta.to(at::kFloat), alpha.to(at::kFloat), v, g);
    return math::road_matrix(cols.first, cols.second, g);
  };
  Value * Wf = p.add_derived(
      {size_t(W), size_t(th), size_t(al)},
      [rotation](const std::vector<at::Tensor> & t) {
        return at::mm(rotation(t[1], t[2]), t[0].to(at::kFloat)).to(t[0].scalar_type());
      },
      "folded_road_weight", p.value(W));
  lin->replaceInput(1, Wf);
  if (has_b) {
    Value * bf = p.add_derived(
        {size_t(b), size_t(th), size_t(al)},
        [rotation](const std::vector<at::Tensor> & t) {
          return at::mv(rotation(t[1], t[2]), t[0].to(at::kFloat)).to(t[0].scalar_type());
        },
        "folded_road_bias", p.value(b));
    lin->replaceInput(2, bf);
  }
  drop_adapter_node(n);
  return true;
}

}  // namespace

size_t fold_adapters(Program & p) {
  static const auto lora = c10::Symbol::fromQualString("peft::lora_add");
  static const auto dora = c10::Symbol::fromQualString("peft::dora_add");
  static const auto emb = c10::Symbol::fromQualString("peft::lora_embedding_add");
  static const auto vera = c10::Symbol::fromQualString("peft::vera_add");
  static const auto dora_emb = c10::Symbol::fromQualString("peft::dora_embedding_add");
  static const auto road = c10::Symbol::fromQualString("peft::road_rotate");
  std::vector<Node *> nodes;
  for (Node * n : p.graph->nodes()) {
    if (n->kind() == lora || n->kind() == dora || n->kind() == emb || n->kind() == vera || n->kind() == dora_emb ||
        n->kind() == road)
      nodes.push_back(n);
  }
  size_t folded = 0;
  for (Node * n : nodes) {  // graph order: a chain of adapters on one layer folds step by step
    if (n->kind() == lora) folded += fold_lora(p, n);
    else if (n->kind() == dora) folded += fold_dora(p, n);
    else if (n->kind() == vera) folded += fold_vera(p, n);
    else if (n->kind() == dora_emb) folded += fold_dora_embedding(p, n);
    else if (n->kind() == road) folded += fold_road(p, n);
    else folded += fold_embedding(p, n);
  }
  return folded;
}

}  // namespace peft::compile_detail
