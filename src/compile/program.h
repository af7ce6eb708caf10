// A Program is one captured graph plus what it is fed: runtime inputs (ids, masks, cache), sources
// (the model's parameters and buffers, read live) and derived inputs (tensors computed from sources by
// passes, e.g. folded weights), recomputed only when a source's version counter moved.
#pragma once
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace peft::compile_detail {

struct Derived {
  std::vector<size_t> from;  // value indices (see Program::value_index)
  std::function<at::Tensor(const std::vector<at::Tensor> &)> compute;
  std::string what;
};

struct Program {
  std::shared_ptr<torch::jit::Graph> graph;
  size_t n_runtime = 0;             // graph inputs [0, n_runtime) are filled per call
  std::vector<at::Tensor> sources;  // graph inputs [n_runtime, n_runtime + sources.size())
  std::vector<Derived> derived;     // the inputs after those
  std::vector<std::shared_ptr<void>> kept;  // what nodes run besides ops (checkpointed layers' functions)
  std::map<std::string, size_t> pass_counts;
  double compile_ms = 0;
  size_t calls = 0;
  size_t refolds = 0;
  std::string key_summary;

  /// Index of a graph input among sources+derived (value index), or -1 for runtime inputs/others.
  int64_t value_index(const torch::jit::Value * v) const;
  /// Add a derived graph input computed from value indices `from`; returns the new graph Value.
  torch::jit::Value * add_derived(const std::vector<size_t> & from,
                                  std::function<at::Tensor(const std::vector<at::Tensor> &)> compute,
                                  const std::string & what, const at::Tensor & example);
  /// The current tensor of a value index (sources, or derived computed so far).
  at::Tensor value(size_t index);
  /// Drop graph inputs nothing reads any more (weights replaced by folded copies), then build the
  /// interpreter code. Passes must not run after this.
  void finalize();
  /// Refresh derived inputs whose sources changed, run the graph, return its output.
  at::Tensor run(std::vector<c10::IValue> runtime);

 private:
  std::unique_ptr<torch::jit::Code> code_;
  std::vector<at::Tensor> derived_values_;
  std::vector<std::vector<int64_t>> derived_seen_;  // source versions when last computed
  std::vector<int64_t> derived_gen_;                 // bumped on each recompute
  std::vector<size_t> fed_;                          // value indices passed to the graph, in input order
  int64_t version_of(size_t index) const;
  void refresh(size_t d);
};

}  // namespace peft::compile_detail
