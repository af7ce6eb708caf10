#include "peft/tuners/config.h"

#include "peft/error.h"
#include "peft/io/files.h"

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

AdapterConfig AdapterConfig::parse(const nlohmann::json & j, const std::string & src, const MethodSchema & schema) {
  PEFT_CHECK(j.is_object(), src, ": not a JSON object");
  AdapterConfig c;
  c.peft_type = schema.peft_type;
  c.method = &schema;
  const MethodSchema * method = &schema;
  c.fields = common_defaults();
  c.fields.update(method->defaults());
  for (const auto & k : method->absent_fields) c.fields.erase(k);
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
  if (lp.is_string()) {
    if (!lp.get<std::string>().empty()) c.layers_pattern = {lp.get<std::string>()};  // PEFT: "" = no pattern
  }
  else if (!lp.is_null()) c.layers_pattern = string_list(lp, "layers_pattern", src);
  const auto & tp = field("target_parameters");
  if (!tp.is_null()) c.target_parameters = string_list(tp, "target_parameters", src);
  const auto & ms = field("modules_to_save");
  if (!ms.is_null()) c.modules_to_save = string_list(ms, "modules_to_save", src);
  // trainable_token_indices: a list (the input embedding's rows) or {module: rows}
  const auto & tt = field("trainable_token_indices");
  auto rows_of = [&](const nlohmann::json & v, const std::string & where) {
    std::vector<int64_t> rows;
    PEFT_CHECK(v.is_array() && !v.empty(), src, ": field 'trainable_token_indices", where, "' must be a non-empty list of token ids");
    for (const auto & i : v) {
      PEFT_CHECK(i.is_number_integer() && i.get<int64_t>() >= 0, src, ": field 'trainable_token_indices", where,
                 "' must hold token ids (integers >= 0)");
      rows.push_back(i.get<int64_t>());
    }
    return rows;
  };
  if (tt.is_array()) {
    c.trainable_tokens.emplace_back("", rows_of(tt, ""));
  } else if (tt.is_object()) {
    for (auto it = tt.begin(); it != tt.end(); ++it) c.trainable_tokens.emplace_back(it.key(), rows_of(it.value(), "." + it.key()));
  } else {
    PEFT_CHECK(tt.is_null(), src, ": field 'trainable_token_indices' must be a list of token ids or {module: list}");
  }
  const auto & bias = f.contains("bias") ? f.at("bias") : nlohmann::json("none");
  PEFT_CHECK(bias.is_string(), src, ": field 'bias' must be a string");
  c.bias = bias.get<std::string>();
  // PEFT: "none", "all", or any "<x>_only" (the adapted layers' biases; "lora_only", "vera_only", ...)
  const bool only = c.bias.size() > 5 && c.bias.compare(c.bias.size() - 5, 5, "_only") == 0;
  PEFT_CHECK(c.bias == "none" || c.bias == "all" || only, src, ": field 'bias' must be \"none\", \"all\" or \"",
             method->bias_only_name(), "\", got \"", c.bias, "\"");
  PEFT_CHECK(field("inference_mode").is_boolean(), src, ": field 'inference_mode' must be true or false");
  c.inference_mode = field("inference_mode").get<bool>();
  // PEFT: some methods' configs refuse a layer filter beside a string target_modules (a regex or "all-linear");
  // the others take it and it filters nothing (is_target)
  if (method->string_targets_refuse_layer_filter) {
    PEFT_CHECK(!((c.target_regex || c.all_linear) && !field("layers_to_transform").is_null()), src,
               ": 'layers_to_transform' cannot be used when 'target_modules' is a string (a regex or \"all-linear\")");
    PEFT_CHECK(!((c.target_regex || c.all_linear) && !field("layers_pattern").is_null()), src,
               ": 'layers_pattern' cannot be used when 'target_modules' is a string (a regex or \"all-linear\")");
  }
  PEFT_CHECK(!method->layers_pattern_needs_layers || c.layers_pattern.empty() || !field("layers_to_transform").is_null(),
             src, ": 'layers_pattern' requires 'layers_to_transform'");
  c.options = method->parse(c, src);
  return c;
}

void AdapterConfig::set_field(const std::string & key, const nlohmann::json & value, const std::string & source) {
  PEFT_CHECK(method != nullptr, source, ": config has no method");
  nlohmann::json j = fields;
  j[key] = value;
  AdapterConfig c = parse(j, source, *method);
  c.shared = std::move(shared);
  c.shared_persistent = shared_persistent;
  c.shared_trainable = shared_trainable;
  *this = std::move(c);
}

const nlohmann::json & AdapterConfig::field(const std::string & key) const {
  static const nlohmann::json null_value;
  auto it = fields.find(key);
  return it == fields.end() ? null_value : *it;
}

const nlohmann::json & FieldReader::at(const char * k) const {
  PEFT_CHECK(f_.contains(k), src_, ": missing field '", k, "'");
  return f_.at(k);
}

JsonFields FieldReader::fields() const {
  return JsonFields(f_, [this](const char * k, const std::string & m) { fail(str(src_, ": field '", k, "' ", m)); });
}

int64_t FieldReader::integer(const char * k, int64_t min_value) const {
  at(k);
  return fields().integer(k, min_value);
}

double FieldReader::number(const char * k) const {
  at(k);
  return fields().number(k);
}

double FieldReader::fraction(const char * k) const {
  const double x = number(k);
  if (!(x >= 0 && x < 1)) fields().fail(k, str("must be in [0, 1), got ", x));
  return x;
}

bool FieldReader::boolean(const char * k) const {
  at(k);
  return fields().boolean(k);
}

std::string FieldReader::string(const char * k) const {
  at(k);
  return fields().string(k);
}

std::string FieldReader::init(const char * k, const std::vector<std::string> & allowed) const {
  const auto & v = at(k);
  std::string s = v.is_boolean() ? (v.get<bool>() ? "true" : "false") : v.is_string() ? v.get<std::string>() : v.dump();
  std::string list;
  for (const auto & a : allowed) {
    if (a == s) return s;
    list += (list.empty() ? "" : ", ") + a;
  }
  fail(str(src_, ": ", k, " '", s, "' is not supported (", list, ")"));
}

void FieldReader::unsupported(const char * k, const char * what, const nlohmann::json & neutral) const {
  if (!f_.contains(k)) return;
  const auto & v = f_.at(k);
  if (v.is_null() || v == neutral) return;
  fail(str(src_, ": field '", k, "' (", what, ") is set to ", v.dump(),
           ", which changes what PEFT computes, and is not supported yet"));
}

void AdapterConfig::throw_wrong_options(const char * type) const {
  fail(str("adapter config for ", peft_type, " holds no options of type ", type));
}

AdapterConfig AdapterConfig::load(const std::string & dir) {
  const std::string path = dir + "/adapter_config.json";
  return from_json(read_json_file(path), path);
}

nlohmann::json AdapterConfig::to_json() const {
  nlohmann::json j = fields;  // nlohmann::json objects keep keys sorted, as PEFT writes them
  j["inference_mode"] = true;
  j["peft_type"] = peft_type;
  if (!j.contains("peft_version")) j["peft_version"] = "0.20.1.dev0";
  return j;
}

}  // namespace peft
