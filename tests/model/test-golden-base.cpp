// The plain models reproduce upstream transformers' logits (the golden cases' logits_disabled).
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/model/causal-lm.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

struct BaseCase {
  const char * model;
  const char * golden;
};

class GoldenBase : public ::testing::TestWithParam<BaseCase> {};

TEST_P(GoldenBase, LogitsMatchTransformers) {
  auto model = load_model(golden_model(GetParam().model));
  at::NoGradGuard g;
  ForwardInput in;
  in.input_ids = golden_ids(GetParam().golden);
  EXPECT_CLOSE(model->forward(in), golden_expected(GetParam().golden).at("logits_disabled"));
}

TEST_P(GoldenBase, CliForwardMatches) {
  std::string out = temp_dir("fwd") + "/logits.safetensors";
  std::string log;
  ASSERT_EQ(run_cli("forward --model " + golden_model(GetParam().model) + " --input-ids " +
                        golden_case(GetParam().golden) + "/input_ids.json --out " + out,
                    &log),
            0)
      << log;
  EXPECT_CLOSE(safetensors_load(out).at("logits"), golden_expected(GetParam().golden).at("logits_disabled"));
}

TEST_P(GoldenBase, LeftPaddingDoesNotChangeRealTokens) {
  // a padded row (two pad slots on the left, masked) must give the same logits as the unpadded row
  auto model = load_model(golden_model(GetParam().model));
  at::NoGradGuard g;
  at::Tensor ids = golden_ids(GetParam().golden);
  ForwardInput plain;
  plain.input_ids = ids;
  at::Tensor want = model->forward(plain);
  ForwardInput padded;
  padded.input_ids = at::cat({at::zeros({ids.size(0), 2}, at::kLong), ids}, 1);
  padded.attention_mask = at::cat({at::zeros({ids.size(0), 2}, at::kLong), at::ones_like(ids)}, 1);
  at::Tensor got = model->forward(padded).narrow(1, 2, ids.size(1));
  EXPECT_TRUE(all_close(got, want, 1e-5, 1e-4));
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenBase,
                         ::testing::Values(BaseCase{"tiny-llama", "lora"}, BaseCase{"tiny-opt", "ia3_opt"}),
                         [](const auto & i) { return std::string(i.param.golden); });

TEST(ModelLoad, OutOfRangeTokenIsAnError) {
  auto model = load_model(golden_model("tiny-llama"));
  ForwardInput in;
  in.input_ids = at::full({1, 3}, 96, at::kLong);
  EXPECT_THROW(model->forward(in), peft::Error);
}

TEST(ModelLoad, MissingKeyIsNamed) {
  std::string dir = temp_dir("missing");
  auto tensors = safetensors_load(golden_model("tiny-llama") + "/model.safetensors");
  tensors.erase("model.norm.weight");
  safetensors_save(dir + "/model.safetensors", tensors);
  std::system(("cp " + golden_model("tiny-llama") + "/config.json " + dir).c_str());
  try {
    load_model(dir);
    FAIL() << "expected an error";
  } catch (const peft::Error & e) {
    EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos) << e.what();
  }
}

TEST(ModelLoad, ShardedCheckpointLoads) {
  std::string dir = temp_dir("sharded");
  auto tensors = safetensors_load(golden_model("tiny-llama") + "/model.safetensors");
  std::map<std::string, at::Tensor> a, b;
  nlohmann::json wm;
  int i = 0;
  for (auto & kv : tensors) {
    bool first = (i++ % 2) == 0;
    (first ? a : b)[kv.first] = kv.second;
    wm[kv.first] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  safetensors_save(dir + "/model-00001-of-00002.safetensors", a);
  safetensors_save(dir + "/model-00002-of-00002.safetensors", b);
  nlohmann::json idx = {{"metadata", nlohmann::json::object()}, {"weight_map", wm}};
  std::FILE * f = std::fopen((dir + "/model.safetensors.index.json").c_str(), "w");
  std::fputs(idx.dump().c_str(), f);
  std::fclose(f);
  std::system(("cp " + golden_model("tiny-llama") + "/config.json " + dir).c_str());
  auto model = load_model(dir);
  at::NoGradGuard g;
  ForwardInput in;
  in.input_ids = golden_ids("lora");
  EXPECT_CLOSE(model->forward(in), golden_expected("lora").at("logits_disabled"));
}

TEST(ModelLoad, Bfloat16LoadRunsClose) {
  auto model = load_model(golden_model("tiny-llama"), at::kBFloat16);
  at::NoGradGuard g;
  ForwardInput in;
  in.input_ids = golden_ids("lora");
  at::Tensor got = model->forward(in).to(at::kFloat);
  EXPECT_TRUE(all_close(got, golden_expected("lora").at("logits_disabled"), 5e-2, 5e-2));
}

}  // namespace
