// Bad adapter input: a clear error naming the problem, and the model exactly as it was before.
#include <fstream>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/tuners/lora.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

AdapterConfig lora(nlohmann::json extra) {
  nlohmann::json j = {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"q_proj", "v_proj"}}};
  j.update(extra);
  return AdapterConfig::from_json(j, "config");
}

// Parameter names and values of the whole model, to prove nothing changed.
std::map<std::string, at::Tensor> snapshot(CausalLM & m) {
  std::map<std::string, at::Tensor> s;
  for (const auto & p : m.named_parameters(true)) s[p.key()] = p.value().clone();
  return s;
}
void expect_same(CausalLM & m, const std::map<std::string, at::Tensor> & before) {
  auto now = snapshot(m);
  ASSERT_EQ(now.size(), before.size());
  for (const auto & kv : before) {
    ASSERT_TRUE(now.count(kv.first)) << kv.first;
    EXPECT_TRUE(at::equal(now.at(kv.first), kv.second)) << kv.first;
  }
}

std::string copy_adapter(const std::string & case_name) {
  std::string dir = temp_dir("bad");
  std::system(("cp " + golden_case(case_name) + "/adapter/* " + dir).c_str());
  return dir;
}

TEST(BadInput, TargetsMatchingNothing) {
  auto base = load_model(golden_model("tiny-llama"));
  auto e = error_of([&] { PeftModel m(base, lora({{"target_modules", {"nonexistent_proj"}}})); });
  EXPECT_NE(e.find("nonexistent_proj"), std::string::npos) << e;
  EXPECT_NE(e.find("not found"), std::string::npos) << e;
}

TEST(BadInput, RankMustBePositive) {
  EXPECT_NE(error_of([] { lora({{"r", 0}}); }).find("'r'"), std::string::npos);
  EXPECT_NE(error_of([] { lora({{"r", -2}}); }).find("'r'"), std::string::npos);
  EXPECT_NE(error_of([] { lora({{"lora_dropout", 1.5}}); }).find("lora_dropout"), std::string::npos);
  EXPECT_NE(error_of([] { lora({{"bias", "some"}}); }).find("bias"), std::string::npos);
  EXPECT_NE(error_of([] { lora({{"use_dora", true}, {"lora_bias", true}}); }).find("lora_bias"), std::string::npos);
}

TEST(BadInput, UnknownPeftType) {
  auto e = error_of([] { AdapterConfig::from_json({{"peft_type", "MAGIC"}}, "x/adapter_config.json"); });
  EXPECT_NE(e.find("MAGIC"), std::string::npos) << e;
  EXPECT_NE(e.find("x/adapter_config.json"), std::string::npos) << e;
}

TEST(BadInput, AdapterNameEscapingFolder) {
  auto base = load_model(golden_model("tiny-llama"));
  PeftModel m(base);
  for (const char * bad : {"../x", "a/b", "..", "", "__base__"}) {
    EXPECT_THROW(m.load_adapter(golden_case("lora") + "/adapter", bad), peft::Error) << bad;
  }
  EXPECT_TRUE(m.tuner_layers().empty());
}

TEST(BadInput, DuplicateAdapterName) {
  auto base = load_model(golden_model("tiny-llama"));
  auto m = PeftModel::from_pretrained(base, golden_case("lora") + "/adapter");
  auto before = snapshot(*base);
  auto e = error_of([&] { m->load_adapter(golden_case("dora") + "/adapter", "default"); });
  EXPECT_NE(e.find("exists already"), std::string::npos) << e;
  expect_same(*base, before);
}

TEST(BadInput, ShapeMismatchLeavesModelUnchanged) {
  std::string dir = copy_adapter("lora");
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  const std::string key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
  t[key] = at::zeros({17, 4});
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto base = load_model(golden_model("tiny-llama"));
  auto m = PeftModel::from_pretrained(base, golden_case("dora") + "/adapter", "first");
  auto before = snapshot(*base);
  auto key_before = m->state_key();
  auto e = error_of([&] { m->load_adapter(dir, "second"); });
  EXPECT_NE(e.find(key), std::string::npos) << e;
  EXPECT_NE(e.find("[17, 4]"), std::string::npos) << e;
  expect_same(*base, before);
  EXPECT_EQ(m->adapter_names(), std::vector<std::string>{"first"});
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({golden_ids("dora")}), golden_expected("dora").at("logits"));
}

TEST(BadInput, ShapeMismatchOnFreshModelLeavesNoWrappers) {
  std::string dir = copy_adapter("lora");
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = at::zeros({4, 31});
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto base = load_model(golden_model("tiny-llama"));
  auto before = snapshot(*base);
  EXPECT_THROW(PeftModel::from_pretrained(base, dir), peft::Error);
  expect_same(*base, before);
  for (const auto & mod : named_modules(base)) {
    EXPECT_EQ(std::dynamic_pointer_cast<TunerLayer>(mod.second), nullptr) << mod.first;
  }
}

TEST(BadInput, UnknownModuleKey) {
  std::string dir = copy_adapter("lora");
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  t["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = at::zeros({4, 32});
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); });
  EXPECT_NE(e.find("layers.7"), std::string::npos) << e;
}

TEST(BadInput, MissingAdapterTensor) {
  std::string dir = copy_adapter("lora");
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  t.erase("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); });
  EXPECT_NE(e.find("q_proj.lora_B"), std::string::npos) << e;
}

TEST(BadInput, ShiraIndicesOutsideTheWeightLeaveTheModelUnchanged) {
  std::string dir = copy_adapter("shira");
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  const std::string key = "base_model.model.model.layers.1.self_attn.v_proj.shira_indices";
  t[key] = t.at(key).clone();
  t[key][1][5] = 16;  // v_proj is 16 x 32: column 16 exists, row 16 does not
  t[key][0][7] = 16;
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto base = load_model(golden_model("tiny-llama"));
  auto before = snapshot(*base);
  auto e = error_of([&] { PeftModel::from_pretrained(base, dir); });
  EXPECT_NE(e.find("shira_indices"), std::string::npos) << e;
  EXPECT_NE(e.find("outside the 16x32 weight"), std::string::npos) << e;
  expect_same(*base, before);
  for (const auto & mod : named_modules(base)) EXPECT_EQ(std::dynamic_pointer_cast<TunerLayer>(mod.second), nullptr) << mod.first;
}

TEST(BadInput, VBLoRATopKFileWithoutItsWeights) {
  std::string dir = copy_adapter("vblora_topk");
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  t.erase("base_model.model.model.layers.0.self_attn.q_proj.vblora_logits_B_topk_weights");
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); });
  EXPECT_NE(e.find("q_proj.vblora_logits_B_topk_weights"), std::string::npos) << e;
  // indices beyond num_vectors (16)
  dir = copy_adapter("vblora_topk");
  t = safetensors_load(dir + "/adapter_model.safetensors");
  const std::string key = "base_model.model.model.layers.0.mlp.down_proj.vblora_logits_A_topk_indices";
  t[key] = t.at(key).clone();
  t[key][0][0][0] = 200;
  safetensors_save(dir + "/adapter_model.safetensors", t);
  e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); });
  EXPECT_NE(e.find("outside [0, num_vectors=16)"), std::string::npos) << e;
  // VB-LoRA's own checks on a layer the bank's vector length does not divide
  auto cfg = AdapterConfig::from_json({{"peft_type", "VBLORA"}, {"r", 2}, {"num_vectors", 8}, {"vector_length", 5},
                                       {"target_modules", {"q_proj"}}}, "config");
  e = error_of([&] { PeftModel m(load_model(golden_model("tiny-llama")), cfg); });
  EXPECT_NE(e.find("must be divisible by `vector_length` 5"), std::string::npos) << e;
  e = error_of([] { AdapterConfig::from_json({{"peft_type", "SHIRA"}, {"mask_type", "magic"}}, "config"); });
  EXPECT_NE(e.find("'mask_type'"), std::string::npos) << e;
}

TEST(BadInput, TrainableTokensRowsAndOverlaps) {
  auto tokens = [](nlohmann::json extra) {
    nlohmann::json j = {{"peft_type", "TRAINABLE_TOKENS"}, {"token_indices", {4, 13}}};
    j.update(extra);
    return AdapterConfig::from_json(j, "config");
  };
  // a row the embedding (96 tokens) does not have, a row twice: named, the model as it was
  auto base = load_model(golden_model("tiny-llama"));
  auto before = snapshot(*base);
  auto e = error_of([&] { PeftModel m(base, tokens({{"token_indices", {4, 96}}})); });
  EXPECT_NE(e.find("token index 96 is outside the 96 rows"), std::string::npos) << e;
  e = error_of([&] { PeftModel m(base, tokens({{"token_indices", {4, 13, 4}}})); });
  EXPECT_NE(e.find("token index 4 is listed twice"), std::string::npos) << e;
  expect_same(*base, before);
  for (const auto & mod : named_modules(base)) EXPECT_EQ(std::dynamic_pointer_cast<TunerLayer>(mod.second), nullptr) << mod.first;
  e = error_of([&] { tokens({{"token_indices", nlohmann::json::array()}}); });
  EXPECT_NE(e.find("'token_indices'"), std::string::npos) << e;
  e = error_of([&] { tokens({{"modules_to_save", {"lm_head"}}}); });
  EXPECT_NE(e.find("modules_to_save"), std::string::npos) << e;
  // a tied lm_head targeted beside its embedding follows the embedding, as upstream's (golden case
  // trainable_tokens_tied_both)
  e = error_of([&] { PeftModel m(load_model(golden_model("tiny-opt")), tokens({{"target_modules", {"embed_tokens", "lm_head"}}})); });
  EXPECT_EQ(e, "");
  // two active adapters on overlapping rows: PEFT's error at forward and at merge
  PeftModel m(load_model(golden_model("tiny-llama")), tokens(nlohmann::json::object()));
  m.add_adapter("other", tokens({{"token_indices", {13, 20}}}));
  m.set_adapter(std::vector<std::string>{"default", "other"});
  e = error_of([&] { m.forward({golden_ids("trainable_tokens")}); });
  EXPECT_NE(e.find("Only disjunct token indices"), std::string::npos) << e;
  e = error_of([&] { m.merge_adapter(); });
  EXPECT_NE(e.find("Only disjunct token indices"), std::string::npos) << e;
}

TEST(BadInput, TruncatedAdapterFile) {
  std::string dir = copy_adapter("lora");
  std::string bytes = read_file(dir + "/adapter_model.safetensors");
  write_file_atomic(dir + "/adapter_model.safetensors", bytes.substr(0, bytes.size() - 100));
  auto e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); });
  EXPECT_NE(e.find("adapter_model.safetensors"), std::string::npos) << e;
}

TEST(BadInput, InvalidConfigJsonField) {
  std::string dir = copy_adapter("lora");
  auto j = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  j["r"] = 0;
  write_file_atomic(dir + "/adapter_config.json", j.dump());
  auto e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); });
  EXPECT_NE(e.find("adapter_config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("'r'"), std::string::npos) << e;
}

// The base model's weights as in `before` (the adapters' own lora_ tensors aside).
void expect_base_weights_same(const std::shared_ptr<CausalLM> & base, const std::map<std::string, at::Tensor> & before) {
  for (const auto & kv : before) {
    if (kv.first.find("lora_") != std::string::npos) continue;
    EXPECT_TRUE(at::equal(kv.second, get_submodule(base, kv.first.substr(0, kv.first.rfind('.')))
                                         ->named_parameters(false)[kv.first.substr(kv.first.rfind('.') + 1)]))
        << kv.first;
  }
}

TEST(BadInput, SafeMergeRefusesNonFinite) {
  auto base = load_model(golden_model("tiny-llama"));
  auto m = PeftModel::from_pretrained(base, golden_case("lora") + "/adapter");
  auto layer = std::dynamic_pointer_cast<LoraLinear>(m->tuner_layers().back().second);
  ASSERT_TRUE(layer);
  {
    at::NoGradGuard g;
    layer->lora_B("default").fill_(std::numeric_limits<float>::infinity());
  }
  auto before = snapshot(*base);
  EXPECT_THROW(m->merge_adapter({}, /*safe_merge=*/true), peft::Error);
  EXPECT_FALSE(m->merged());
  expect_base_weights_same(base, before);  // (the adapter tensor itself was changed by the test)
}

// The tail every merge shares (store_merged): a non-finite merged bias is refused, naming it, before the
// weight or the bias is stored.
TEST(BadInput, SafeMergeRefusesNonFiniteBias) {
  auto base = load_model(golden_model("tiny-opt"));  // (OPT's projections have biases)
  auto m = std::make_shared<PeftModel>(base, lora({{"lora_bias", true}}));
  std::shared_ptr<LoraLinear> layer;
  for (const auto & l : m->tuner_layers()) {
    auto lin = std::dynamic_pointer_cast<LoraLinear>(l.second);
    if (lin && lin->lora_B_bias("default").defined()) layer = lin;
  }
  ASSERT_TRUE(layer) << "a layer with lora_B's bias";
  {
    at::NoGradGuard g;
    layer->lora_B_bias("default").fill_(std::numeric_limits<float>::infinity());
  }
  auto before = snapshot(*base);
  const std::string e = error_of([&] { m->merge_adapter({}, /*safe_merge=*/true); });
  EXPECT_NE(e.find("merging the bias of adapter 'default'"), std::string::npos) << e;
  EXPECT_FALSE(m->merged());
  expect_base_weights_same(base, before);
}

// A method without a per-row forward is refused in a mixed-adapter batch with its own reason (not the text
// PEFT gives for DoRA); with every row on the base the layer itself refuses the same way.
TEST(BadInput, MixedBatchRefusalNamesTheMethod) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("ia3") + "/adapter");
  m->train(false);
  PeftInput in;
  in.input_ids = golden_ids("ia3");
  const int64_t B = in.input_ids.size(0);
  in.adapter_names.assign(B, "default");
  const std::string e = error_of([&] { m->forward(in); });
  EXPECT_NE(e.find("adapter_names[0] = 'default'"), std::string::npos) << e;
  EXPECT_NE(e.find("IA3"), std::string::npos) << e;
  EXPECT_NE(e.find("no per-row forward"), std::string::npos) << e;
  EXPECT_EQ(e.find("DoRA"), std::string::npos) << e;
  in.adapter_names.assign(B, kBaseAdapter);
  const std::string all_base = error_of([&] { m->forward(in); });
  EXPECT_NE(all_base.find("no per-row forward"), std::string::npos) << all_base;
}

TEST(BadInput, CliExitsNonZeroWithMessage) {
  std::string out;
  int rc = run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case("lora") +
                       "/input_ids.json --out /tmp/x.safetensors --adapter /nonexistent/adapter",
                   &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("/nonexistent/adapter"), std::string::npos) << out;
  rc = run_cli("forward --model /nonexistent/model --input-ids " + golden_case("lora") + "/input_ids.json --out " +
                   temp_dir("cli") + "/y.safetensors", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("/nonexistent/model"), std::string::npos) << out;
}

}  // namespace
