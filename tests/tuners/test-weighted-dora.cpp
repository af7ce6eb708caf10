// Golden cases made by tests/data/golden/gen_weighted_dora.py with upstream PEFT:
//  - weighted_dora_dare: add_weighted_adapter's random draws (the new adapter's init, then DARE's masks) from
//    a seeded global generator, with a DoRA first source whose new magnitude comes from that init;
//  - weighted_dare_embed_llama / _opt, weighted_dare_conv1d_gpt2: the *_svd DARE types over embeddings and
//    Conv1D layers (masks drawn over PEFT's get_delta_weight layout);
//  - lora_target_parameters_patterns: rank/alpha patterns keyed by parameter names (also a single-adapter
//    golden case, see golden-cases.h);
//  - dora_embedding_several: DoRA on an embedding beside a plain LoRA embedding, in both orders, merged,
//    its gradients, and a combination with a DoRA embedding source.
// Everything eager and compiled.
#include "golden-cases.h"
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/tuners/lora-weighted.h"
#include "peft/tuners/lora.h"
#include "peft/train/trainer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

nlohmann::json case_json(const std::string & name) {
  return nlohmann::json::parse(read_file(golden_case(name) + "/case.json"));
}

std::shared_ptr<PeftModel> with_adapters(const std::string & name, const nlohmann::json & spec) {
  auto base = load_model(golden_case(name) + "/../../" + spec["model"].get<std::string>());
  auto m = std::make_shared<PeftModel>(base);
  for (auto it = spec["adapters"].begin(); it != spec["adapters"].end(); ++it) {
    m->load_adapter(golden_case(name) + "/" + it.value().get<std::string>(), it.key());
  }
  return m;
}

// add_weighted_adapter as the case made it: the global generator seeded with global_seed right before the
// call (upstream: torch.manual_seed), the masks from mask_seed where it is given
void weighted_as_upstream(PeftModel & m, const std::string & name, const nlohmann::json & w) {
  WeightedAdapterOptions o;
  o.combination_type = w["combination_type"].get<std::string>();
  o.density = w.value("density", -1.0);
  o.seed = w.value("mask_seed", int64_t{-1});
  o.svd_rank = w.value("svd_rank", int64_t{-1});
  o.majority_sign_method = w.value("majority_sign_method", std::string("total"));
  at::manual_seed(w["global_seed"].get<uint64_t>());
  add_weighted_adapter(m, w["adapters"].get<std::vector<std::string>>(), w["weights"].get<std::vector<double>>(), name, o);
}

// PEFT builds the new adapter's layers from the global generator (nn.Linear's init, then
// reset_lora_parameters' draws) before it draws DARE's masks from it; with a DoRA first source the new
// magnitude is ||W + s B0 A0|| of that init (never recomputed). The same draws in the same order here.
TEST(WeightedDoraDare, DrawsFollowUpstreamsGenerator) {
  const std::string name = "weighted_dora_dare";
  const auto spec = case_json(name);
  const auto want = golden_expected(name);
  const at::Tensor ids = golden_ids(name);
  auto m = with_adapters(name, spec);
  auto c = compile(*m);
  for (auto it = spec["weighted"].begin(); it != spec["weighted"].end(); ++it) {
    weighted_as_upstream(*m, it.key(), it.value());
    EXPECT_EQ(m->adapter_config(it.key()).opts<LoraOptions>().use_dora,
              spec["weighted_adapters"][it.key()]["use_dora"].get<bool>())
        << it.key();
    m->set_adapter(it.key());
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_" + it.key())) << it.key();
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_" + it.key())) << it.key() << " (compiled)";
  }
  // upstream's result moves with the generator's state (upstream_other_global_seed_max_abs_diff), and so does this
  ASSERT_GT(spec["upstream_other_global_seed_max_abs_diff"].get<double>(), 1e-2);
  auto other = spec["weighted"]["w_dora_dare_ties"];
  other["global_seed"] = 5;
  weighted_as_upstream(*m, "w_other", other);
  m->set_adapter("w_other");
  at::NoGradGuard g;
  EXPECT_FALSE(all_close(m->forward({ids}), want.at("logits_w_dora_dare_ties")));
}

class WeightedDareTransposed : public ::testing::TestWithParam<std::string> {};

// PEFT's *_svd types prune each source's get_delta_weight: (V, D) on an embedding, (in, out) on a Conv1D,
// the transpose of B A: the masks must be drawn over that layout
TEST_P(WeightedDareTransposed, MatchesPeftEagerAndCompiled) {
  const std::string name = GetParam();
  const auto spec = case_json(name);
  const auto want = golden_expected(name);
  const at::Tensor ids = golden_ids(name);
  auto m = with_adapters(name, spec);
  auto c = compile(*m);
  at::NoGradGuard g;
  for (auto it = spec["adapters"].begin(); it != spec["adapters"].end(); ++it) {
    m->set_adapter(it.key());
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_" + it.key())) << it.key();
  }
  for (auto it = spec["weighted"].begin(); it != spec["weighted"].end(); ++it) {
    weighted_as_upstream(*m, it.key(), it.value());
    m->set_adapter(it.key());
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_" + it.key())) << it.key();
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_" + it.key())) << it.key() << " (compiled)";
  }
}

INSTANTIATE_TEST_SUITE_P(Peft, WeightedDareTransposed,
                         ::testing::Values("weighted_dare_embed_llama", "weighted_dare_embed_opt",
                                           "weighted_dare_conv1d_gpt2"));

// the same through the CLI (--weighted with seed=: the masks from a generator seeded at the first draw)
TEST(WeightedDareTransposed, CliMatchesPeft) {
  for (const char * name : {"weighted_dare_embed_llama", "weighted_dare_conv1d_gpt2"}) {
    const auto spec = case_json(name);
    const auto & w = spec["weighted"]["w_dare_ties_svd"];
    std::string adapters, sources;
    for (auto it = spec["adapters"].begin(); it != spec["adapters"].end(); ++it)
      adapters += " --adapter " + golden_case(name) + "/" + it.value().get<std::string>() + "=" + it.key();
    for (size_t i = 0; i < w["adapters"].size(); ++i)
      sources += (i ? "," : "") + w["adapters"][i].get<std::string>() + "*" + std::to_string(w["weights"][i].get<double>());
    for (const char * compiled : {"", " --compile"}) {
      const std::string out = temp_dir("wdare") + "/y.safetensors";
      std::string log;
      ASSERT_EQ(run_cli("forward --model " + golden_case(name) + "/../../" + spec["model"].get<std::string>() +
                            " --input-ids " + golden_case(name) + "/input_ids.json --out " + out + adapters +
                            " --weighted w=dare_ties_svd:" + sources + ":density=" + std::to_string(w["density"].get<double>()) +
                            ":seed=" + std::to_string(w["mask_seed"].get<int64_t>()) + compiled,
                        &log),
                0)
          << log;
      EXPECT_CLOSE(safetensors_load(out).at("logits"), golden_expected(name).at("logits_w_dare_ties_svd")) << name << compiled;
    }
  }
}

// rank_pattern / alpha_pattern with target_parameters: PEFT matches a ParamWrapper's key "<module>.weight",
// so "down_proj" / "q_proj" keys do not reach those layers (only v_proj's module name)
TEST(TargetParametersPatterns, RankAndScalingPerLayerAsPeft) {
  const std::string name = "lora_target_parameters_patterns";
  const auto spec = case_json(name);
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case(name) + "/adapter");
  size_t seen = 0;
  for (const auto & l : m->tuner_layers()) {
    auto lora = std::dynamic_pointer_cast<LoraLinear>(l.second);
    if (!lora) continue;
    ASSERT_TRUE(spec["layers"].contains(l.first)) << l.first;
    const auto & up = spec["layers"][l.first];
    EXPECT_EQ(lora->settings("default").r, up["r"].get<int64_t>()) << l.first;
    EXPECT_NEAR(lora->settings("default").scaling, up["scaling"].get<double>(), 1e-12) << l.first;
    ++seen;
  }
  EXPECT_EQ(seen, spec["layers"].size());
}

// DoRA on an embedding beside a plain LoRA embedding: PEFT's DoRA embedding rescales the running output
// (earlier adapters included), so the order matters
struct DoraEmbeddingSeveral : ::testing::Test {
  const std::string name = "dora_embedding_several";
  nlohmann::json spec = case_json(name);
  std::map<std::string, at::Tensor> want = golden_expected(name);
  at::Tensor ids = golden_ids(name);
  std::shared_ptr<PeftModel> m = with_adapters(name, spec);
};

TEST_F(DoraEmbeddingSeveral, ActiveSetsAndMergeMatchPeft) {
  EXPECT_FALSE(all_close(want.at("logits_dora_plain"), want.at("logits_plain_dora")));
  auto c = compile(*m);
  for (auto it = spec["active_sets"].begin(); it != spec["active_sets"].end(); ++it) {
    m->set_adapter(it.value().get<std::vector<std::string>>());
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at(it.key())) << it.key();
    EXPECT_CLOSE(c.forward({ids}), want.at(it.key())) << it.key() << " (compiled)";
  }
  m->set_adapter(std::vector<std::string>{"dora", "plain"});
  m->merge_adapter();
  {
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_dora_plain_merged"));
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_dora_plain_merged")) << "compiled";
  }
  m->unmerge_adapter();
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({ids}), want.at("logits_dora_plain"));
  // mixed batches: no row may use a DoRA adapter (as PEFT)
  PeftInput in;
  in.input_ids = ids;
  in.adapter_names = {"plain", "dora", "__base__"};
  EXPECT_NE(error_of([&] { m->forward(in); }).find("DoRA"), std::string::npos);
}

TEST_F(DoraEmbeddingSeveral, GradientsMatchPeftEagerAndCompiled) {
  m->load_adapter(golden_case(name) + "/adapters/dora", "dora_t", true);
  m->set_adapter("dora_t");
  m->train();
  auto c = compile(*m);
  std::map<std::string, at::Tensor> params;
  for (const auto & p : m->base_model().named_parameters(true)) params[p.key()] = p.value();
  for (bool compiled : {false, true}) {
    SCOPED_TRACE(compiled ? "compiled" : "eager");
    at::Tensor loss = causal_lm_loss(compiled ? c.forward({ids}) : m->forward({ids}), ids);
    EXPECT_TRUE(all_close(loss.detach().reshape({1}), want.at("loss"), 1e-5, 1e-5)) << loss.item<double>();
    loss.backward();
    size_t n = 0;
    for (const auto & key : spec["grads"]) {
      std::string k = key.get<std::string>().substr(5);  // "grad." + parameter name, adapter "dora"
      k.replace(k.find(".dora"), 5, ".dora_t");
      ASSERT_TRUE(params.count(k)) << k;
      ASSERT_TRUE(params.at(k).grad().defined()) << k;
      EXPECT_TRUE(all_close(params.at(k).grad(), want.at(key.get<std::string>()), 1e-5, 1e-4)) << k;
      params.at(k).grad().zero_();
      ++n;
    }
    EXPECT_EQ(n, 9u);
  }
}

TEST_F(DoraEmbeddingSeveral, CombinationWithADoraEmbeddingSource) {
  const auto & w = spec["weighted"]["w_cat"];
  ASSERT_TRUE(w["use_dora"].get<bool>());
  WeightedAdapterOptions o;
  o.combination_type = "cat";
  at::manual_seed(w["global_seed"].get<uint64_t>());
  add_weighted_adapter(*m, w["adapters"].get<std::vector<std::string>>(), w["weights"].get<std::vector<double>>(), "w_cat", o);
  m->set_adapter("w_cat");
  auto c = compile(*m);
  {
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_w_cat"));
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_w_cat")) << "compiled";
  }
  // the tensors upstream saved, magnitudes included
  const std::string dir = temp_dir("wcat");
  m->save_pretrained(dir, {"w_cat"});
  const auto up = safetensors_load(golden_case(name) + "/" + w["folder"].get<std::string>() + "/adapter_model.safetensors");
  const auto ours = safetensors_load(dir + "/w_cat/adapter_model.safetensors");
  ASSERT_EQ(ours.size(), up.size());
  for (const auto & kv : up) {
    ASSERT_TRUE(ours.count(kv.first)) << kv.first;
    EXPECT_TRUE(all_close(ours.at(kv.first), kv.second, 1e-6, 1e-5)) << kv.first;
  }
}

}  // namespace
