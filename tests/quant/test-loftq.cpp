// LoRA's init_lora_weights "loftq" against upstream PEFT's loftq_init run with bitsandbytes' own quantization
// (tests/data/quant/loftq, gen_bnb_reference.py): the factors, the dequantized base weights, the logits eager,
// compiled and through the CLI; the base quantizes back exactly; the refusals.
#include <filesystem>

#include "../tuners/golden-cases.h"
#include "peft/compile/compile.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/quant/quantize.h"
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

}  // namespace
