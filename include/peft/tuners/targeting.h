// Which modules an adapter config targets, exactly as PEFT decides it (§1.3): list entries match the
// full name or a dotted suffix, a string is a full-match regex, "all-linear" is every Linear but the
// output layer; exclude_modules, modules_to_save and layers_to_transform/layers_pattern filter.
#pragma once
#include <string>
#include <vector>

#include "peft/tuners/config.h"

namespace peft {

/// Does `cfg` target the module at `path`? `is_linear` / `is_output_layer` feed "all-linear".
/// `default_targets` stands in for target_modules when the config has none (and no target_parameters).
/// LoRA's target_parameters add the Linear layers whose weight they name.
bool is_target(const AdapterConfig & cfg, const std::string & path, bool is_linear, bool is_output_layer,
               const std::vector<std::string> & default_targets);

/// Is `path` inside a module listed in modules_to_save (the module itself or below it)?
bool in_modules_to_save(const std::vector<std::string> & modules_to_save, const std::string & path);

/// A config's rank_pattern / alpha_pattern, parsed: per-module rank and alpha.
struct RankPatterns {
  std::vector<std::pair<std::string, double>> rank, alpha;  // key -> value
  /// Read "rank_pattern" and "alpha_pattern" (objects of numbers; null = none) of `cfg`.
  static RankPatterns parse(const AdapterConfig & cfg, const std::string & source);
  /// r and alpha of module `path`: the value of the first key k with (.*\.)?(k)$ matching, else the given ones.
  std::pair<int64_t, double> for_module(const std::string & path, int64_t r, double alpha) const;
};

/// A per-module override of one number (FourierFT's n_frequency_pattern): key -> value.
struct ModulePattern {
  std::vector<std::pair<std::string, double>> values;
  /// Read field `key` of `cfg` (an object of numbers; null = none).
  static ModulePattern parse(const AdapterConfig & cfg, const char * key, const std::string & source);
  /// The value of the first key k with (.*\.)?(k)$ matching `path` (PEFT's rule), else `fallback`.
  double for_module(const std::string & path, double fallback) const;
};

/// The layer index of `path` per PEFT's layers_to_transform rule, or -1.
int64_t layer_index(const std::string & path, const std::vector<std::string> & layers_pattern);

}  // namespace peft
