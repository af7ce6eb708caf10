// Graph passes of peft::compile, one per file. Each returns how many rewrites it made (reported by
// explain()). They run on a Program so that they can turn subgraphs into derived inputs.
#pragma once
#include "../program.h"
#include "peft/compile/compile.h"

namespace peft::compile_detail {

/// aten::to to the dtype a tensor already has: removed.
size_t remove_noop_casts(Program & p);
/// peft::lora_add / dora_add / lora_embedding_add over a base linear/embedding whose weights are graph
/// inputs: the adapter is folded into a derived copy of the weight (refolded when sources change).
/// Only for graphs captured with grad disabled.
size_t fold_adapters(Program & p);
/// No-grad graphs: computations on weights and constants alone become derived inputs (computed once,
/// recomputed when a source changes).
size_t hoist_weight_computations(Program & p);
/// No-grad graphs: additive deltas and row/column scales merged into the linear weights they feed.
size_t fold_linear_algebra(Program & p);
/// peft::lora_add nodes that share their input: one peft::lora_shrink GEMM for all their A's, then
/// peft::lora_expand_add per adapter.
size_t batch_sibling_lora(Program & p);
/// peft::lora_add -> peft::lora_add_fused (low-rank product accumulated into the base output by addmm).
size_t fuse_lora_gemm(Program & p);
/// aten::linear on a single row -> peft::linear_gemv (matrix-vector product); no-grad graphs, 2..16 rows
/// -> peft::linear_small (each weight read once for all rows).
size_t gemv_decode(Program & p, bool small_rows);

/// The pipeline, in order, honouring the options; `no_grad`: the graph runs without autograd.
void run_passes(Program & p, const CompileOptions & o, bool no_grad);

// helpers shared by the passes
c10::optional<c10::IValue> constant_of(const torch::jit::Value * v);
bool is_none(const torch::jit::Value * v);
/// The input of `n` that its schema names `name` (e.g. arg(n, "scale")); throws if there is none.
torch::jit::Value * arg(torch::jit::Node * n, const char * name);
torch::jit::Node * replace_node(torch::jit::Graph & g, torch::jit::Node * old, const char * kind,
                                const std::vector<torch::jit::Value *> & inputs);

}  // namespace peft::compile_detail
