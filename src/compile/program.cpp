#include "program.h"

#include "peft/error.h"

namespace peft::compile_detail {

int64_t Program::value_index(const torch::jit::Value * v) const {
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
  std::vector<int64_t> now;
  for (size_t f : dv.from) {
    if (f >= sources.size()) refresh(f - sources.size());
    now.push_back(version_of(f));
  }
  if (derived_values_[d].defined() && now == derived_seen_[d]) return;
  std::vector<at::Tensor> in;
  for (size_t f : dv.from) in.push_back(f < sources.size() ? sources[f] : derived_values_[f - sources.size()]);
  {
    at::NoGradGuard g;
    derived_values_[d] = dv.compute(in);
  }
  if (derived_seen_[d].size()) ++refolds;  // not the first computation
  derived_seen_[d] = now;
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
  code_ = std::make_unique<torch::jit::Code>(graph, "peft_compiled");
}

at::Tensor Program::run(std::vector<c10::IValue> stack) {
  PEFT_CHECK(stack.size() == n_runtime, "compiled graph expects ", n_runtime, " runtime inputs, got ", stack.size());
  for (const auto & s : sources) stack.emplace_back(s);
  for (size_t d = 0; d < derived.size(); ++d) {
    refresh(d);
    stack.emplace_back(derived_values_[d]);
  }
  torch::jit::InterpreterState(*code_).run(stack);
  ++calls;
  return stack.at(0).toTensor();
}

}  // namespace peft::compile_detail
