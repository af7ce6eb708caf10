// Several named adapters in one model (golden case multi_adapter): switching, disabling, deleting,
// activating several at once, and the state sequences the compile layer must also get right.
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

struct Multi : ::testing::Test {
  std::shared_ptr<PeftModel> m;
  std::map<std::string, at::Tensor> want = golden_expected("multi_adapter");
  at::Tensor ids = golden_ids("multi_adapter");
  void SetUp() override {
    m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
    for (const char * n : {"alpha", "beta", "gamma"}) {
      m->load_adapter(golden_case("multi_adapter") + "/adapters/" + n, n);
    }
  }
  at::Tensor run() {
    at::NoGradGuard g;
    return m->forward({ids});
  }
};

TEST_F(Multi, EachAdapterAndBase) {
  for (const char * n : {"alpha", "beta", "gamma", "alpha"}) {
    m->set_adapter(n);
    EXPECT_CLOSE(run(), want.at(std::string("logits_") + n)) << n;
  }
  auto off = m->disable_adapter();
  EXPECT_CLOSE(run(), want.at("logits_base"));
}

TEST_F(Multi, DeleteFallsBackAlphabetically) {
  m->set_adapter("beta");
  m->delete_adapter("beta");
  EXPECT_EQ(m->active_adapters(), std::vector<std::string>{"alpha"});
  EXPECT_CLOSE(run(), want.at("logits_alpha"));
  EXPECT_THROW(m->set_adapter("beta"), peft::Error);
  // load it again under the same name: same results
  m->load_adapter(golden_case("multi_adapter") + "/adapters/beta", "beta");
  m->set_adapter("beta");
  EXPECT_CLOSE(run(), want.at("logits_beta"));
}

TEST_F(Multi, MergedAdapterCannotBeDeleted) {
  m->set_adapter("gamma");
  m->merge_adapter();
  EXPECT_THROW(m->delete_adapter("gamma"), peft::Error);
  EXPECT_CLOSE(run(), want.at("logits_gamma"));
}

TEST_F(Multi, DisableWhileMergedGivesBase) {
  m->set_adapter("alpha");
  m->merge_adapter();
  {
    auto off = m->disable_adapter();
    EXPECT_CLOSE(run(), want.at("logits_base"));  // PEFT unmerges a disabled layer
  }
  EXPECT_CLOSE(run(), want.at("logits_alpha"));
}

TEST_F(Multi, SwitchingUnmergesFirst) {
  m->set_adapter("alpha");
  m->merge_adapter();
  m->set_adapter("beta");
  EXPECT_FALSE(m->merged());
  EXPECT_CLOSE(run(), want.at("logits_beta"));
}

TEST_F(Multi, OnlyActiveAdapterTrainableWhenLoadedTrainable) {
  auto t = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
  t->load_adapter(golden_case("multi_adapter") + "/adapters/alpha", "alpha", /*is_trainable=*/true);
  t->load_adapter(golden_case("multi_adapter") + "/adapters/gamma", "gamma", /*is_trainable=*/true);
  t->set_adapter("gamma");
  int64_t n = 0;
  for (const auto & p : t->base_model().named_parameters(true)) {
    if (!p.value().requires_grad()) continue;
    EXPECT_NE(p.key().find(".gamma."), std::string::npos) << p.key() << " should be frozen";
    n += p.value().numel();
  }
  EXPECT_GT(n, 0);
  EXPECT_NE(t->trainable_summary().find("trainable params: " + std::to_string(n)), std::string::npos)
      << t->trainable_summary();
}

TEST_F(Multi, SaveWritesSubfoldersPerAdapter) {
  std::string dir = temp_dir("multi");
  m->save_pretrained(dir);
  auto back = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
  for (const char * n : {"alpha", "beta", "gamma"}) back->load_adapter(dir + "/" + n, n);
  back->set_adapter("gamma");
  at::NoGradGuard g;
  EXPECT_CLOSE(back->forward({ids}), want.at("logits_gamma"));
}

}  // namespace

#include "peft/compile/compile.h"
#include "peft/tuners/lora-weighted.h"

namespace {

// add_weighted_adapter with the arguments of the golden case, eager and compiled
TEST_F(Multi, WeightedCombinationsMatchPeft) {
  auto spec = nlohmann::json::parse(read_file(golden_case("multi_adapter") + "/case.json"))["weighted"];
  auto c = compile(*m);
  for (auto it = spec.begin(); it != spec.end(); ++it) {
    const auto & w = it.value();
    WeightedAdapterOptions o;
    o.combination_type = w["combination_type"].get<std::string>();
    if (w.contains("density")) o.density = w["density"].get<double>();
    add_weighted_adapter(*m, w["adapters"].get<std::vector<std::string>>(), w["weights"].get<std::vector<double>>(),
                         it.key(), o);
    m->set_adapter(it.key());
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_" + it.key())) << it.key();
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_" + it.key())) << it.key() << " compiled";
  }
  // the new adapters are frozen, and an existing name is a no-op
  for (const auto & p : m->trainable_parameters()) ADD_FAILURE() << "trainable after add_weighted_adapter";
  add_weighted_adapter(*m, {"alpha"}, {5.0}, "w_cat");
  at::NoGradGuard g;
  m->set_adapter("w_cat");
  EXPECT_CLOSE(m->forward({ids}), want.at("logits_w_cat"));
  EXPECT_THROW(add_weighted_adapter(*m, {"alpha", "gamma"}, {1.0, 1.0}, "bad", {"linear"}), peft::Error);  // ranks differ
}

// The other combination types (golden case weighted_more: DARE with seeded masks, the *_svd variants, svd's
// options, a negative weight), eager and compiled, and upstream's refusals
TEST_F(Multi, MoreCombinationTypesMatchPeft) {
  const auto spec = nlohmann::json::parse(read_file(golden_case("weighted_more") + "/case.json"));
  const auto expected = golden_expected("weighted_more");
  const at::Tensor more_ids = golden_ids("weighted_more");
  auto c = compile(*m);
  for (auto it = spec["weighted"].begin(); it != spec["weighted"].end(); ++it) {
    const auto & w = it.value();
    WeightedAdapterOptions o;
    o.combination_type = w["combination_type"].get<std::string>();
    o.density = w.value("density", -1.0);
    o.seed = w.value("seed", int64_t{-1});
    o.svd_rank = w.value("svd_rank", int64_t{-1});
    o.svd_clamp = w.value("svd_clamp", -1.0);
    o.svd_full_matrices = w.value("svd_full_matrices", true);
    o.majority_sign_method = w.value("majority_sign_method", std::string("total"));
    add_weighted_adapter(*m, w["adapters"].get<std::vector<std::string>>(), w["weights"].get<std::vector<double>>(),
                         it.key(), o);
    m->set_adapter(it.key());
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({more_ids}), expected.at("logits_" + it.key())) << it.key();
    EXPECT_CLOSE(c.forward({more_ids}), expected.at("logits_" + it.key())) << it.key() << " compiled";
  }
  // the seed decides the masks: another seed gives another adapter
  WeightedAdapterOptions other;
  other.combination_type = "dare_linear";
  other.density = 0.5;
  other.seed = 12345;
  add_weighted_adapter(*m, {"alpha", "beta"}, {0.7, 0.3}, "w_dare_other_seed", other);
  m->set_adapter("w_dare_other_seed");
  {
    at::NoGradGuard g;
    EXPECT_FALSE(all_close(m->forward({more_ids}), expected.at("logits_w_dare_linear")));
  }
  // what upstream refuses is refused here too
  for (auto it = spec["refused"].begin(); it != spec["refused"].end(); ++it) {
    ASSERT_FALSE(it.value()["accepted"].get<bool>()) << it.key();
    WeightedAdapterOptions o;
    o.combination_type = it.value()["combination_type"].get<std::string>();
    o.density = it.value().value("density", -1.0);
    const std::string e = error_of([&] {
      add_weighted_adapter(*m, it.value()["adapters"].get<std::vector<std::string>>(),
                           it.value()["weights"].get<std::vector<double>>(), it.key(), o);
    });
    EXPECT_FALSE(e.empty()) << it.key();
  }
  WeightedAdapterOptions no_density;
  no_density.combination_type = "dare_ties";
  EXPECT_NE(error_of([&] { add_weighted_adapter(*m, {"alpha", "beta"}, {1.0, 1.0}, "bad2", no_density); })
                .find("density"),
            std::string::npos);
}

}  // namespace

namespace {

// IA3's add_weighted_adapter (golden case weighted_ia3): the linear combination of the vectors over the
// union of the targets, eager and compiled, through the API and the CLI; upstream's refusal of list and
// string targets together; no other combination type for IA3
TEST(WeightedIA3, LinearCombinationMatchesPeft) {
  const auto spec = nlohmann::json::parse(read_file(golden_case("weighted_ia3") + "/case.json"));
  const auto want = golden_expected("weighted_ia3");
  const at::Tensor ids = golden_ids("weighted_ia3");
  auto m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
  for (const char * n : {"ia3_a", "ia3_b", "ia3_regex"}) m->load_adapter(golden_case("weighted_ia3") + "/adapters/" + n, n);
  auto c = compile(*m);
  for (auto it = spec["weighted"].begin(); it != spec["weighted"].end(); ++it) {
    add_weighted_adapter(*m, it.value()["adapters"].get<std::vector<std::string>>(),
                         it.value()["weights"].get<std::vector<double>>(), it.key());
    m->set_adapter(it.key());
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_" + it.key())) << it.key();
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_" + it.key())) << it.key() << " compiled";
    auto targets = m->adapter_config(it.key()).field("target_modules").get<std::vector<std::string>>();
    std::sort(targets.begin(), targets.end());
    EXPECT_EQ(nlohmann::json(targets), it.value()["target_modules"]) << it.key();
  }
  ASSERT_FALSE(spec["refused"]["bad_mixed_types"]["accepted"].get<bool>());
  EXPECT_NE(error_of([&] { add_weighted_adapter(*m, {"ia3_a", "ia3_regex"}, {1.0, 1.0}, "bad"); }).find("same type"),
            std::string::npos);
  WeightedAdapterOptions ties;
  ties.combination_type = "ties";
  ties.density = 0.5;
  EXPECT_NE(error_of([&] { add_weighted_adapter(*m, {"ia3_a", "ia3_b"}, {1.0, 1.0}, "bad2", ties); }).find("linear"),
            std::string::npos);
  EXPECT_NE(error_of([&] { add_weighted_adapter(*m, {"ia3_a", "nope"}, {1.0, 1.0}, "bad3"); }).find("nope"),
            std::string::npos);
  // through the CLI
  const std::string a = golden_case("weighted_ia3") + "/adapters/", out = temp_dir("ia3w") + "/y.safetensors";
  std::string log;
  ASSERT_EQ(run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case("weighted_ia3") +
                        "/input_ids.json --out " + out + " --adapter " + a + "ia3_a=ia3_a --adapter " + a +
                        "ia3_b=ia3_b --weighted w=linear:ia3_a*0.6,ia3_b*0.5 --compile",
                    &log),
            0)
      << log;
  EXPECT_CLOSE(safetensors_load(out).at("logits"), want.at("logits_w_ia3"));
}

}  // namespace

namespace {

// Upstream's files for adapters on embedding layers (gen_config_cases.py): save_embedding_layers="auto" writes the
// base weight of every adapted embedding layer ("<module>.base_layer.weight") into each adapter's file.

// multi_embed_head: "head" (LoRA on lm_head only) was saved beside "emb" (on embed_tokens), so its file holds
// embed_tokens' base weight, and emb's holds lm_head's: upstream ignores such a key when that module is not adapted
// (no warning), and loads it where it is (the base's own weight here); eager and compiled
TEST(EmbeddingBaseWeights, OtherAdaptersEmbeddingKeyIsIgnoredAsUpstream) {
  const auto want = golden_expected("multi_embed_head");
  const at::Tensor ids = golden_ids("multi_embed_head");
  const std::string dir = golden_case("multi_embed_head") + "/adapters/";
  for (const char * n : {"emb", "head"}) {
    SCOPED_TRACE(n);
    auto base = load_model(golden_model("tiny-llama"));
    ::testing::internal::CaptureStderr();
    auto m = PeftModel::from_pretrained(base, dir + n, n);
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "upstream says nothing";
    auto c = compile(*m);
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at(std::string("logits_") + n + "_alone"));
    EXPECT_CLOSE(c.forward({ids}), want.at(std::string("logits_") + n + "_alone"));
  }
  // both in one model, in either order: each file's other key now names an adapted module's base weight, equal to it
  for (const auto & order : std::vector<std::vector<std::string>>{{"emb", "head"}, {"head", "emb"}}) {
    SCOPED_TRACE(order[0] + " first");
    auto m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
    ::testing::internal::CaptureStderr();
    for (const auto & n : order) m->load_adapter(dir + n, n);
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
    auto c = compile(*m);
    at::NoGradGuard g;
    for (const char * n : {"emb", "head"}) {
      m->set_adapter(n);
      EXPECT_CLOSE(m->forward({ids}), want.at(std::string("logits_") + n)) << n;
      EXPECT_CLOSE(c.forward({ids}), want.at(std::string("logits_") + n)) << n << " compiled";
    }
    auto off = m->disable_adapter();
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_base"));
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_base"));
  }
}

// lora_embed_base_changed: the file's base embedding differs from the model's (rows changed before upstream saved it):
// loaded into the base model as upstream's load does, said on stderr; other base-weight keys are still refused
TEST(EmbeddingBaseWeights, ChangedBaseEmbeddingLoadsAsUpstream) {
  const auto want = golden_expected("lora_embed_base_changed");
  const at::Tensor ids = golden_ids("lora_embed_base_changed");
  const std::string folder = golden_case("lora_embed_base_changed") + "/adapter";
  ::testing::internal::CaptureStderr();
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), folder);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("'base_model.model.model.embed_tokens.base_layer.weight'"), std::string::npos) << err;
  EXPECT_NE(err.find("differs from the model's"), std::string::npos) << err;
  auto c = compile(*m);
  {
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_loaded"));
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_loaded"));
    auto off = m->disable_adapter();
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_loaded_disabled"));
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_loaded_disabled"));
  }
  // the same key for a module the adapter does not adapt, and any other base weight
  const std::string dir = temp_dir("embed-base") + "/a";
  ASSERT_EQ(run_command("cp -r " + folder + " " + dir), 0);
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  t["base_model.model.lm_head.base_layer.weight"] = at::zeros({96, 32});
  safetensors_save(dir + "/adapter_model.safetensors", t);
  auto base = load_model(golden_model("tiny-llama"));
  auto again = PeftModel::from_pretrained(base, dir);
  EXPECT_GT(base->named_parameters(true)["lm_head.weight"].abs().sum().item<double>(), 0.0) << "ignored, as upstream";
  t["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] = at::zeros({32, 32});
  safetensors_save(dir + "/adapter_model.safetensors", t);
  EXPECT_NE(error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); })
                .find("names a base-model weight"),
            std::string::npos);
  t.erase("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight");
  t["base_model.model.model.embed_tokens.base_layer.weight"] = at::zeros({95, 32});
  safetensors_save(dir + "/adapter_model.safetensors", t);
  EXPECT_NE(error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); }).find("shape"),
            std::string::npos);
}

}  // namespace
