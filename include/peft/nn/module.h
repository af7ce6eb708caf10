// The module tree: every module knows its children by their Hugging Face names, so dotted paths
// ("model.layers.0.self_attn.q_proj") equal checkpoint keys. A Layer is a leaf-like module with a
// single-tensor forward (Linear, Embedding, norms); architectures hold Layers in *slots*, and
// replace_submodule() swaps what a slot points to. That swap is how adapters enter a model.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace peft {

class Layer;
using LayerPtr = std::shared_ptr<Layer>;
using ModulePtr = std::shared_ptr<torch::nn::Module>;

/// Base of every peft module: torch::nn::Module plus replaceable Layer slots.
class Module : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;

  /// Replace the child `name` (a slot) by `layer`; the slot member then calls the new layer.
  void replace_layer(const std::string & name, LayerPtr layer);
  bool has_slot(const std::string & name) const { return slots_.count(name) != 0; }

 protected:
  /// Register `slot` as the child `name`. Architecture code calls through the slot member.
  void register_layer(const std::string & name, LayerPtr & slot);

 private:
  std::map<std::string, LayerPtr *> slots_;
};

/// A module with one tensor in and one tensor out. Wrappable by adapters.
class Layer : public Module {
 public:
  using Module::Module;
  virtual at::Tensor forward(const at::Tensor & x) = 0;
  /// A deep copy (new parameter tensors), used by modules_to_save and LayerNorm tuning.
  virtual LayerPtr clone_layer() const = 0;
  /// The innermost plain layer (adapter wrappers unwrap themselves).
  virtual LayerPtr base() { return std::static_pointer_cast<Layer>(shared_from_this()); }
};

/// Module at a dotted path, or nullptr. "" is the root.
ModulePtr find_submodule(const ModulePtr & root, const std::string & path);
/// Module at a dotted path; throws peft::Error naming the path if there is none.
ModulePtr get_submodule(const ModulePtr & root, const std::string & path);
/// Replace the Layer at `path` (its parent must hold it in a slot). Returns the old layer.
LayerPtr replace_submodule(const ModulePtr & root, const std::string & path, LayerPtr layer);
/// All modules with their dotted paths, root first ("" for the root), in registration order.
std::vector<std::pair<std::string, ModulePtr>> named_modules(const ModulePtr & root);
/// Parameters by dotted path, each shared tensor reported once (its first path).
std::vector<std::pair<std::string, at::Tensor>> named_parameters(const torch::nn::Module & root);

}  // namespace peft
