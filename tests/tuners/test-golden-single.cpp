// Every single-adapter golden case through the C++ API: adapter on, disabled, merged, unmerged,
// merge_and_unload all equal upstream PEFT's logits; save -> load round-trips.
#include "golden-cases.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

class GoldenSingle : public ::testing::TestWithParam<GoldenCase> {
 protected:
  std::shared_ptr<PeftModel> load() {
    return load_golden(GetParam(), load_model(golden_model(GetParam().model)));
  }
  at::Tensor run(PeftModel & m) {
    at::NoGradGuard g;
    return m.forward({golden_ids(GetParam().name)});
  }
  std::map<std::string, at::Tensor> want = golden_expected(GetParam().name);
};

TEST_P(GoldenSingle, AdapterOn) {
  auto m = load();
  EXPECT_CLOSE(run(*m), want.at("logits"));
}

TEST_P(GoldenSingle, Disabled) {
  auto m = load();
  {
    auto off = m->disable_adapter();
    EXPECT_CLOSE(run(*m), want.at("logits_disabled"));
  }
  EXPECT_CLOSE(run(*m), want.at("logits"));  // the scope ended: adapter on again
}

TEST_P(GoldenSingle, MergedUnmerged) {
  auto m = load();
  m->merge_adapter();
  EXPECT_TRUE(m->merged());
  EXPECT_CLOSE(run(*m), want.at("logits_merged"));
  m->unmerge_adapter();
  EXPECT_CLOSE(run(*m), want.at("logits_unmerged"));
}

TEST_P(GoldenSingle, MergeAndUnload) {
  auto m = load();
  auto plain = m->merge_and_unload();
  for (const auto & mod : named_modules(plain)) {
    EXPECT_EQ(std::dynamic_pointer_cast<TunerLayer>(mod.second), nullptr) << mod.first << " is still wrapped";
  }
  at::NoGradGuard g;
  EXPECT_CLOSE(plain->forward({golden_ids(GetParam().name)}), want.at("logits_merge_and_unload"));
}

TEST_P(GoldenSingle, SavedFolderMatchesUpstreamAndReloads) {
  auto m = load();
  std::string dir = temp_dir("save");
  m->save_pretrained(dir);
  auto upstream = safetensors_load(golden_case(GetParam().name) + "/adapter/adapter_model.safetensors");
  auto ours = safetensors_load(dir + "/adapter_model.safetensors");
  // upstream's save_embedding_layers="auto" also writes the adapted embedding layers' base weights (the base
  // model's own here); they are not written here, and loading them is a no-op
  auto base = load_model(golden_model(GetParam().model))->named_parameters(true);
  for (auto it = upstream.begin(); it != upstream.end();) {
    const std::string k = it->first, w = ".base_layer.weight", p = "base_model.model.";
    const bool embedding_base = k.size() > w.size() && k.compare(k.size() - w.size(), w.size(), w) == 0 && !ours.count(k);
    const at::Tensor * b = embedding_base ? base.find(k.substr(p.size(), k.size() - p.size() - w.size()) + ".weight") : nullptr;
    if (b && at::equal(*b, it->second)) it = upstream.erase(it);
    else ++it;
  }
  ASSERT_EQ(ours.size(), upstream.size());
  for (const auto & kv : upstream) {
    ASSERT_TRUE(ours.count(kv.first)) << "missing key " << kv.first;
    const std::string w = "_topk_weights";
    if (kv.first.size() > w.size() && kv.first.compare(kv.first.size() - w.size(), w.size(), w) == 0) {
      // VB-LoRA's top-k weights went through log (load) and softmax (save) here: equal to float32 rounding
      EXPECT_TRUE(all_close(ours.at(kv.first), kv.second, 1e-6, 1e-6)) << kv.first;
    } else {
      EXPECT_TRUE(at::equal(ours.at(kv.first), kv.second)) << kv.first;
    }
  }
  auto cfg_up = nlohmann::json::parse(read_file(golden_case(GetParam().name) + "/adapter/adapter_config.json"));
  auto cfg_ours = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  // the base as loaded here (upstream's golden models were built in memory: null there)
  EXPECT_EQ(cfg_ours["base_model_name_or_path"], golden_model(GetParam().model));
  // the same fields with the same values as PEFT wrote (but the version stamp and what describes the writer)
  for (auto it = cfg_up.begin(); it != cfg_up.end(); ++it) {
    if (it.key() == "peft_version" || it.key() == "auto_mapping" || it.key() == "base_model_name_or_path") continue;
    ASSERT_TRUE(cfg_ours.contains(it.key())) << "missing field " << it.key();
    EXPECT_EQ(cfg_ours[it.key()], it.value()) << it.key();
  }
  for (auto it = cfg_ours.begin(); it != cfg_ours.end(); ++it) EXPECT_TRUE(cfg_up.contains(it.key())) << "extra field " << it.key();
  auto again = load_golden(GetParam(), load_model(golden_model(GetParam().model)), dir);
  EXPECT_CLOSE(run(*again), want.at("logits"));
}

INSTANTIATE_TEST_SUITE_P(Peft, GoldenSingle, ::testing::ValuesIn(single_adapter_cases()),
                         [](const auto & i) { return i.param.name; });

}  // namespace
