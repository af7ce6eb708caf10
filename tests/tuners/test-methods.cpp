// Method-specific behaviour beyond the golden matrix: quirks replicated from PEFT, hyperparameter
// validation, deterministic VeRA projections.
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/compile/compile.h"
#include "peft/peft-model.h"
#include "peft/tuners/lycoris.h"
#include "peft/tuners/vera.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

AdapterConfig cfg(const std::string & type, nlohmann::json j) {
  j["peft_type"] = type;
  return AdapterConfig::from_json(j, "config");
}

TEST(VeRA, ProjectionsFromTheSeedEqualPeftsSavedOnes) {
  // PEFT draws them with torch's CPU generator; LibTorch's is the same algorithm, so they match exactly
  auto saved = safetensors_load(golden_case("vera") + "/adapter/adapter_model.safetensors");
  auto AB = vera_projections(8, 32, 32, 0);
  EXPECT_TRUE(at::equal(AB.first, saved.at("base_model.vera_A")));
  EXPECT_TRUE(at::equal(AB.second, saved.at("base_model.vera_B")));
}

TEST(VeRA, UnsavedProjectionsAreRegenerated) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("vera") + "/adapter");
  std::string dir = temp_dir("vera");
  m->save_pretrained(dir);
  auto j = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  j["save_projection"] = false;
  write_file_atomic(dir + "/adapter_config.json", j.dump());
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  t.erase("base_model.vera_A");
  t.erase("base_model.vera_B");
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto back = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir);
  at::NoGradGuard g;
  EXPECT_CLOSE(back->forward({golden_ids("vera")}), golden_expected("vera").at("logits"));
  EXPECT_EQ(back->adapter_state_dict("default").count("base_model.vera_A"), 0u);
}

TEST(LoKr, FactorizationAsPeft) {
  using P = std::pair<int64_t, int64_t>;
  EXPECT_EQ(lokr_factorization(768), P(24, 32));
  EXPECT_EQ(lokr_factorization(1024), P(32, 32));
  EXPECT_EQ(lokr_factorization(4096), P(64, 64));
  EXPECT_EQ(lokr_factorization(11008), P(86, 128));
  EXPECT_EQ(lokr_factorization(127), P(1, 127));
  EXPECT_EQ(lokr_factorization(768, 4), P(4, 192));
  EXPECT_EQ(lokr_factorization(32), P(4, 8));
}

TEST(Methods, NewAdaptersAreNoOpsWithDefaultInit) {
  at::Tensor ids = golden_ids("lora");
  auto want = golden_expected("lora").at("logits_disabled");
  const std::vector<std::pair<std::string, nlohmann::json>> configs = {
      {"IA3", {{"target_modules", {"k_proj", "down_proj"}}, {"feedforward_modules", {"down_proj"}}}},
      {"LOHA", {{"target_modules", {"q_proj", "v_proj"}}}},
      {"LOKR", {{"target_modules", {"q_proj", "v_proj"}}}},
      {"OFT", {{"target_modules", {"q_proj"}}, {"oft_block_size", 4}}},
      {"BOFT", {{"target_modules", {"q_proj"}}}},
      {"VERA", {{"target_modules", {"q_proj", "v_proj"}}, {"r", 4}}},
      {"LN_TUNING", nlohmann::json::object()},
      {"ADALORA", {{"total_step", 10}, {"init_r", 4}}}};
  for (const auto & c : configs) {
    PeftModel m(load_model(golden_model("tiny-llama")), cfg(c.first, c.second));
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(m.forward({ids}), want, 1e-5, 1e-5)) << c.first;
    EXPECT_FALSE(m.trainable_parameters().empty()) << c.first;
  }
}

TEST(Methods, InvalidHyperparametersNameTheField) {
  EXPECT_NE(error_of([] { cfg("LOHA", {{"r", 0}}); }).find("'r'"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("LOKR", {{"module_dropout", 1.5}}); }).find("module_dropout"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("OFT", {{"r", 4}, {"oft_block_size", 4}}); }).find("exactly one"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("BOFT", {{"boft_n_butterfly_factor", 0}}); }).find("boft_n_butterfly_factor"),
            std::string::npos);
  // butterfly factors that do not fit a layer (q_proj: 32 inputs; 5 factors of blocks of 4 need 64)
  EXPECT_NE(error_of([] {
              PeftModel m(load_model(golden_model("tiny-llama")),
                          cfg("BOFT", {{"target_modules", {"q_proj"}}, {"boft_n_butterfly_factor", 5}}));
            }).find("boft_n_butterfly_factor 5"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              PeftModel m(load_model(golden_model("tiny-llama")),
                          cfg("BOFT", {{"target_modules", {"q_proj"}}, {"boft_block_size", 0}, {"boft_block_num", 4},
                                       {"boft_n_butterfly_factor", 4}}));
            }).find("boft_block_num 4"),
            std::string::npos);
  EXPECT_NE(error_of([] { cfg("ADALORA", {{"init_r", 4}}); }).find("total_step"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("ADALORA", {{"total_step", 10}, {"tinit", 10}}); }).find("tinit"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("VERA", {{"vera_dropout", -0.5}}); }).find("vera_dropout"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("IA3", {{"target_modules", {"k_proj"}}, {"feedforward_modules", {"down_proj"}}}); })
                .find("down_proj"),
            std::string::npos);
}

TEST(Methods, LNTuningAllowsOneActiveAdapter) {
  auto m = std::make_shared<PeftModel>(load_model(golden_model("tiny-opt")));
  m->load_adapter(golden_case("ln_tuning") + "/adapter", "a");
  m->load_adapter(golden_case("ln_tuning") + "/adapter", "b");
  m->set_adapter(std::vector<std::string>{"a", "b"});
  EXPECT_THROW(m->forward({golden_ids("ln_tuning")}), peft::Error);
  m->set_adapter("b");
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({golden_ids("ln_tuning")}), golden_expected("ln_tuning").at("logits"));
}

TEST(Methods, IA3SeveralActiveMultiply) {
  auto m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
  m->load_adapter(golden_case("ia3") + "/adapter", "a");
  m->load_adapter(golden_case("ia3") + "/adapter", "b");
  m->set_adapter(std::vector<std::string>{"a", "b"});
  at::NoGradGuard g;
  at::Tensor both = m->forward({golden_ids("ia3")});
  m->merge_adapter();
  EXPECT_TRUE(all_close(m->forward({golden_ids("ia3")}), both, 1e-5, 1e-4));
  EXPECT_FALSE(all_close(both, golden_expected("ia3").at("logits"), 1e-4, 1e-4));  // l * l, not l
}


TEST(Methods, TrainableTokensInAMixedBatchEqualEachRowAlone) {
  // LoRA with trainable tokens on the tied OPT model: rows of the adapter and of the base in one batch
  // (PEFT's adapter_names), eager and compiled, equal to the adapter's and the base's own logits
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-opt")), golden_case("lora_tokens_tied") + "/adapter");
  at::NoGradGuard g;
  const at::Tensor ids = golden_ids("lora_tokens_tied");
  const at::Tensor on = m->forward({ids});
  at::Tensor off;
  {
    auto d = m->disable_adapter();
    off = m->forward({ids});
  }
  ForwardInput in;
  in.input_ids = ids;
  in.adapter_names = {"default", "__base__", "default"};
  auto c = compile(*m);
  for (const at::Tensor & got : {m->forward(in), c.forward(in)}) {
    EXPECT_TRUE(all_close(got[0], on[0], 1e-5, 1e-5));
    EXPECT_TRUE(all_close(got[1], off[1], 1e-5, 1e-5));
    EXPECT_TRUE(all_close(got[2], on[2], 1e-5, 1e-5));
  }
  EXPECT_GT((on[1] - off[1]).abs().max().item<double>(), 1e-2);  // the rows differ: the routing is seen
}


TEST(Methods, TrainableTokensAdaptersAreDeletedWhole) {
  // LoRA + trainable_token_indices on the tied OPT model: deleting the adapter leaves no tensor of it
  // (the token_adapter layout's dict too), and the adapter loads again
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-opt")), golden_case("lora_tokens_tied") + "/adapter");
  m->load_adapter(golden_case("lora_tokens_tied") + "/adapter", "other");
  m->delete_adapter("default");
  for (const auto & p : m->model_ptr()->named_parameters(true)) EXPECT_EQ(p.key().find(".default"), std::string::npos) << p.key();
  m->load_adapter(golden_case("lora_tokens_tied") + "/adapter", "default");
  m->set_adapter("default");
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({golden_ids("lora_tokens_tied")}), golden_expected("lora_tokens_tied").at("logits"));
}

}  // namespace
