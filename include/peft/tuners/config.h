// AdapterConfig: the method-agnostic part of an adapter_config.json (target selection, bias mode,
// modules_to_save) plus the complete JSON with PEFT's field names, so that files round-trip with PEFT.
// Method fields (r, lora_alpha, ...) are read from `fields` by each method's own parser.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace peft {

struct AdapterConfig {
  std::string peft_type;                     // "LORA", ...
  nlohmann::json fields;                     // every field, PEFT names, defaults filled in
  // target selection (PEFT §1.3)
  std::vector<std::string> target_list;      // list form: exact name or dotted suffix
  std::optional<std::string> target_regex;   // string form: full-match regex ("all-linear" handled apart)
  bool all_linear = false;
  std::vector<std::string> exclude_list;
  std::optional<std::string> exclude_regex;
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;
  std::vector<std::string> modules_to_save;
  std::string bias = "none";                 // none | all | <prefix>only
  bool inference_mode = false;

  /// Parse adapter_config.json content; `source` is named in errors. Unknown peft_type is an error.
  static AdapterConfig from_json(const nlohmann::json & j, const std::string & source);
  /// Read DIR/adapter_config.json.
  static AdapterConfig load(const std::string & dir);
  /// The JSON PEFT would write (sorted keys, inference_mode true).
  nlohmann::json to_json() const;

  template <class T> T get(const char * key) const { return fields.at(key).get<T>(); }
  /// An init field as text: true -> "true", false -> "false", strings as they are ("gaussian", ...).
  std::string init_setting(const char * key) const;

  /// Model-level tensors an adapter shares across its layers (VeRA's projections), created by the
  /// method's `shared` hook before injection; not part of the JSON. Keys are checkpoint names below
  /// "base_model." (e.g. "vera_A").
  std::map<std::string, at::Tensor> shared;
  bool shared_persistent = true;  // saved in adapter_model.safetensors
};

}  // namespace peft
