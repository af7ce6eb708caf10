// LoRA's init_lora_weights "loftq" against upstream PEFT's loftq_init run with bitsandbytes' own quantization
// (tests/data/quant/loftq, gen_bnb_reference.py): the factors, the dequantized base weights, the logits eager,
// compiled and through the CLI; the base quantizes back exactly; the refusals.
#include <filesystem>

#include "../tuners/golden-cases.h"
#include "peft/compile/compile.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/quant/quantize.h"
#include "peft/tuners/lora-loftq.h"
#include "peft/tuners/lora.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::string loftq_case(const std::string & name) { return data_path("quant/loftq/" + name); }

at::Tensor case_ids(const std::string & name) {
  auto j = nlohmann::json::parse(read_file(loftq_case(name) + "/input_ids.json"));
  std::vector<int64_t> flat;
  for (const auto & row : j)
    for (const auto & v : row) flat.push_back(v.get<int64_t>());
  return at::tensor(flat, at::kLong).view({static_cast<int64_t>(j.size()), -1});
}

at::Tensor weight_at(PeftModel & m, const std::string & path) {
  auto l = std::dynamic_pointer_cast<Layer>(get_submodule(m.model_ptr(), path));
  return std::dynamic_pointer_cast<LinearBase>(l->base())->dense_weight();
}

class Loftq : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir = loftq_case(GetParam());
  std::map<std::string, at::Tensor> want = safetensors_load(dir + "/expected.safetensors");
  at::Tensor ids = case_ids(GetParam());
};

TEST_P(Loftq, CreatedAsUpstream) {
  // get_peft_model on the float model: the same factors and the same dequantized base weights
  PeftModel m(load_model(golden_model("tiny-llama")), AdapterConfig::load(dir + "/adapter"));
  auto upstream = safetensors_load(dir + "/adapter/adapter_model.safetensors");
  auto ours = m.adapter_state_dict("default");
  ASSERT_EQ(ours.size(), upstream.size());
  int checked = 0;
  for (const auto & kv : want) {
    if (kv.first.rfind("base/", 0) != 0) continue;
    const std::string path = kv.first.substr(5, kv.first.size() - 5 - 7);  // base/<path>.weight
    EXPECT_TRUE(all_close(weight_at(m, path), kv.second, 1e-6, 1e-5)) << path;
    const std::string key = "base_model.model." + path;
    const at::Tensor BA = at::mm(upstream.at(key + ".lora_B.weight"), upstream.at(key + ".lora_A.weight"));
    EXPECT_TRUE(all_close(at::mm(ours.at(key + ".lora_B.weight"), ours.at(key + ".lora_A.weight")), BA, 1e-5, 1e-4)) << path;
    ++checked;
  }
  EXPECT_EQ(checked, 6);
  at::NoGradGuard g;
  EXPECT_CLOSE(m.forward({ids}), want.at("logits"));
}

TEST_P(Loftq, LoadedEagerCompiledAndCli) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir + "/adapter");
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({ids}), want.at("logits"));
  auto c = compile(*m);
  EXPECT_CLOSE(c.forward({ids}), want.at("logits"));
  {
    auto off = m->disable_adapter();
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_disabled"));
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_disabled"));
  }
  const std::string out = temp_dir("loftq-cli") + "/logits.safetensors";
  for (const char * flags : {"", " --compile"}) {
    std::string log;
    ASSERT_EQ(run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + dir + "/input_ids.json --out " +
                          out + " --adapter " + dir + "/adapter" + flags,
                      &log),
              0)
        << log;
    EXPECT_CLOSE(safetensors_load(out).at("logits"), want.at("logits")) << flags;
  }
}

INSTANTIATE_TEST_SUITE_P(Peft, Loftq, ::testing::Values("nf4", "int8"));

TEST(LoftqNf4, BaseQuantizesBackExactlyAndServesAQuantizedModel) {
  // LoftQ's point: the base it leaves is bitsandbytes-representable, so quantizing it loses nothing more, and
  // the adapter (loaded with init_lora_weights true, as PEFT's LoftQ example saves it) runs on the 4-bit base
  const std::string dir = loftq_case("nf4");
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir + "/adapter");
  auto plain = m->unload();
  std::map<std::string, at::Tensor> before;
  for (const auto & p : plain->named_parameters(true)) before[p.key()] = p.value().detach().clone();
  quant::QuantOptions q;
  q.format = quant::Format::nf4;
  q.skip = {"lm_head", "k_proj", "o_proj", "gate_proj", "up_proj"};  // the layers LoftQ did not adapt stay float
  EXPECT_GT(quant::quantize_modules(plain, q), 0);
  int exact = 0;
  for (const auto & mod : named_modules(plain)) {
    auto ql = std::dynamic_pointer_cast<LinearBase>(mod.second);
    if (!ql || !before.count(mod.first + ".weight") || std::dynamic_pointer_cast<Linear>(mod.second)) continue;
    const bool adapted = mod.first.find("q_proj") != std::string::npos || mod.first.find("v_proj") != std::string::npos ||
                         mod.first.find("down_proj") != std::string::npos;
    if (!adapted) continue;
    EXPECT_TRUE(at::equal(ql->dense_weight(), before.at(mod.first + ".weight"))) << mod.first;
    ++exact;
  }
  EXPECT_EQ(exact, 6);
  const std::string adapter = temp_dir("loftq-true") + "/adapter";
  std::filesystem::create_directories(adapter);
  auto cfg = nlohmann::json::parse(read_file(dir + "/adapter/adapter_config.json"));
  cfg["init_lora_weights"] = true;
  write_file_atomic(adapter + "/adapter_config.json", cfg.dump());
  write_file_atomic(adapter + "/adapter_model.safetensors", read_file(dir + "/adapter/adapter_model.safetensors"));
  auto on4 = PeftModel::from_pretrained(plain, adapter);
  at::NoGradGuard g;
  EXPECT_CLOSE(on4->forward({case_ids("nf4")}), safetensors_load(dir + "/expected.safetensors").at("logits"));
}

TEST(LoftqNf4, Refusals) {
  const std::string dir = loftq_case("nf4");
  LoadOptions o;
  o.quantize.format = quant::Format::nf4;
  const std::string e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama"), o), dir + "/adapter"); });
  EXPECT_NE(e.find("init_lora_weights to true"), std::string::npos) << e;
  auto cfg = AdapterConfig::load(dir + "/adapter");
  auto with = [&](const char * key, const nlohmann::json & value) {
    return error_of([&] {
      auto bad = cfg;
      bad.set_field(key, value);
      PeftModel(load_model(golden_model("tiny-llama")), bad);
    });
  };
  EXPECT_NE(with("loftq_config", nlohmann::json::object()).find("`loftq_config` must be specified"), std::string::npos);
  EXPECT_NE(with("loftq_config", {{"loftq_bits", 2}, {"loftq_iter", 1}}).find("only nf4 (4) and int8 (8)"), std::string::npos);
  EXPECT_NE(with("loftq_config", {{"loftq_bits", 4}, {"loftq_iter", 0}}).find("loftq_iter must be greater than 0"),
            std::string::npos);
  EXPECT_NE(with("target_modules", {"embed_tokens"}).find("embedding"), std::string::npos);
}

// ---- replace_lora_weights_loftq: LoftQ's factors for a LoRA adapter on an already 4-bit model ----

std::shared_ptr<PeftModel> lora_on_nf4(const std::string & targets_json = R"(["q_proj", "v_proj", "down_proj"])") {
  LoadOptions o;
  o.quantize.format = quant::Format::nf4;  // blocksize 64, no double quant, lm_head float: tiny-llama-nf4
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8},
                                       {"target_modules", nlohmann::json::parse(targets_json)}},
                                      "cfg");
  return std::make_shared<PeftModel>(load_model(golden_model("tiny-llama"), o), cfg);
}

TEST(LoftqReplace, FactorsAndLogitsAsUpstream) {
  const std::string dir = loftq_case("replace");
  auto want = safetensors_load(dir + "/expected.safetensors");
  const at::Tensor ids = case_ids("replace");
  auto m = lora_on_nf4();
  auto c = compile(*m);
  {
    at::NoGradGuard g;
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_disabled"));  // B = 0 at the default init
  }
  EXPECT_EQ(replace_lora_weights_loftq(*m, golden_model("tiny-llama")), 6);
  int checked = 0;
  for (const auto & l : m->tuner_layers()) {
    auto lora = std::dynamic_pointer_cast<LoraLinear>(l.second);
    const at::Tensor BA = at::mm(want.at("lora_B/" + l.first), want.at("lora_A/" + l.first));
    EXPECT_TRUE(all_close(at::mm(lora->lora_B("default"), lora->lora_A("default")), BA, 1e-6, 1e-5)) << l.first;
    ++checked;
  }
  EXPECT_EQ(checked, 6);
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({ids}), want.at("logits"));
  EXPECT_CLOSE(c.forward({ids}), want.at("logits"));  // written in place: the compiled model sees them
  EXPECT_EQ(c.stats().compiles, 1u);
}

TEST(LoftqReplace, CallbackRollsBackAndRefusals) {
  auto m = lora_on_nf4();
  std::map<std::string, at::Tensor> before;
  for (const auto & l : m->tuner_layers()) before[l.first] = std::dynamic_pointer_cast<LoraLinear>(l.second)->lora_A("default").clone();
  const int64_t kept = replace_lora_weights_loftq(*m, golden_model("tiny-llama"), "default",
                                                  [](PeftModel &, const std::string & path) { return path.find("v_proj") == std::string::npos; });
  EXPECT_EQ(kept, 4);
  for (const auto & l : m->tuner_layers()) {
    const bool same = at::equal(std::dynamic_pointer_cast<LoraLinear>(l.second)->lora_A("default"), before.at(l.first));
    EXPECT_EQ(same, l.first.find("v_proj") != std::string::npos) << l.first;
  }
  // a float base: nothing to do (PEFT: "No bnb LoRA module found")
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"q_proj"}}}, "cfg");
  PeftModel plain(load_model(golden_model("tiny-llama")), cfg);
  EXPECT_NE(error_of([&] { replace_lora_weights_loftq(plain, golden_model("tiny-llama")); }).find("4-bit"), std::string::npos);
  // a checkpoint without the weights
  auto other = lora_on_nf4();
  EXPECT_NE(error_of([&] { replace_lora_weights_loftq(*other, golden_model("tiny-opt")); }).find("no tensor"), std::string::npos);
}

TEST(LoftqReplace, TrainCli) {
  // peft train --quantize nf4 --loftq-from: the saved adapter (one SGD step at lr 1e-12) holds upstream's factors
  const std::string dir = loftq_case("replace");
  auto want = safetensors_load(dir + "/expected.safetensors");
  const std::string out = temp_dir("loftq-train") + "/adapter";
  std::string log;
  ASSERT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --quantize nf4 --method lora --r 4 --lora-alpha 8 "
                    "--target-modules q_proj,v_proj,down_proj --loftq-from " + golden_model("tiny-llama") +
                    " --data " + dir + "/input_ids.json --steps 1 --optimizer sgd --lr 1e-12 --weight-decay 0 --batch-size 3 --no-plot "
                    "--no-progress --log-file " + out + ".jsonl --out " + out,
                    &log),
            0)
      << log;
  EXPECT_NE(log.find("LoftQ: 6 LoRA layers"), std::string::npos) << log;
  auto saved = safetensors_load(out + "/adapter_model.safetensors");
  const std::string p = "base_model.model.model.layers.1.mlp.down_proj";
  EXPECT_TRUE(all_close(at::mm(saved.at(p + ".lora_B.weight"), saved.at(p + ".lora_A.weight")),
                        at::mm(want.at("lora_B/model.layers.1.mlp.down_proj"), want.at("lora_A/model.layers.1.mlp.down_proj")),
                        1e-6, 1e-5));
}

}  // namespace
