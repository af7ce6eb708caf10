#include "peft/model/config.h"

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/model/architectures.h"

namespace peft {

JsonFields ConfigReader::fields() const {
  return JsonFields(j_, [this](const char * k, const std::string & m) { fail(str(src_, ": field '", k, "' ", m)); });
}

bool ConfigReader::has(const char * k) const { return fields().has(k); }

int64_t ConfigReader::integer(const char * k, int64_t def, bool required, int64_t min_value) const {
  if (!has(k)) {
    PEFT_CHECK(!required, src_, ": missing required field '", k, "'");
    return def;
  }
  return fields().integer(k, min_value);
}

double ConfigReader::number(const char * k, double def) const {
  if (!has(k)) return def;
  const JsonFields f = fields();
  const double v = f.number(k);
  if (!(v > 0)) f.fail(k, str("must be positive, got ", v));
  return v;
}

bool ConfigReader::boolean(const char * k, bool def) const { return has(k) ? fields().boolean(k) : def; }

std::string ConfigReader::string(const char * k, const std::string & def) const {
  return has(k) ? fields().string(k) : def;
}

ModelConfig ModelConfig::from_json(const nlohmann::json & given, const std::string & src) {
  PEFT_CHECK(given.is_object(), src, ": not a JSON object");
  nlohmann::json j = given;
  {
    const Architecture * a = j.contains("model_type") && j["model_type"].is_string()
                                 ? find_architecture(j["model_type"].get<std::string>())
                                 : nullptr;
    if (a && a->rename) a->rename(j);
  }
  ConfigReader r(j, src);
  ModelConfig c;
  c.model_type = r.string("model_type", "");
  PEFT_CHECK(!c.model_type.empty(), src, ": missing required field 'model_type'");
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    c.architecture = j["architectures"][0].get<std::string>();
  }
  c.vocab_size = r.integer("vocab_size", 0, true);
  c.hidden_size = r.integer("hidden_size", 0, true);
  c.num_layers = r.integer("num_hidden_layers", 0, true);
  c.num_heads = r.integer("num_attention_heads", 0, true);
  c.max_position_embeddings = r.integer("max_position_embeddings", 2048, false);
  c.torch_dtype = r.string("torch_dtype", "float32");
  // special token ids: a token of the vocabulary, or none (null, absent, or -1 as some checkpoints write
  // it); one outside the vocabulary would fail every request that pads or stops on it
  auto token_id = [&](const char * field, int64_t v) {
    PEFT_CHECK(v == -1 || (v >= 0 && v < c.vocab_size), src, ": field '", field, "' is ", v,
               ", outside the vocabulary [0, ", c.vocab_size, ") (vocab_size); use null for none");
    return v;
  };
  c.bos_token_id = token_id("bos_token_id", r.integer("bos_token_id", -1, false, -1));
  c.pad_token_id = token_id("pad_token_id", r.integer("pad_token_id", -1, false, -1));
  if (r.has("eos_token_id")) {
    const auto & e = j["eos_token_id"];
    if (e.is_array()) {
      for (const auto & x : e) {
        PEFT_CHECK(x.is_number_integer(), src, ": field 'eos_token_id' must hold integers");
        if (token_id("eos_token_id", x.get<int64_t>()) >= 0) c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else if (token_id("eos_token_id", r.integer("eos_token_id", -1, false, -1)) >= 0) {
      c.eos_token_ids.push_back(e.get<int64_t>());
    }
  }
  PEFT_CHECK(c.hidden_size % c.num_heads == 0, src, ": hidden_size ", c.hidden_size,
             " is not divisible by num_attention_heads ", c.num_heads);

  const Architecture * arch = find_architecture(c.model_type);
  if (!arch) {
    std::string known;
    for (const auto & a : architectures()) known += (known.empty() ? "" : ", ") + a.model_type;
    fail(str(src, ": model_type '", c.model_type, "' is not supported (", known, ")"));
  }
  arch->read_config(r, c);
  return c;
}

ModelConfig ModelConfig::load(const std::string & dir) {
  const std::string path = dir + "/config.json";
  return from_json(read_json_file(path), path);
}

std::string ModelConfig::arch_name() const {
  if (!architecture.empty()) return architecture;
  const Architecture * a = find_architecture(model_type);
  return a ? a->class_name : "";
}

}  // namespace peft
