// Which modules an adapter config targets, exactly as PEFT decides it (§1.3): list entries match the
// full name or a dotted suffix, a string is a full-match regex, "all-linear" is every Linear but the
// output layer; exclude_modules, modules_to_save and layers_to_transform/layers_pattern filter.
#pragma once
#include <string>
#include <vector>

#include "peft/tuners/config.h"

namespace peft {

/// Does `cfg` target the module at `path`? `is_linear` / `is_output_layer` feed "all-linear".
/// `default_targets` stands in for target_modules when the config has none.
bool is_target(const AdapterConfig & cfg, const std::string & path, bool is_linear, bool is_output_layer,
               const std::vector<std::string> & default_targets);

/// Is `path` inside a module listed in modules_to_save (the module itself or below it)?
bool in_modules_to_save(const std::vector<std::string> & modules_to_save, const std::string & path);

/// rank_pattern / alpha_pattern: the value of the first key k with (.*\.)?(k)$ matching `path`.
bool pattern_value(const nlohmann::json & pattern, const std::string & path, double * out);

/// r and alpha of module `path` (config fields "r" and `alpha_key`, rank_pattern / alpha_pattern applied).
std::pair<int64_t, double> rank_and_alpha(const AdapterConfig & cfg, const std::string & path, const char * alpha_key);

/// The layer index of `path` per PEFT's layers_to_transform rule, or -1.
int64_t layer_index(const std::string & path, const std::vector<std::string> & layers_pattern);

}  // namespace peft
