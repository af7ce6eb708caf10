#include "capture.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <set>
#include <unordered_map>

#include "peft/error.h"

namespace peft::compile_detail {

InputLayout InputLayout::of(const PeftInput & in) {
  InputLayout l;
  l.embeds = !in.input_ids.defined();
  l.mask = in.attention_mask.defined();
  l.position_ids = in.position_ids.defined();
  l.segments = in.segment_ids.defined();
  l.cache = in.cache != nullptr;
  l.cache_layers = in.cache ? in.cache->k.size() : 0;
  l.routing = in.adapter_rows.defined();
  l.hidden = in.hidden_states;
  return l;
}

std::vector<c10::IValue> InputLayout::pack(const PeftInput & in) const {
  std::vector<c10::IValue> s;
  s.emplace_back(embeds ? in.inputs_embeds : in.input_ids);
  if (mask) s.emplace_back(in.attention_mask);
  if (position_ids) s.emplace_back(in.position_ids);
  if (segments) s.emplace_back(in.segment_ids);
  if (cache) {
    s.emplace_back(in.cache_position);
    for (size_t i = 0; i < cache_layers; ++i) {
      s.emplace_back(in.cache->k[i]);
      s.emplace_back(in.cache->v[i]);
    }
  }
  if (routing) s.emplace_back(in.adapter_rows);
  return s;
}

Program capture(CausalLM & model, const PeftLogitsFn & body, const PeftInput & in, const InputLayout & layout) {
  Program p;
  std::vector<c10::IValue> inputs = layout.pack(in);
  p.n_runtime = inputs.size();
  // every parameter and buffer becomes a graph input (read live at each call), each tensor once
  std::unordered_map<const void *, std::string> names;
  std::set<const void *> seen;
  for (const auto & t : model.named_parameters(true)) {
    if (seen.insert(t.value().unsafeGetTensorImpl()).second) {
      p.sources.push_back(t.value());
      names[t.value().unsafeGetTensorImpl()] = t.key();
    }
  }
  for (const auto & t : model.named_buffers(true)) {
    if (seen.insert(t.value().unsafeGetTensorImpl()).second) {
      p.sources.push_back(t.value());
      names[t.value().unsafeGetTensorImpl()] = t.key();
    }
  }
  for (const auto & s : p.sources) inputs.emplace_back(s);

  auto fn = [&](torch::jit::Stack stack) -> torch::jit::Stack {
    size_t i = 0;
    PeftInput f;
    (layout.embeds ? f.inputs_embeds : f.input_ids) = stack[i++].toTensor();
    if (layout.mask) f.attention_mask = stack[i++].toTensor();
    if (layout.position_ids) f.position_ids = stack[i++].toTensor();
    if (layout.segments) f.segment_ids = stack[i++].toTensor();
    KVCache cache;
    if (layout.cache) {
      f.cache_position = stack[i++].toTensor();
      for (size_t l = 0; l < layout.cache_layers; ++l) {
        cache.k.push_back(stack[i++].toTensor());
        cache.v.push_back(stack[i++].toTensor());
      }
      f.cache = &cache;
    }
    // the routing tensor is a graph input: the PeftModel's forward routes the rows by it (the tracer sees
    // the input)
    if (layout.routing) f.adapter_rows = stack[i++].toTensor();
    f.hidden_states = layout.hidden;
    return {body(f)};
  };
  auto lookup = [&](const at::Tensor & t) -> std::string {
    auto it = names.find(t.unsafeGetTensorImpl());
    if (it == names.end()) return "";
    std::string n = it->second;
    for (auto & c : n) c = (c == '.') ? '_' : c;  // IR value names cannot hold dots followed by digits
    return n;
  };
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  at::Tensor rng_state;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    rng_state = gen.get_state();
  }
  std::pair<std::shared_ptr<torch::jit::tracer::TracingState>, torch::jit::Stack> traced;
  try {
    at::NoGradGuard no_grad;
    traced = torch::jit::tracer::trace(inputs, fn, lookup, /*strict=*/false, /*force_outplace=*/false);
  } catch (const std::exception & e) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng_state);
    fail(str("peft::compile: capturing the model failed: ", e.what()));
  }
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng_state);
  }
  p.graph = traced.first->graph;
  return p;
}

}  // namespace peft::compile_detail
