// Training through the C++ API reproduces upstream PEFT's 8-step AdamW run (train_lora_adamw), and
// gradients reach only the trainable tensors.
#include <algorithm>
#include <fstream>

#include "peft/compile/compile.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "golden-cases.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {


TEST(Train, GoldenAdamW) {
  auto base = load_model(golden_model("tiny-llama"));
  auto m = PeftModel::from_pretrained(base, golden_case("train_lora_adamw") + "/adapter_init", "default", true);
  m->train();
  Trainer t([&](const ForwardInput & in) { return m->forward(in); }, m->trainable_parameters(), golden_train_options());
  at::Tensor ids = golden_ids("train_lora_adamw");
  auto want = golden_expected("train_lora_adamw");
  for (int64_t s = 0; s < 8; ++s) {
    StepLog log = t.step(ids);
    EXPECT_NEAR(log.loss, want.at("losses")[s].item<double>(), 1e-4 + 1e-3 * std::abs(want.at("losses")[s].item<double>()))
        << "step " << s + 1;
  }
  m->train(false);
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({ids}), want.at("logits_final"));
}

// VB-LoRA: every layer's logits and the one vector bank they share (a buffer of each layer, listed once
// among the trainable tensors) follow upstream's 8 AdamW steps, eager and compiled
TEST(Train, VBLoRAGoldenAdamWEagerAndCompiled) {
  const std::string c = golden_case("train_vblora_adamw");
  auto want = golden_expected("train_vblora_adamw");
  at::Tensor ids = golden_ids("train_vblora_adamw");
  for (bool compiled : {false, true}) {
    SCOPED_TRACE(compiled ? "compiled" : "eager");
    auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), c + "/adapter_init", "default", true);
    m->train();
    const auto params = m->trainable_parameters();
    ASSERT_EQ(params.size(), 2u * 3u * 2u + 1u);  // logits A and B of 3 modules in 2 layers, and the bank
    const at::Tensor bank = m->adapter_state_dict("default").at("base_model.vblora_vector_bank");
    EXPECT_EQ(std::count_if(params.begin(), params.end(), [&](const at::Tensor & p) { return p.is_same(bank); }), 1);
    auto cm = compile(*m);
    Trainer t([&](const ForwardInput & in) { return compiled ? cm.forward(in) : m->forward(in); }, params,
              golden_train_options());
    for (int64_t s = 0; s < 8; ++s) {
      const double w = want.at("losses")[s].item<double>();
      EXPECT_NEAR(t.step(ids).loss, w, 1e-4 + 1e-3 * std::abs(w)) << "step " << s + 1;
    }
    m->train(false);
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_final"));
    // the bank moved as upstream's did
    const auto final_up = safetensors_load(c + "/adapter_final/adapter_model.safetensors");
    EXPECT_TRUE(all_close(bank, final_up.at("base_model.vblora_vector_bank"), 1e-4, 1e-4));
  }
}

TEST(Train, GradientsReachOnlyTrainableTensors) {
  auto base = load_model(golden_model("tiny-llama"));
  auto m = PeftModel::from_pretrained(base, golden_case("lora") + "/adapter", "default", true);
  m->train();
  at::Tensor loss = causal_lm_loss(m->forward({golden_ids("lora")}), golden_ids("lora"));
  loss.backward();
  int trainable = 0;
  for (const auto & p : base->named_parameters(true)) {
    const bool is_lora = p.key().find("lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), is_lora) << p.key();
    if (is_lora) {
      ++trainable;
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
    } else {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }
  EXPECT_EQ(trainable, 8);
}

TEST(Train, ScheduleShapes) {
  auto p = at::zeros({2}).set_requires_grad(true);
  TrainOptions o;
  o.lr = 1.0;
  o.steps = 10;
  o.warmup_steps = 2;
  o.lr_scheduler = "linear";
  Trainer t([](const ForwardInput &) { return at::Tensor(); }, {p}, o);
  EXPECT_DOUBLE_EQ(t.lr_at(1), 0.5);
  EXPECT_DOUBLE_EQ(t.lr_at(2), 1.0);
  EXPECT_DOUBLE_EQ(t.lr_at(10), 0.0);
}

}  // namespace

namespace {

TEST(TrainCli, GoldenAdamW) {
  const std::string c = golden_case("train_lora_adamw");
  const std::string dir = temp_dir("train");
  std::string out;
  ASSERT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --adapter-init " + c + "/adapter_init --data " + c +
                        "/input_ids.json --batch-size 3 --steps 8 --optimizer adamw --lr 1e-2 --weight-decay 0.01"
                        " --betas 0.9,0.999 --eps 1e-8 --no-shuffle --log-file " + dir + "/log.jsonl --out " + dir + "/adapter",
                    &out),
            0)
      << out;
  auto want = golden_expected("train_lora_adamw");
  std::ifstream log(dir + "/log.jsonl");
  std::string line;
  int64_t n = 0;
  while (std::getline(log, line)) {
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["step"].get<int64_t>(), n + 1);
    double w = want.at("losses")[n].item<double>();
    EXPECT_NEAR(j["loss"].get<double>(), w, 1e-4 + 1e-3 * std::abs(w));
    ++n;
  }
  EXPECT_EQ(n, 8);
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir + "/adapter");
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({golden_ids("train_lora_adamw")}), want.at("logits_final"));
  // and the trained tensors equal what upstream PEFT saved after its run
  auto upstream = safetensors_load(c + "/adapter_final/adapter_model.safetensors");
  auto ours = safetensors_load(dir + "/adapter/adapter_model.safetensors");
  ASSERT_EQ(upstream.size(), ours.size());
  for (const auto & kv : upstream) EXPECT_TRUE(all_close(ours.at(kv.first), kv.second, 1e-5, 1e-3)) << kv.first;
}

TEST(TrainCli, NewLoraAdapterTrainsAndLossFalls) {
  const std::string c = golden_case("train_lora_adamw");
  const std::string dir = temp_dir("train-new");
  std::string out;
  ASSERT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --method lora --r 4 --lora-alpha 8 --target-modules"
                        " q_proj,v_proj,o_proj --use-rslora --data " + c + "/input_ids.json --batch-size 2 --steps 12"
                        " --optimizer adamw --lr 2e-2 --lr-scheduler cosine --warmup-steps 2 --max-grad-norm 1.0"
                        " --seed 3 --log-file " + dir + "/log.jsonl --out " + dir + "/adapter",
                    &out),
            0)
      << out;
  std::ifstream log(dir + "/log.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(log, line);) losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), losses.front());
  auto cfg = nlohmann::json::parse(read_file(dir + "/adapter/adapter_config.json"));
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["use_rslora"], true);
}

TEST(TrainCli, BadHyperparametersExitNonZero) {
  const std::string c = golden_case("train_lora_adamw");
  std::string out;
  EXPECT_NE(run_cli("train --model " + golden_model("tiny-llama") + " --method lora --r 0 --data " + c +
                        "/input_ids.json --batch-size 2 --steps 1 --lr 1e-2 --log-file /tmp/l.jsonl --out /tmp/o",
                    &out),
            0);
  EXPECT_NE(out.find("--r"), std::string::npos) << out;
  EXPECT_NE(run_cli("train --model " + golden_model("tiny-llama") + " --method lora --data " + c +
                        "/input_ids.json --batch-size 2 --steps 1 --lr -1 --log-file /tmp/l.jsonl --out /tmp/o",
                    &out),
            0);
  EXPECT_NE(out.find("--lr"), std::string::npos) << out;
}

}  // namespace

namespace {

TEST(TrainCli, AnyMethodFromAnAdapterConfig) {
  const std::string c = golden_case("train_lora_adamw");
  for (const char * method : {"ia3", "loha", "lokr", "oft", "vera", "vblora", "shira", "randlora", "boft_butterfly2",
                              "trainable_tokens", "lora_tokens", "prompt_tuning", "prefix_tuning_proj",
                              "p_tuning_lstm"}) {
    const std::string dir = temp_dir("train-any");
    std::string out;
    ASSERT_EQ(run_cli(std::string("train --compile --model ") + golden_model("tiny-llama") + " --adapter-config " +
                          golden_case(method) + "/adapter/adapter_config.json --data " + c +
                          "/input_ids.json --batch-size 3 --steps 6 --optimizer adamw --lr 5e-2 --no-shuffle --log-file " +
                          dir + "/log.jsonl --out " + dir + "/a",
                      &out),
              0)
        << method << ": " << out;
    std::ifstream log(dir + "/log.jsonl");
    std::vector<double> losses;
    for (std::string line; std::getline(log, line);) losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
    ASSERT_EQ(losses.size(), 6u) << method;
    EXPECT_LT(losses.back(), losses.front()) << method;
    auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir + "/a");  // it reloads
    EXPECT_EQ(m->adapter_config("default").peft_type, nlohmann::json::parse(read_file(dir + "/a/adapter_config.json"))["peft_type"]);
  }
}

}  // namespace
