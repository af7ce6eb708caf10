#include "peft/nn/module.h"

#include <set>

#include "peft/error.h"

namespace peft {

void Module::register_layer(const std::string & name, LayerPtr & slot) {
  PEFT_CHECK(slot != nullptr, "register_layer('", name, "'): empty layer");
  register_module(name, slot);
  slots_[name] = &slot;
}

void Module::replace_layer(const std::string & name, LayerPtr layer) {
  auto it = slots_.find(name);
  PEFT_CHECK(it != slots_.end(), "module has no replaceable child '", name, "'");
  replace_module(name, layer);
  *it->second = std::move(layer);
}

ModulePtr find_submodule(const ModulePtr & root, const std::string & path) {
  ModulePtr cur = root;
  size_t start = 0;
  while (cur && start < path.size()) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    ModulePtr next;
    for (const auto & child : cur->named_children()) {
      if (child.key() == part) {
        next = child.value();
        break;
      }
    }
    cur = next;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

ModulePtr get_submodule(const ModulePtr & root, const std::string & path) {
  ModulePtr m = find_submodule(root, path);
  PEFT_CHECK(m != nullptr, "model has no module '", path, "'");
  return m;
}

LayerPtr replace_submodule(const ModulePtr & root, const std::string & path, LayerPtr layer) {
  size_t dot = path.rfind('.');
  std::string parent_path = dot == std::string::npos ? "" : path.substr(0, dot);
  std::string name = dot == std::string::npos ? path : path.substr(dot + 1);
  auto parent = std::dynamic_pointer_cast<Module>(get_submodule(root, parent_path));
  PEFT_CHECK(parent && parent->has_slot(name), "module '", path, "' cannot be replaced (its parent holds no slot '",
             name, "')");
  auto old = std::dynamic_pointer_cast<Layer>(get_submodule(root, path));
  parent->replace_layer(name, std::move(layer));
  return old;
}

static void collect(const std::string & prefix, const ModulePtr & m, std::vector<std::pair<std::string, ModulePtr>> & out) {
  out.emplace_back(prefix, m);
  for (const auto & child : m->named_children()) {
    collect(prefix.empty() ? child.key() : prefix + "." + child.key(), child.value(), out);
  }
}

std::vector<std::pair<std::string, ModulePtr>> named_modules(const ModulePtr & root) {
  std::vector<std::pair<std::string, ModulePtr>> out;
  collect("", root, out);
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> named_parameters(const torch::nn::Module & root) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::set<const void *> seen;
  for (const auto & p : root.named_parameters(/*recurse=*/true)) {
    const void * id = p.value().unsafeGetTensorImpl();
    if (!seen.insert(id).second) continue;
    out.emplace_back(p.key(), p.value());
  }
  return out;
}

}  // namespace peft
