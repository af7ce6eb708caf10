// replicate_layers: the same architecture built again for the new layer count, then every one of its
// layers replaced by the original layer it copies (so all weights are shared, none allocated for good).
#include "peft/model/replicate.h"

#include <set>

#include "peft/error.h"
#include "peft/nn/layers.h"

namespace peft {

namespace {

// The path of the layer list as PEFT's replicate_layers finds it: down `.model` while there is one,
// then `layers` (Llama's naming) or `h` (Falcon's).
std::string layer_list_path(const std::shared_ptr<CausalLM> & model) {
  ModulePtr cur = model;
  std::string path;
  while (ModulePtr next = find_submodule(cur, "model")) {
    cur = next;
    path += path.empty() ? "model" : ".model";
  }
  for (const char * name : {"layers", "h"}) {
    if (ModulePtr list = find_submodule(cur, name)) {
      if (!std::dynamic_pointer_cast<ModuleList>(list)) break;
      return path.empty() ? name : path + "." + name;
    }
  }
  fail(str("layer_replication: could not locate the layers of the model (", model->config().arch_name(),
           "): PEFT replicates the layer list at model(.model)*.layers or .h only (Llama, Bert or Falcon compatible ",
           "architectures), and so does peft.cpp"));
}

}  // namespace

std::shared_ptr<CausalLM> replicate_layers(const std::shared_ptr<CausalLM> & model, const LayerMap & map) {
  const ModelConfig & old_cfg = model->config();
  const std::string list = layer_list_path(model);
  std::vector<int64_t> source;  // new layer index -> original index
  for (const auto & r : map) {
    PEFT_CHECK(r.first >= 0 && r.first < r.second && r.second <= old_cfg.num_layers, "layer_replication: range [",
               r.first, ", ", r.second, "] is not within the model's ", old_cfg.num_layers,
               " layers (each range is [start, end) with 0 <= start < end <= num_hidden_layers)");
    for (int64_t i = r.first; i < r.second; ++i) source.push_back(i);
  }
  PEFT_CHECK(!source.empty(), "layer_replication: the layer map is empty");
  ModelConfig cfg = old_cfg;
  cfg.num_layers = static_cast<int64_t>(source.size());
  if (!old_cfg.sliding_layers.empty()) {
    cfg.sliding_layers.clear();
    for (int64_t i : source) cfg.sliding_layers.push_back(old_cfg.layer_slides(i));
  }
  auto out = build_model(cfg);

  // new path -> the original's path: inside the layer list, the copied layer's index
  const std::string prefix = list + ".";
  auto original_path = [&](const std::string & path) {
    if (path.rfind(prefix, 0) != 0) return path;
    const size_t dot = path.find('.', prefix.size());
    const int64_t j = std::stoll(path.substr(prefix.size(), dot - prefix.size()));
    return prefix + std::to_string(source.at(static_cast<size_t>(j))) + (dot == std::string::npos ? "" : path.substr(dot));
  };
  // every slot (Linear, Embedding, norm, quantized linear: what holds weights) takes the original object
  std::vector<std::string> slots;
  for (const auto & m : named_modules(out)) {
    auto parent = std::dynamic_pointer_cast<Module>(m.second);
    if (!parent) continue;
    for (const auto & c : parent->named_children()) {
      if (parent->has_slot(c.key())) slots.push_back(m.first.empty() ? c.key() : m.first + "." + c.key());
    }
  }
  for (const auto & path : slots) {
    auto layer = std::dynamic_pointer_cast<Layer>(get_submodule(model, original_path(path)));
    PEFT_CHECK(layer != nullptr, "internal: layer_replication found no layer at '", original_path(path), "'");
    replace_submodule(out, path, layer);
  }
  // nothing of the new model's own may remain: every tensor is one of the original's
  std::set<const void *> shared;
  for (const auto & p : model->named_parameters(true)) shared.insert(p.value().unsafeGetTensorImpl());
  for (const auto & b : model->named_buffers(true)) shared.insert(b.value().unsafeGetTensorImpl());
  for (const auto & p : out->named_parameters(true)) {
    PEFT_CHECK(shared.count(p.value().unsafeGetTensorImpl()), "internal: layer_replication left parameter '", p.key(),
               "' outside a replaceable layer");
  }
  for (const auto & b : out->named_buffers(true)) {
    PEFT_CHECK(shared.count(b.value().unsafeGetTensorImpl()), "internal: layer_replication left buffer '", b.key(),
               "' outside a replaceable layer");
  }
  out->train(model->is_training());
  out->tie_weights();
  return out;
}

}  // namespace peft
