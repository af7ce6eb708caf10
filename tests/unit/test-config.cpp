#include "peft/error.h"
#include "peft/model/config.h"
#include "support.h"

using peft::ModelConfig;

namespace {

nlohmann::json llama() {
  return {{"model_type", "llama"},   {"vocab_size", 96},         {"hidden_size", 32},
          {"intermediate_size", 48}, {"num_hidden_layers", 2},   {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6}};
}

// the error parsing `j` gives ("" if none)
std::string error_of(const nlohmann::json & j) {
  return peft::test::error_of([&] { ModelConfig::from_json(j, "cfg.json"); });
}

TEST(Config, ValidLlamaParses) {
  auto c = ModelConfig::from_json(llama(), "cfg.json");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
}

TEST(Config, MissingFieldIsNamed) {
  auto j = llama();
  j.erase("hidden_size");
  EXPECT_NE(error_of(j).find("hidden_size"), std::string::npos);
  EXPECT_NE(error_of(j).find("cfg.json"), std::string::npos);
}

TEST(Config, InconsistentHeadsAreRejected) {
  auto j = llama();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(j).find("num_key_value_heads"), std::string::npos);
  j = llama();
  j["num_attention_heads"] = 5;
  EXPECT_NE(error_of(j).find("num_attention_heads"), std::string::npos);
}

TEST(Config, WrongTypeIsRejected) {
  auto j = llama();
  j["vocab_size"] = "many";
  EXPECT_NE(error_of(j).find("vocab_size"), std::string::npos);
  j = llama();
  j["vocab_size"] = -3;
  EXPECT_NE(error_of(j).find("vocab_size"), std::string::npos);
}

TEST(Config, UnknownModelType) {
  auto j = llama();
  j["model_type"] = "falcon";
  const std::string e = error_of(j);
  EXPECT_NE(e.find("'falcon' is not supported"), std::string::npos) << e;
  EXPECT_NE(e.find("gpt_neox"), std::string::npos) << e;  // the list of those that are
}

TEST(Config, Qwen2HasQkvBias) {
  auto j = llama();
  j["model_type"] = "qwen2";
  auto c = ModelConfig::from_json(j, "cfg.json");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
}

}  // namespace
