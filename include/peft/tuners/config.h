// AdapterConfig: an adapter_config.json parsed once: the method-agnostic part (target selection, bias
// mode, modules_to_save), the method's own fields as a typed options struct (LoraOptions, ...) that the
// method parsed with named errors, and the complete JSON with PEFT's field names, kept only so that files
// round-trip with PEFT. Code reads options, never the JSON; a change goes through set_field(), which
// parses again.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <typeinfo>
#include <optional>
#include <string>
#include <vector>

#include "peft/util/json-fields.h"

namespace peft {

struct AdapterConfig;

/// A method's typed options (LoraOptions, IA3Options, ...): what its parse() made of the JSON.
struct MethodOptions {
  virtual ~MethodOptions() = default;
};

/// What parsing a config needs to know of its method (the registry supplies it; see registry.h).
struct MethodSchema {
  std::string peft_type;  // "LORA"
  std::string prefix;     // "lora_": marks this method's tensors in parameter names
  /// PEFT's default config fields for this method (merged under what a file or the user gives).
  nlohmann::json (*defaults)();
  /// Check the method's fields and read them into its options; errors name `source` and the field.
  std::shared_ptr<const MethodOptions> (*parse)(const AdapterConfig & cfg, const std::string & source);
  /// The bias mode that trains only the adapted layers' biases ("" = prefix + "only"; VeRA: "vera_only").
  std::string bias_only = "";
  /// Fields shared by other methods that this method's PEFT config does not have (absent unless given).
  std::vector<std::string> absent_fields = {};
  /// PEFT's config refuses layers_to_transform / layers_pattern beside a string target_modules (a regex or
  /// "all-linear"): LoRA, AdaLoRA, HRA, MiSS, FourierFT. The other methods' configs accept them, and the
  /// filter then changes nothing: a regex is matched as it is, and "all-linear" becomes the layers' full
  /// names, which PEFT never filters by layer.
  bool string_targets_refuse_layer_filter = false;
  /// PEFT's config refuses layers_pattern without layers_to_transform (every method but MiSS and RandLoRA,
  /// whose configs lack the check; the pattern alone then filters nothing).
  bool layers_pattern_needs_layers = true;
  std::string bias_only_name() const { return bias_only.empty() ? prefix + "only" : bias_only; }
};

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
  /// LoRA's target_parameters (PEFT's ParamWrapper): parameters by name ("q_proj.weight": exact or a dotted
  /// suffix of "<module>.<parameter>"); here the weights of Linear layers, adapted as LoRA on the layer.
  std::vector<std::string> target_parameters;
  /// trainable_token_indices (LoRA): module suffix -> rows of its weight trained as trainable tokens
  /// ("" = the input embedding: the list form).
  std::vector<std::pair<std::string, std::vector<int64_t>>> trainable_tokens;
  std::string bias = "none";                 // none | all | <prefix>only
  bool inference_mode = false;

  const MethodSchema * method = nullptr;          // the method this config is for
  std::shared_ptr<const MethodOptions> options;  // its typed options

  /// The typed options, as the method's struct (an error if the config is for another method).
  template <class T> const T & opts() const {
    auto p = dynamic_cast<const T *>(options.get());
    if (!p) throw_wrong_options(typeid(T).name());
    return *p;
  }

  /// Parse adapter_config.json content; `source` is named in errors. Unknown peft_type is an error.
  /// (Defined with the registry, which knows the methods.)
  static AdapterConfig from_json(const nlohmann::json & j, const std::string & source);
  /// Parse for a known method: common fields, then the method's parse().
  static AdapterConfig parse(const nlohmann::json & j, const std::string & source, const MethodSchema & method);
  /// Change one field and parse again (errors name `source`); shared tensors are kept.
  void set_field(const std::string & key, const nlohmann::json & value, const std::string & source = "config");
  /// Read DIR/adapter_config.json.
  static AdapterConfig load(const std::string & dir);
  /// The JSON PEFT would write (sorted keys, inference_mode true).
  nlohmann::json to_json() const;

  /// A field's JSON (round-trips and messages only), null when absent.
  const nlohmann::json & field(const std::string & key) const;

  /// Model-level tensors an adapter shares across its layers (VeRA's projections), created by the
  /// method's `shared` hook before injection; not part of the JSON. Keys are checkpoint names below
  /// "base_model." (e.g. "vera_A").
  std::map<std::string, at::Tensor> shared;
  bool shared_persistent = true;  // saved in adapter_model.safetensors
  bool shared_trainable = false;  // trained with the adapter (VB-LoRA's vector bank; VeRA's are frozen)

 private:
  [[noreturn]] void throw_wrong_options(const char * type) const;
};

/// Typed reads of a config's method fields for a method's parse(): a missing or mistyped field is an
/// error naming the file and the field.
class FieldReader {
 public:
  FieldReader(const AdapterConfig & cfg, const std::string & source) : f_(cfg.fields), src_(source) {}
  const nlohmann::json & at(const char * k) const;  // present (null allowed)
  int64_t integer(const char * k, int64_t min_value) const;
  double number(const char * k) const;
  double fraction(const char * k) const;  // a number in [0, 1)
  bool boolean(const char * k) const;
  std::string string(const char * k) const;
  /// An init field as text: true -> "true", false -> "false", strings as they are; refused unless in `allowed`.
  std::string init(const char * k, const std::vector<std::string> & allowed) const;
  /// A field that changes PEFT's output and is not implemented here: an error unless it is null (or
  /// equal to `neutral`), naming the field and what it is.
  void unsupported(const char * k, const char * what, const nlohmann::json & neutral = nullptr) const;
  const std::string & source() const { return src_; }

 private:
  JsonFields fields() const;  // errors: "<source>: field 'k' must be ..."
  const nlohmann::json & f_;
  const std::string & src_;
};

}  // namespace peft
