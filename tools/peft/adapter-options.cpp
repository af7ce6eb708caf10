#include "adapter-options.h"

#include "peft/error.h"

namespace peft::cli {

void add_adapter_options(CLI::App & cmd, AdapterOptions & o) {
  cmd.add_option("--adapter", o.adapters, "PEFT adapter folder, optionally =NAME (repeatable; the first is active)");
  cmd.add_option("--active", o.active, "comma-separated adapters to activate together");
  cmd.add_flag("--disable-adapters", o.disable, "run with adapters disabled");
  cmd.add_flag("--merge", o.merge, "merge the active adapters into the base weights");
  cmd.add_flag("--unmerge", o.unmerge, "after --merge: unmerge again, then run");
  cmd.add_flag("--merge-and-unload", o.merge_and_unload, "merge, then run the plain model");
}

static std::vector<std::string> split(const std::string & s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t c = s.find(',', start);
    std::string part = s.substr(start, c == std::string::npos ? std::string::npos : c - start);
    if (!part.empty()) out.push_back(part);
    if (c == std::string::npos) break;
    start = c + 1;
  }
  return out;
}

Prepared apply_adapter_options(std::shared_ptr<CausalLM> model, const AdapterOptions & o) {
  Prepared p;
  if (o.adapters.empty()) {
    PEFT_CHECK(o.active.empty() && !o.merge && !o.unmerge && !o.merge_and_unload,
               "--active/--merge/--unmerge/--merge-and-unload need at least one --adapter");
    p.plain = model;
    return p;
  }
  PEFT_CHECK(!o.unmerge || o.merge, "--unmerge needs --merge");
  auto pm = std::make_shared<PeftModel>(model);
  std::string first;
  for (size_t i = 0; i < o.adapters.size(); ++i) {
    std::string path = o.adapters[i], name = i == 0 ? "default" : "adapter" + std::to_string(i);
    size_t eq = path.rfind('=');
    if (eq != std::string::npos) {
      name = path.substr(eq + 1);
      path = path.substr(0, eq);
    }
    pm->load_adapter(path, name);
    if (first.empty()) first = name;
  }
  pm->set_adapter(o.active.empty() ? std::vector<std::string>{first} : split(o.active));
  if (o.disable) pm->set_adapters_disabled(true);
  if (o.merge_and_unload) {
    p.plain = pm->merge_and_unload();
    return p;
  }
  if (o.merge) pm->merge_adapter();
  if (o.unmerge) pm->unmerge_adapter();
  p.peft = pm;
  return p;
}

}  // namespace peft::cli
