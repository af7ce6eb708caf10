// Passes on the LoRA GEMMs that remain when adapters are not folded (training): sibling adapters that
// share an input compute their A products in one GEMM; each low-rank product is accumulated into the
// base output with addmm.
#include <map>

#include "passes.h"

namespace peft::compile_detail {

namespace {
const c10::Symbol kLora = c10::Symbol::fromQualString("peft::lora_add");
}

size_t batch_sibling_lora(Program & p) {
  // group lora_add nodes by input x; only bias-free ones with inactive dropout (shared input = same x)
  std::map<torch::jit::Value *, std::vector<torch::jit::Node *>> groups;
  std::vector<torch::jit::Value *> order;
  for (torch::jit::Node * n : p.graph->nodes()) {
    if (n->kind() != kLora || !is_none(arg(n, "bias"))) continue;
    auto pv = constant_of(arg(n, "dropout")), tv = constant_of(arg(n, "train"));
    if (!pv || !tv || (tv->toBool() && pv->toDouble() > 0)) continue;
    if (p.value_index(arg(n, "A")) < 0) continue;
    torch::jit::Value * x = arg(n, "x");
    if (!groups.count(x)) order.push_back(x);
    groups[x].push_back(n);
  }
  size_t rewritten = 0;
  for (torch::jit::Value * x : order) {
    auto & g = groups[x];
    if (g.size() < 2) continue;
    auto dtype = arg(g[0], "A")->type()->cast<c10::TensorType>()->scalarType();
    bool same = true;
    for (auto * n : g) same = same && arg(n, "A")->type()->cast<c10::TensorType>()->scalarType() == dtype;
    if (!same) continue;
    std::vector<torch::jit::Value *> As;
    for (auto * n : g) As.push_back(arg(n, "A"));
    torch::jit::Node * shrink = nullptr;
    {
      torch::jit::WithInsertPoint guard(g[0]);
      torch::jit::Node * list = p.graph->insertNode(p.graph->createList(c10::TensorType::get(), As));
      shrink = p.graph->insertNode(p.graph->create(c10::Symbol::fromQualString("peft::lora_shrink"), {x, list->output()}, 1));
      shrink->output()->setType(c10::TensorType::get());
    }
    int64_t offset = 0;
    for (auto * n : g) {
      const int64_t r = arg(n, "A")->type()->cast<c10::TensorType>()->sizes().concrete_sizes()->at(0);
      torch::jit::Value * off = nullptr;
      {
        torch::jit::WithInsertPoint guard(n);
        off = p.graph->insertConstant(offset);
      }
      replace_node(*p.graph, n, "peft::lora_expand_add",
                   {arg(n, "y"), shrink->output(), off, arg(n, "B"), arg(n, "bias"), arg(n, "scale")});
      offset += r;
      ++rewritten;
    }
  }
  return rewritten;
}

size_t fuse_lora_gemm(Program & p) {
  std::vector<torch::jit::Node *> nodes;
  for (torch::jit::Node * n : p.graph->nodes()) {
    if (n->kind() == kLora) nodes.push_back(n);
  }
  for (auto * n : nodes) {
    std::vector<torch::jit::Value *> in(n->inputs().begin(), n->inputs().end());
    replace_node(*p.graph, n, "peft::lora_add_fused", in);
  }
  return nodes.size();
}

}  // namespace peft::compile_detail
