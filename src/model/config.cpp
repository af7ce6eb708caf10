#include "peft/model/config.h"

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

namespace {

struct Reader {
  const nlohmann::json & j;
  const std::string & src;

  bool has(const char * k) const { return j.contains(k) && !j[k].is_null(); }

  int64_t integer(const char * k, int64_t def, bool required, int64_t min_value = 1) const {
    if (!has(k)) {
      PEFT_CHECK(!required, src, ": missing required field '", k, "'");
      return def;
    }
    PEFT_CHECK(j[k].is_number_integer(), src, ": field '", k, "' must be an integer, got ", j[k].dump());
    int64_t v = j[k].get<int64_t>();
    PEFT_CHECK(v >= min_value, src, ": field '", k, "' must be >= ", min_value, ", got ", v);
    return v;
  }
  double number(const char * k, double def) const {
    if (!has(k)) return def;
    PEFT_CHECK(j[k].is_number(), src, ": field '", k, "' must be a number, got ", j[k].dump());
    double v = j[k].get<double>();
    PEFT_CHECK(v > 0, src, ": field '", k, "' must be positive, got ", v);
    return v;
  }
  bool boolean(const char * k, bool def) const {
    if (!has(k)) return def;
    PEFT_CHECK(j[k].is_boolean(), src, ": field '", k, "' must be true or false, got ", j[k].dump());
    return j[k].get<bool>();
  }
  std::string string(const char * k, const std::string & def) const {
    if (!has(k)) return def;
    PEFT_CHECK(j[k].is_string(), src, ": field '", k, "' must be a string, got ", j[k].dump());
    return j[k].get<std::string>();
  }
};

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json & j, const std::string & src) {
  PEFT_CHECK(j.is_object(), src, ": not a JSON object");
  Reader r{j, src};
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
  c.bos_token_id = r.integer("bos_token_id", -1, false, 0);
  c.pad_token_id = r.integer("pad_token_id", -1, false, 0);
  if (r.has("eos_token_id")) {
    const auto & e = j["eos_token_id"];
    if (e.is_array()) {
      for (const auto & x : e) {
        PEFT_CHECK(x.is_number_integer(), src, ": field 'eos_token_id' must hold integers");
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(r.integer("eos_token_id", -1, false, 0));
    }
  }
  PEFT_CHECK(c.hidden_size % c.num_heads == 0, src, ": hidden_size ", c.hidden_size,
             " is not divisible by num_attention_heads ", c.num_heads);

  if (c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2") {
    c.intermediate_size = r.integer("intermediate_size", 0, true);
    c.num_kv_heads = r.integer("num_key_value_heads", c.num_heads, false);
    c.head_dim = r.integer("head_dim", c.hidden_size / c.num_heads, false);
    c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
    c.rope_theta = r.number("rope_theta", 10000.0);
    c.hidden_act = r.string("hidden_act", "silu");
    PEFT_CHECK(c.hidden_act == "silu", src, ": hidden_act '", c.hidden_act, "' is not supported (only silu)");
    c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
    c.attention_bias = r.boolean("attention_bias", c.model_type == "qwen2");
    c.o_proj_bias = c.model_type == "qwen2" ? false : c.attention_bias;
    c.mlp_bias = r.boolean("mlp_bias", false);
    PEFT_CHECK(c.num_heads % c.num_kv_heads == 0, src, ": num_attention_heads ", c.num_heads,
               " is not a multiple of num_key_value_heads ", c.num_kv_heads);
    PEFT_CHECK(c.head_dim % 2 == 0, src, ": head_dim ", c.head_dim, " must be even for rotary embeddings");
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      fail(str(src, ": field 'rope_scaling' is not supported yet"));
    }
  } else if (c.model_type == "opt") {
    c.intermediate_size = r.integer("ffn_dim", 0, true);
    c.num_kv_heads = c.num_heads;
    c.head_dim = c.hidden_size / c.num_heads;
    c.word_embed_proj_dim = r.integer("word_embed_proj_dim", c.hidden_size, false);
    c.do_layer_norm_before = r.boolean("do_layer_norm_before", true);
    c.enable_bias = r.boolean("enable_bias", true);
    c.layer_norm_elementwise_affine = r.boolean("layer_norm_elementwise_affine", true);
    c.hidden_act = r.string("activation_function", "relu");
    PEFT_CHECK(c.hidden_act == "relu" || c.hidden_act == "gelu", src, ": activation_function '", c.hidden_act,
               "' is not supported (relu, gelu)");
    c.tie_word_embeddings = r.boolean("tie_word_embeddings", true);
  } else {
    fail(str(src, ": model_type '", c.model_type, "' is not supported (llama, mistral, qwen2, opt)"));
  }
  return c;
}

ModelConfig ModelConfig::load(const std::string & dir) {
  const std::string path = dir + "/config.json";
  return from_json(read_json_file(path), path);
}

std::string ModelConfig::arch_name() const {
  if (!architecture.empty()) return architecture;
  if (model_type == "opt") return "OPTForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  return "LlamaForCausalLM";
}

}  // namespace peft
