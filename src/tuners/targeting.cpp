#include "peft/tuners/targeting.h"

#include <algorithm>

#include "peft/util/regex.h"

namespace peft {

namespace {

bool list_match(const std::vector<std::string> & list, const std::string & path) {
  for (const auto & e : list) {
    if (path == e) return true;
    if (path.size() > e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0 &&
        path[path.size() - e.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

}  // namespace

int64_t layer_index(const std::string & path, const std::vector<std::string> & layers_pattern) {
  std::string idx;
  if (layers_pattern.empty()) {
    if (Regex(R"(.*?\.(\d+)\.)").search_group(path, 1, &idx) || Regex(R"(^(\d+)\.)").search_group(path, 1, &idx)) {
      return std::stoll(idx);
    }
    return -1;
  }
  for (const auto & p : layers_pattern) {
    if (Regex("(?:^|\\.)" + p + "\\.(\\d+)\\.").search_group(path, 1, &idx)) return std::stoll(idx);
  }
  return -1;
}

bool pattern_value(const nlohmann::json & pattern, const std::string & path, double * out) {
  for (auto it = pattern.begin(); it != pattern.end(); ++it) {
    if (Regex("(.*\\.)?(" + it.key() + ")").full_match(path)) {
      *out = it.value().get<double>();
      return true;
    }
  }
  return false;
}

std::pair<int64_t, double> rank_and_alpha(const AdapterConfig & cfg, const std::string & path, const char * alpha_key) {
  const auto & f = cfg.fields;
  double r = f.at("r").get<double>(), alpha = f.at(alpha_key).get<double>();
  pattern_value(f.at("rank_pattern"), path, &r);
  pattern_value(f.at("alpha_pattern"), path, &alpha);
  return {static_cast<int64_t>(r), alpha};
}

bool in_modules_to_save(const std::vector<std::string> & modules_to_save, const std::string & path) {
  for (const auto & m : modules_to_save) {
    if (Regex("(^|.*\\.)" + m + "($|\\..*)").full_match(path)) return true;
  }
  return false;
}

bool is_target(const AdapterConfig & cfg, const std::string & path, bool is_linear, bool is_output_layer,
               const std::vector<std::string> & default_targets) {
  if (cfg.exclude_regex && Regex(*cfg.exclude_regex).full_match(path)) return false;
  if (list_match(cfg.exclude_list, path)) return false;
  if (in_modules_to_save(cfg.modules_to_save, path)) return false;
  bool hit = false;
  if (cfg.all_linear) {
    hit = is_linear && !is_output_layer;
  } else if (cfg.target_regex) {
    return Regex(*cfg.target_regex).full_match(path);
  } else {
    hit = list_match(cfg.target_list.empty() ? default_targets : cfg.target_list, path);
  }
  if (!hit || cfg.layers_to_transform.empty()) return hit;
  int64_t idx = layer_index(path, cfg.layers_pattern);
  return idx >= 0 && std::find(cfg.layers_to_transform.begin(), cfg.layers_to_transform.end(), idx) !=
                         cfg.layers_to_transform.end();
}

}  // namespace peft
