#include "peft/tuners/registry.h"

#include <cmath>

#include "peft/error.h"
#include "peft/util/runtime.h"

namespace peft {

// One line per method; each is defined in its own folder src/tuners/<method>/.
TunerMethod lora_method();
TunerMethod ia3_method();
TunerMethod loha_method();
TunerMethod lokr_method();
TunerMethod ln_tuning_method();
TunerMethod adalora_method();
TunerMethod oft_method();
TunerMethod boft_method();
TunerMethod vera_method();
TunerMethod hra_method();
TunerMethod miss_method();
TunerMethod fourierft_method();
TunerMethod vblora_method();
TunerMethod shira_method();
TunerMethod randlora_method();
TunerMethod road_method();
TunerMethod trainable_tokens_method();
TunerMethod prompt_tuning_method();
TunerMethod p_tuning_method();
TunerMethod prefix_tuning_method();
TunerMethod delora_method();

const std::vector<TunerMethod> & tuner_methods() {
  static const std::vector<TunerMethod> methods = {lora_method(),      ia3_method(),      loha_method(),
                                                   lokr_method(),      ln_tuning_method(), adalora_method(),
                                                   oft_method(),       boft_method(),      vera_method(),
                                                   hra_method(),       miss_method(),      fourierft_method(),
                                                   vblora_method(),    shira_method(),     randlora_method(),
                                                   road_method(),      trainable_tokens_method(), prompt_tuning_method(),
                                                   p_tuning_method(),  prefix_tuning_method(), delora_method()};
  return methods;
}

AdapterConfig AdapterConfig::from_json(const nlohmann::json & j, const std::string & src) {
  PEFT_CHECK(j.is_object(), src, ": not a JSON object");
  PEFT_CHECK(j.contains("peft_type") && j["peft_type"].is_string(), src, ": missing required field 'peft_type'");
  const TunerMethod * method = nullptr;
  try {
    method = &tuner_method(j["peft_type"].get<std::string>());
  } catch (const Error & e) {
    fail(str(src, ": ", e.what()));
  }
  return parse(j, src, method->schema);
}

std::vector<std::string> default_targets(const TunerMethod & method, const std::string & model_type) {
  const Architecture * a = find_architecture(model_type);
  if (!a || !method.default_targets) return {};
  return a->targets.*method.default_targets;
}

void check_adapter_memory(const TunerMethod & method, const AdapterConfig & cfg, const std::string & adapter,
                          const std::vector<std::pair<std::string, const Layer *>> & targets) {
  if (!method.bytes) return;
  double total = 0, largest = 0;
  std::string largest_at;
  for (const auto & t : targets) {
    const double b = method.bytes(cfg, t.first, *t.second);
    total += b;
    if (b > largest) largest = b, largest_at = t.first;
  }
  const double avail = static_cast<double>(available_memory_bytes());
  if (avail <= 0 || total <= avail) return;
  std::string fields;
  for (const auto & f : method.size_fields) {
    const auto & v = cfg.field(f);
    if (v.is_null() || (v.is_object() && v.empty())) continue;
    std::string d = v.dump();
    if (d.size() > 60) d = d.substr(0, 57) + "...";
    fields += str(fields.empty() ? "" : ", ", "'", f, "': ", d);
  }
  auto gb = [](double b) { return str(std::round(b / (1ull << 30) * 100) / 100, " GB"); };
  fail(str(cfg.peft_type, " adapter '", adapter, "' (", fields, ") needs ", gb(total), " for its ", targets.size(),
           " adapted module(s) together (the largest: ", gb(largest), " at '", largest_at, "'), ", gb(avail),
           " available; nothing was allocated (lower ", method.size_fields.empty() ? "its size" : method.size_fields.front(),
           " or target fewer modules)"));
}

bool supports_linear(const Layer & l) { return dynamic_cast<const LinearBase *>(&l) != nullptr; }

const TunerMethod & tuner_method(const std::string & peft_type) {
  std::string known;
  for (const auto & m : tuner_methods()) {
    if (m.schema.peft_type == peft_type) return m;
    known += (known.empty() ? "" : ", ") + m.schema.peft_type;
  }
  fail(str("unknown peft_type '", peft_type, "' (supported: ", known, ")"));
}

}  // namespace peft
