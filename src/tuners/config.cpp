#include "peft/tuners/config.h"

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/tuners/registry.h"

namespace peft {

namespace {

// PEFT fields shared by every non-prompt method.
nlohmann::json common_defaults() {
  // (bias, exclude_modules, layers_to_transform, layers_pattern belong to the methods that have them)
  return {{"auto_mapping", nullptr},   {"base_model_name_or_path", nullptr}, {"revision", nullptr},
          {"task_type", nullptr},      {"inference_mode", false},            {"target_modules", nullptr},
          {"modules_to_save", nullptr}};
}

std::vector<std::string> string_list(const nlohmann::json & v, const char * field, const std::string & src) {
  std::vector<std::string> out;
  PEFT_CHECK(v.is_array(), src, ": field '", field, "' must be a list of strings or a string");
  for (const auto & s : v) {
    PEFT_CHECK(s.is_string(), src, ": field '", field, "' holds a non-string ", s.dump());
    out.push_back(s.get<std::string>());
  }
  return out;
}

}  // namespace

AdapterConfig AdapterConfig::from_json(const nlohmann::json & j, const std::string & src) {
  PEFT_CHECK(j.is_object(), src, ": not a JSON object");
  PEFT_CHECK(j.contains("peft_type") && j["peft_type"].is_string(), src, ": missing required field 'peft_type'");
  AdapterConfig c;
  c.peft_type = j["peft_type"].get<std::string>();
  const TunerMethod * method = nullptr;
  try {
    method = &tuner_method(c.peft_type);
  } catch (const Error & e) {
    fail(str(src, ": ", e.what()));
  }
  c.fields = common_defaults();
  c.fields.update(method->defaults());
  for (auto it = j.begin(); it != j.end(); ++it) c.fields[it.key()] = it.value();
  c.fields.erase("runtime_config");

  const auto & f = c.fields;
  static const nlohmann::json null_value;
  auto field = [&](const char * k) -> const nlohmann::json & { return f.contains(k) ? f.at(k) : null_value; };
  const auto & t = field("target_modules");
  if (t.is_string()) {
    std::string s = t.get<std::string>();
    std::string lower = s;
    for (auto & ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (lower == "all-linear") c.all_linear = true;
    else c.target_regex = s;
  } else if (!t.is_null()) {
    c.target_list = string_list(t, "target_modules", src);
  }
  const auto & e = field("exclude_modules");
  if (e.is_string()) c.exclude_regex = e.get<std::string>();
  else if (!e.is_null()) c.exclude_list = string_list(e, "exclude_modules", src);
  const auto & l = field("layers_to_transform");
  if (l.is_number_integer()) c.layers_to_transform = {l.get<int64_t>()};
  else if (l.is_array()) {
    for (const auto & x : l) {
      PEFT_CHECK(x.is_number_integer(), src, ": field 'layers_to_transform' must hold integers");
      c.layers_to_transform.push_back(x.get<int64_t>());
    }
  } else PEFT_CHECK(l.is_null(), src, ": field 'layers_to_transform' must be an integer or a list");
  const auto & lp = field("layers_pattern");
  if (lp.is_string()) c.layers_pattern = {lp.get<std::string>()};
  else if (!lp.is_null()) c.layers_pattern = string_list(lp, "layers_pattern", src);
  const auto & ms = field("modules_to_save");
  if (!ms.is_null()) c.modules_to_save = string_list(ms, "modules_to_save", src);
  const auto & bias = f.contains("bias") ? f.at("bias") : nlohmann::json("none");
  PEFT_CHECK(bias.is_string(), src, ": field 'bias' must be a string");
  c.bias = bias.get<std::string>();
  PEFT_CHECK(c.bias == "none" || c.bias == "all" || c.bias == method->prefix + "only", src, ": field 'bias' must be ",
             "\"none\", \"all\" or \"", method->prefix, "only\", got \"", c.bias, "\"");
  PEFT_CHECK(field("inference_mode").is_boolean(), src, ": field 'inference_mode' must be true or false");
  c.inference_mode = field("inference_mode").get<bool>();
  PEFT_CHECK(!(c.target_regex && (!c.layers_to_transform.empty() || !c.layers_pattern.empty())), src,
             ": 'layers_to_transform'/'layers_pattern' cannot be combined with a regex 'target_modules'");
  PEFT_CHECK(c.layers_pattern.empty() || !c.layers_to_transform.empty(), src,
             ": 'layers_pattern' requires 'layers_to_transform'");
  method->validate(c, src);
  return c;
}

AdapterConfig AdapterConfig::load(const std::string & dir) {
  const std::string path = dir + "/adapter_config.json";
  return from_json(read_json_file(path), path);
}

std::string AdapterConfig::init_setting(const char * key) const {
  const auto & v = fields.at(key);
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return v.is_string() ? v.get<std::string>() : v.dump();
}

nlohmann::json AdapterConfig::to_json() const {
  nlohmann::json j = fields;  // nlohmann::json objects keep keys sorted, as PEFT writes them
  j["inference_mode"] = true;
  j["peft_type"] = peft_type;
  if (!j.contains("peft_version")) j["peft_version"] = "0.20.1.dev0";
  return j;
}

}  // namespace peft
