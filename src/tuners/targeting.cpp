#include "peft/tuners/targeting.h"

#include <algorithm>

#include "peft/error.h"
#include "peft/util/regex.h"

namespace peft {

namespace {

enum class ListMatch { none, exact, suffix };

// PEFT: an entry equal to the full name, or a dotted suffix of it
ListMatch list_match(const std::vector<std::string> & list, const std::string & path) {
  if (std::find(list.begin(), list.end(), path) != list.end()) return ListMatch::exact;
  for (const auto & e : list) {
    if (path.size() > e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0 &&
        path[path.size() - e.size() - 1] == '.') {
      return ListMatch::suffix;
    }
  }
  return ListMatch::none;
}

}  // namespace

int64_t layer_index(const std::string & path, const std::vector<std::string> & layers_pattern) {
  std::string idx;
  // PEFT: re.match(r".*?\.[^.]*\.(\d+)\.", key), or r".*?\.{pattern}\.(\d+)\." for each layers_pattern
  if (layers_pattern.empty()) {
    return Regex(R"(^.*?\.[^.]*\.(\d+)\.)").search_group(path, 1, &idx) ? std::stoll(idx) : -1;
  }
  for (const auto & p : layers_pattern) {
    if (Regex("^.*?\\." + p + "\\.(\\d+)\\.").search_group(path, 1, &idx)) return std::stoll(idx);
  }
  return -1;
}

namespace {

bool pattern_value(const std::vector<std::pair<std::string, double>> & pattern, const std::string & path, double * out) {
  for (const auto & kv : pattern) {
    if (Regex("(.*\\.)?(" + kv.first + ")").full_match(path)) {
      *out = kv.second;
      return true;
    }
  }
  return false;
}

std::vector<std::pair<std::string, double>> read_pattern(const AdapterConfig & cfg, const char * key,
                                                          const std::string & src) {
  std::vector<std::pair<std::string, double>> out;
  const auto & p = cfg.field(key);
  if (p.is_null()) return out;
  PEFT_CHECK(p.is_object(), src, ": field '", key, "' must be an object");
  for (auto it = p.begin(); it != p.end(); ++it) {
    PEFT_CHECK(it.value().is_number(), src, ": ", key, "['", it.key(), "'] must be a number");
    out.emplace_back(it.key(), it.value().get<double>());
  }
  return out;
}

}  // namespace

RankPatterns RankPatterns::parse(const AdapterConfig & cfg, const std::string & src) {
  RankPatterns p;
  p.rank = read_pattern(cfg, "rank_pattern", src);
  p.alpha = read_pattern(cfg, "alpha_pattern", src);
  for (const auto & kv : p.rank) PEFT_CHECK(kv.second > 0, src, ": rank_pattern['", kv.first, "'] must be > 0");
  return p;
}

std::pair<int64_t, double> RankPatterns::for_module(const std::string & path, int64_t r, double a) const {
  double rr = static_cast<double>(r);
  pattern_value(rank, path, &rr);
  pattern_value(this->alpha, path, &a);
  return {static_cast<int64_t>(rr), a};
}

ModulePattern ModulePattern::parse(const AdapterConfig & cfg, const char * key, const std::string & source) {
  return {read_pattern(cfg, key, source)};
}

double ModulePattern::for_module(const std::string & path, double fallback) const {
  pattern_value(values, path, &fallback);
  return fallback;
}

bool in_modules_to_save(const std::vector<std::string> & modules_to_save, const std::string & path) {
  for (const auto & m : modules_to_save) {
    if (Regex("(^|.*\\.)" + m + "($|\\..*)").full_match(path)) return true;
  }
  return false;
}

namespace {

// PEFT's target_parameters: "<module>.weight" equal to a target or ending with "." + it (Linear weights only)
bool is_parameter_target(const AdapterConfig & cfg, const std::string & path, bool is_linear) {
  if (!is_linear) return false;
  const std::string key = path + ".weight";
  for (const auto & t : cfg.target_parameters) {
    if (key == t || (key.size() > t.size() && key.compare(key.size() - t.size() - 1, t.size() + 1, "." + t) == 0)) return true;
  }
  return false;
}

// target_modules (or the defaults standing in for it), after exclude_modules and modules_to_save
bool is_module_target(const AdapterConfig & cfg, const std::string & path, bool is_linear, bool is_output_layer,
                      const std::vector<std::string> & default_targets) {
  if (cfg.exclude_regex && Regex(*cfg.exclude_regex).full_match(path)) return false;
  if (list_match(cfg.exclude_list, path) != ListMatch::none) return false;
  if (in_modules_to_save(cfg.modules_to_save, path)) return false;
  // no layer filter with a string: PEFT's "all-linear" becomes the layers' full names, which it never filters, and a
  // regex is matched as it is (the methods whose configs take layers_to_transform beside them; config.cpp)
  if (cfg.all_linear) return is_linear && !is_output_layer;
  if (cfg.target_regex) return Regex(*cfg.target_regex).full_match(path);
  const ListMatch m = list_match(cfg.target_list.empty() ? default_targets : cfg.target_list, path);
  // PEFT filters by layer only the suffix matches: a full name is taken as it is
  if (m != ListMatch::suffix || cfg.layers_to_transform.empty()) return m != ListMatch::none;
  int64_t idx = layer_index(path, cfg.layers_pattern);
  return idx >= 0 && std::find(cfg.layers_to_transform.begin(), cfg.layers_to_transform.end(), idx) !=
                         cfg.layers_to_transform.end();
}

}  // namespace

bool is_target(const AdapterConfig & cfg, const std::string & path, bool is_linear, bool is_output_layer,
               const std::vector<std::string> & default_targets) {
  if (cfg.target_parameters.empty()) return is_module_target(cfg, path, is_linear, is_output_layer, default_targets);
  // with target_parameters, only target_modules given explicitly count (no defaults); a module matched both
  // ways would hold two LoRAs under one file key (PEFT nests them): refused
  const bool by_param = is_parameter_target(cfg, path, is_linear);
  const bool by_module = (cfg.all_linear || cfg.target_regex || !cfg.target_list.empty()) &&
                         is_module_target(cfg, path, is_linear, is_output_layer, {});
  PEFT_CHECK(!(by_param && by_module), "module '", path, "' is matched by target_modules and by target_parameters");
  return by_param || by_module;
}

}  // namespace peft
