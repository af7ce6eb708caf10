// Training and generation through the compiled model: gradients and losses equal eager/PEFT's, an
// optimizer step is seen without recompiling, greedy tokens are identical, decode never recompiles.
#include <algorithm>
#include <fstream>

#include "peft/compile/compile.h"
#include "peft/generate/generate.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "../tuners/golden-cases.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

TEST(CompiledTrain, GoldenAdamW) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("train_lora_adamw") + "/adapter_init",
                                      "default", true);
  m->train();
  auto c = compile(*m);
  TrainOptions o = golden_train_options();
  Trainer t([&](const ForwardInput & in) { return c.forward(in); }, m->trainable_parameters(), o);
  auto want = golden_expected("train_lora_adamw");
  at::Tensor ids = golden_ids("train_lora_adamw");
  for (int64_t s = 0; s < 8; ++s) {
    double w = want.at("losses")[s].item<double>();
    EXPECT_NEAR(t.step(ids).loss, w, 1e-4 + 1e-3 * std::abs(w)) << "step " << s + 1;
  }
  EXPECT_EQ(c.stats().compiles, 1u) << c.explain();  // parameter updates are read live
  m->train(false);
  at::NoGradGuard g;
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_final"));
}

TEST(CompiledTrain, GradientsEqualEager) {
  // DoRA, and BOFT with 3 butterfly factors (gradients through the chained, permuted rotations)
  for (const std::string name : {"dora", "boft_butterfly3"}) {
    SCOPED_TRACE(name);
    auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case(name) + "/adapter", "default", true);
    auto c = compile(*m);
    at::Tensor ids = golden_ids(name);
    causal_lm_loss(m->forward({ids}), ids).backward();
    std::vector<at::Tensor> eager;
    for (auto & p : m->trainable_parameters()) {
      ASSERT_TRUE(p.grad().defined());
      EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0);
      eager.push_back(p.grad().clone());
      p.grad().zero_();
    }
    causal_lm_loss(c.forward({ids}), ids).backward();
    auto params = m->trainable_parameters();
    ASSERT_EQ(params.size(), eager.size());
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(all_close(params[i].grad(), eager[i], 1e-6, 1e-4)) << i;
  }
}

TEST(CompiledTrain, CliGolden) {
  const std::string c = golden_case("train_lora_adamw");
  const std::string dir = temp_dir("ctrain");
  std::string out;
  ASSERT_EQ(run_cli("train --compile --model " + golden_model("tiny-llama") + " --adapter-init " + c +
                        "/adapter_init --data " + c + "/input_ids.json --batch-size 3 --steps 8 --optimizer adamw"
                        " --lr 1e-2 --weight-decay 0.01 --no-shuffle --log-file " + dir + "/log.jsonl --out " + dir + "/a",
                    &out),
            0)
      << out;
  auto want = golden_expected("train_lora_adamw");
  std::ifstream log(dir + "/log.jsonl");
  int64_t n = 0;
  for (std::string line; std::getline(log, line); ++n) {
    double w = want.at("losses")[n].item<double>();
    EXPECT_NEAR(nlohmann::json::parse(line)["loss"].get<double>(), w, 1e-4 + 1e-3 * std::abs(w));
  }
  EXPECT_EQ(n, 8);
}

class CompiledGenerate : public ::testing::TestWithParam<std::string> {};

TEST_P(CompiledGenerate, GreedyTokensIdenticalAndDecodeNeverRecompiles) {
  auto m = std::make_shared<PeftModel>(load_model(golden_model(GetParam())));
  if (GetParam() == "tiny-llama") m->load_adapter(golden_case("lora") + "/adapter", "default");
  auto c = compile(*m);
  GenerationConfig g;
  g.max_new_tokens = 20;
  std::vector<std::vector<int64_t>> prompts = {{5, 17, 33}, {60, 3, 9, 10, 11}};
  const auto & cfg = m->base_model().config();
  auto eager = generate([&](const ForwardInput & in) { return m->forward(in); }, cfg, m->base_model().options(), prompts, g);
  auto compiled = generate([&](const ForwardInput & in) { return c.forward(in); }, cfg, m->base_model().options(), prompts, g);
  EXPECT_EQ(eager, compiled);
  EXPECT_EQ(c.stats().compiles, 2u) << c.explain();  // one prefill graph, one decode graph for all 19 steps
  EXPECT_EQ(c.stats().cache_hits, 18u);
}

// Qwen3 (q/k norms), Mistral (a window of 4 slots over the 25-slot cache) and yarn (cos/sin scaled) too
INSTANTIATE_TEST_SUITE_P(Models, CompiledGenerate,
                         ::testing::Values("tiny-llama", "tiny-opt", "tiny-qwen3", "tiny-mistral", "tiny-rope-llama3"),
                         [](const auto & i) { std::string s = i.param; std::replace(s.begin(), s.end(), '-', '_'); return s; });

TEST(CompiledGenerate, CliMatchesEager) {
  std::string a, b;
  const std::string cmd = "generate --byte-tokenizer --model " + golden_model("tiny-llama") + " --adapter " + golden_case("dora") +
                          "/adapter --prompt Hello --max-new-tokens 12 --print-ids";
  ASSERT_EQ(run_cli(cmd, &a), 0) << a;
  ASSERT_EQ(run_cli(cmd + " --compile", &b), 0) << b;
  EXPECT_EQ(a, b);
}

}  // namespace
