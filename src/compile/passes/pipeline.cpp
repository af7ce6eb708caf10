// The pass pipeline and the helpers the passes share.
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/common_subexpression_elimination.h>
#include <torch/csrc/jit/passes/constant_pooling.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "passes.h"

namespace peft::compile_detail {

c10::optional<c10::IValue> constant_of(const torch::jit::Value * v) { return torch::jit::toIValue(v); }

bool is_none(const torch::jit::Value * v) { return v->type()->kind() == c10::TypeKind::NoneType; }

torch::jit::Value * arg(torch::jit::Node * n, const char * name) {
  torch::jit::Value * v = n->namedInput(std::string(name));
  TORCH_CHECK(v != nullptr, "no input '", name, "' in ", n->kind().toQualString());
  return v;
}

torch::jit::Node * replace_node(torch::jit::Graph & g, torch::jit::Node * old, const char * kind,
                                const std::vector<torch::jit::Value *> & inputs) {
  torch::jit::Node * n = g.create(c10::Symbol::fromQualString(kind), inputs, 1);
  n->insertBefore(old);
  n->output()->setType(old->output()->type());
  old->output()->replaceAllUsesWith(n->output());
  old->destroy();
  return n;
}

void run_passes(Program & p, const CompileOptions & o, bool no_grad) {
  auto count = [&](const char * name, size_t n) { p.pass_counts[name] = n; };
  if (o.remove_noop_casts) count("remove_noop_casts", remove_noop_casts(p));
  if (o.fold_adapters && no_grad) {
    // shape-only values (zeros, eye, index tables) become constants first, so weight computations
    // that use them count as weight-only
    if (o.constant_propagation) torch::jit::ConstantPropagation(p.graph);
    count("hoist_weight_computations", hoist_weight_computations(p));
    count("fold_adapters", fold_adapters(p));
    count("fold_linear_algebra", fold_linear_algebra(p));
  }
  if (o.batch_sibling_lora) count("batch_sibling_lora", batch_sibling_lora(p));
  if (o.fuse_lora_gemm) count("fuse_lora_gemm", fuse_lora_gemm(p));
  if (o.gemv_decode) count("gemv_decode", gemv_decode(p, no_grad && o.small_row_linear));
  if (o.constant_propagation) torch::jit::ConstantPropagation(p.graph);
  torch::jit::ConstantPooling(p.graph);
  if (o.common_subexpressions) torch::jit::EliminateCommonSubexpression(p.graph);
  torch::jit::EliminateDeadCode(p.graph);
}

}  // namespace peft::compile_detail
