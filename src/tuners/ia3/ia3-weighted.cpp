// IA3's linear combination of adapters (ia3-weighted.h).
#include "tuners/ia3/ia3-weighted.h"

#include <algorithm>

#include "peft/error.h"
#include "peft/peft-model.h"
#include "tuners/ia3/ia3.h"

namespace peft {

namespace {

// The union of one field over the sources: lists merged in order of first appearance, strings joined as
// alternatives; PEFT refuses a mix of the two.
nlohmann::json union_of(PeftModel & model, const std::vector<std::string> & adapters, const char * field) {
  std::vector<std::string> list;
  std::string regex;
  bool lists = false, strings = false;
  for (const auto & a : adapters) {
    const nlohmann::json & t = model.adapter_config(a).field(field);
    if (t.is_null()) continue;
    if (t.is_array()) {
      lists = true;
      for (const auto & x : t)
        if (std::find(list.begin(), list.end(), x.get<std::string>()) == list.end()) list.push_back(x);
    } else {
      strings = true;
      regex += (regex.empty() ? "(" : "|(") + t.get<std::string>() + ")";
    }
  }
  PEFT_CHECK(!(lists && strings), "add_weighted_adapter: all IA3 adapters must give ", field,
             " of the same type (all lists or all strings), as PEFT requires");
  if (strings) return regex;
  if (lists) return list;
  return nullptr;
}

}  // namespace

void add_weighted_ia3(PeftModel & model, const std::vector<std::string> & adapters, const std::vector<double> & weights,
                      const std::string & name) {
  nlohmann::json j = model.adapter_config(adapters[0]).fields;
  j["target_modules"] = union_of(model, adapters, "target_modules");
  j["feedforward_modules"] = union_of(model, adapters, "feedforward_modules");
  model.add_adapter(name, AdapterConfig::from_json(j, "add_weighted_adapter"));
  at::NoGradGuard g;
  for (const auto & entry : model.tuner_layers()) {
    auto * layer = dynamic_cast<IA3Linear *>(entry.second.get());
    if (!layer || !layer->has_adapter(name)) continue;
    at::Tensor target = layer->vector(name);
    target.zero_();
    for (size_t i = 0; i < adapters.size(); ++i) {
      if (!layer->has_adapter(adapters[i])) continue;
      const at::Tensor src = layer->vector(adapters[i]);
      PEFT_CHECK(src.sizes() == target.sizes(), "add_weighted_adapter: '", adapters[i], "' scales ", entry.first,
                 "'s ", src.size(0) == 1 ? "input" : "output", " but the combination scales the other side");
      target.add_(src * weights[i]);
    }
  }
}

}  // namespace peft
