// peft::compile: capture a model's whole forward (embedding to head, adapter math included) once per
// (adapter state, input shapes, train/eval, grad mode), optimise the graph, replay it. Parameters are
// graph inputs read live, so optimizer steps and in-place weight swaps are seen without recompiling;
// everything that changes the computation is in the cache key, so a stale graph is never replayed.
//
// Example:
//   peft::PeftModel model(base, cfg);
//   auto compiled = peft::compile(model);
//   at::Tensor logits = compiled.forward({ids});   // same as model.forward({ids}), faster
//   std::cout << compiled.explain();
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "peft/model/causal-lm.h"
#include "peft/peft-model/peft-input.h"

namespace peft {

class PeftModel;

/// Each pass can be switched off (tests compare results with and without it).
struct CompileOptions {
  bool remove_noop_casts = true;      // drop dtype casts to the dtype a tensor already has
  bool fold_adapters = true;          // no-grad calls: fold adapters into copies of the base weights
  bool fuse_lora_gemm = true;         // accumulate the low-rank product into the base GEMM output (addmm)
  bool batch_sibling_lora = true;     // adapters sharing an input (q/k/v): one GEMM for their A's
  bool gemv_decode = true;            // decode: a single-row linear as a matrix-vector product
  bool small_row_linear = true;       // and 1..16 rows (no-grad) as peft::linear_small (each weight read once;
                                      // OpenBLAS's GEMM packs the whole weight first: 8-row decode 1.5x faster;
                                      // one row: 1.7-2.3x its GEMV)
  bool constant_propagation = true;   // precompute what depends on shapes only (positions, masks)
  bool common_subexpressions = true;  // compute an expression once (the routing weights of mixed batches, per layer)
  size_t cache_capacity = 32;         // graphs kept (least recently used evicted)
};

struct CompileStats {
  size_t graphs = 0;        // cached now
  size_t compiles = 0;      // captures done
  size_t recompiles = 0;    // captures after the first
  size_t cache_hits = 0;    // calls that replayed a cached graph
  size_t calls = 0;
  size_t evictions = 0;
  size_t refolds = 0;       // folded weights recomputed after their sources changed in place
  size_t graph_breaks = 0;  // always 0: capture is whole-model or it fails with an error
};

class CompiledModel {
 public:
  /// Logits (B, S, V), equal to the eager forward.
  at::Tensor forward(const PeftInput & in);
  at::Tensor forward(const ForwardInput & in) { return forward(PeftInput(in)); }
  at::Tensor operator()(const PeftInput & in) { return forward(in); }
  at::Tensor operator()(const ForwardInput & in) { return forward(in); }
  /// Graphs, node counts, pass results, recompiles with their causes, breaks.
  std::string explain() const;
  CompileStats stats() const;
  /// Reasons of every recompile so far, in order.
  std::vector<std::string> recompile_reasons() const;
  /// Node kinds of the most recently used graph (e.g. "aten::linear", "peft::lora_add") and their counts.
  std::map<std::string, size_t> last_graph_ops() const;
  /// The most recently used graph as text (TorchScript IR).
  std::string last_graph() const;

  struct Impl;
  explicit CompiledModel(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<Impl> impl_;
};

/// Compile a model with adapters. The PeftModel must outlive the CompiledModel.
CompiledModel compile(PeftModel & model, const CompileOptions & options = {});
/// Compile a plain model.
CompiledModel compile(std::shared_ptr<CausalLM> model, const CompileOptions & options = {});

}  // namespace peft
