#include "program.h"

#include "peft/error.h"

namespace peft::compile_detail {

int64_t Program::value_index(const torch::jit::Value * v) const {
  // valid while passes run, i.e. before finalize() prunes inputs
  auto inputs = graph->inputs();
  for (size_t i = n_runtime; i < inputs.size(); ++i) {
    if (inputs[i] == v) return static_cast<int64_t>(i - n_runtime);
  }
  return -1;
}

int64_t Program::version_of(size_t index) const {
  if (index < sources.size()) return static_cast<int64_t>(sources[index]._version());
  return derived_gen_[index - sources.size()];
}

at::Tensor Program::value(size_t index) {
  if (index < sources.size()) return sources[index];
  size_t d = index - sources.size();
  refresh(d);
  return derived_values_[d];
}

void Program::refresh(size_t d) {
  const Derived & dv = derived[d];
  std::vector<int64_t> & seen = derived_seen_[d];
  bool same = derived_values_[d].defined() && seen.size() == dv.from.size();
  for (size_t i = 0; i < dv.from.size(); ++i) {  // no allocation on the per-call path
    const size_t f = dv.from[i];
    if (f >= sources.size()) refresh(f - sources.size());
    same = same && seen[i] == version_of(f);
  }
  if (same) return;
  std::vector<int64_t> now;
  for (size_t f : dv.from) now.push_back(version_of(f));
  std::vector<at::Tensor> in;
  for (size_t f : dv.from) in.push_back(f < sources.size() ? sources[f] : derived_values_[f - sources.size()]);
  {
    at::NoGradGuard g;
    derived_values_[d] = dv.compute(in);
  }
  if (!seen.empty()) ++refolds;  // not the first computation
  seen = std::move(now);
  ++derived_gen_[d];
}

torch::jit::Value * Program::add_derived(const std::vector<size_t> & from,
                                         std::function<at::Tensor(const std::vector<at::Tensor> &)> compute,
                                         const std::string & what, const at::Tensor & example) {
  derived.push_back({from, std::move(compute), what});
  derived_values_.emplace_back();
  derived_seen_.emplace_back();
  derived_gen_.push_back(0);
  torch::jit::Value * v = graph->addInput(what);
  v->setType(c10::TensorType::create(example));
  return v;
}

void Program::finalize() {
  for (size_t d = 0; d < derived.size(); ++d) refresh(d);
  refolds = 0;
  // weights whose every use was folded away stay sources (derived inputs are computed from them) but
  // are no longer graph inputs
  fed_.clear();
  std::vector<size_t> unused;
  for (size_t i = n_runtime; i < graph->inputs().size(); ++i) {
    if (graph->inputs()[i]->uses().empty()) unused.push_back(i);
    else fed_.push_back(i - n_runtime);
  }
  for (auto it = unused.rbegin(); it != unused.rend(); ++it) graph->eraseInput(*it);
  code_ = std::make_unique<torch::jit::Code>(graph, "peft_compiled");
}

at::Tensor Program::run(std::vector<c10::IValue> stack) {
  PEFT_CHECK(stack.size() == n_runtime, "compiled graph expects ", n_runtime, " runtime inputs, got ", stack.size());
  for (size_t v : fed_) {
    if (v < sources.size()) {
      stack.emplace_back(sources[v]);
    } else {
      refresh(v - sources.size());
      stack.emplace_back(derived_values_[v - sources.size()]);
    }
  }
  torch::jit::InterpreterState(*code_).run(stack);
  ++calls;
  return stack.at(0).toTensor();
}

}  // namespace peft::compile_detail
