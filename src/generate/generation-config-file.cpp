#include "peft/generate/generation-config-file.h"

#include <sys/stat.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

GenerationDefaults read_generation_config(const std::string & model_dir, int64_t vocab_size) {
  GenerationDefaults d;
  const std::string path = model_dir + "/generation_config.json";
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return d;
  const nlohmann::json j = read_json_file(path);
  PEFT_CHECK(j.is_object(), path, ": must hold a JSON object");
  auto has = [&](const char * key) { return j.contains(key) && !j[key].is_null(); };
  auto bad = [&](const char * key, const std::string & what) {
    fail(str(path, ": field '", key, "' ", what, ", got ", j[key].dump()));
  };
  auto number = [&](const char * key) {
    if (!j[key].is_number()) bad(key, "must be a number");
    return j[key].get<double>();
  };
  auto integer = [&](const char * key) {
    if (!j[key].is_number_integer()) bad(key, "must be an integer");
    return j[key].get<int64_t>();
  };
  if (has("max_new_tokens")) {
    d.max_new_tokens = integer("max_new_tokens");
    if (*d.max_new_tokens < 0) bad("max_new_tokens", "must not be negative");
  }
  if (has("do_sample")) {
    if (!j["do_sample"].is_boolean()) bad("do_sample", "must be true or false");
    d.do_sample = j["do_sample"].get<bool>();
  }
  if (has("temperature")) {
    d.temperature = number("temperature");
    if (!(*d.temperature >= 0)) bad("temperature", "must not be negative");
  }
  if (has("top_k")) {
    d.top_k = integer("top_k");
    if (*d.top_k < 0) bad("top_k", "must not be negative");
  }
  if (has("top_p")) {
    d.top_p = number("top_p");
    if (!(*d.top_p > 0 && *d.top_p <= 1)) bad("top_p", "must be in (0, 1]");
  }
  if (has("min_p")) {
    d.min_p = number("min_p");
    if (!(*d.min_p >= 0 && *d.min_p <= 1)) bad("min_p", "must be in [0, 1]");
  }
  if (has("repetition_penalty")) {
    d.repetition_penalty = number("repetition_penalty");
    if (!(*d.repetition_penalty > 0)) bad("repetition_penalty", "must be greater than 0");
  }
  if (has("eos_token_id")) {
    const auto & e = j["eos_token_id"];
    auto one = [&](const nlohmann::json & x) {
      PEFT_CHECK(x.is_number_integer(), path, ": field 'eos_token_id' must be an integer or a list of integers");
      const int64_t id = x.get<int64_t>();
      PEFT_CHECK(id == -1 || (id >= 0 && id < vocab_size), path, ": field 'eos_token_id' holds ", id,
                 ", outside the vocabulary [0, ", vocab_size, ") (vocab_size in config.json); use null for none");
      if (id >= 0 && std::find(d.eos_token_ids.begin(), d.eos_token_ids.end(), id) == d.eos_token_ids.end()) {
        d.eos_token_ids.push_back(id);
      }
    };
    if (e.is_array()) {
      for (const auto & x : e) one(x);
    } else {
      one(e);
    }
  }
  return d;
}

}  // namespace peft
