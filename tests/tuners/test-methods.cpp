// Method-specific behaviour beyond the golden matrix: quirks replicated from PEFT, hyperparameter
// validation, deterministic VeRA projections.
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/compile/compile.h"
#include "peft/peft-model.h"
#include "peft/tuners/lycoris.h"
#include "peft/tuners/vera.h"
#include "peft/ops/adapter-math.h"
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
      {"ADALORA", {{"total_step", 10}, {"init_r", 4}}},
      {"ROAD", {{"group_size", 8}}},
      {"DELORA", {{"target_modules", {"q_proj", "v_proj"}}}}};
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
  PeftInput in;
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

// ---- RoAd ----

TEST(Road, MatrixEqualsTheElementwiseForm) {
  // merge and compile fold use R (road_matrix), the forward uses road_apply: R y == road_apply(y), every variant
  at::manual_seed(3);
  for (int64_t variant : {1, 2, 4}) {
    for (int64_t g : {2, 4, 8}) {
      const int64_t O = 16, n = variant == 1 ? O / 2 : variant == 2 ? O : 2 * O;
      const at::Tensor theta = at::randn({n}), alpha = at::randn({n}) + 1, y = at::randn({3, 5, O});
      const auto cols = math::road_cols(theta, alpha, variant, g);
      const at::Tensor R = math::road_matrix(cols.first, cols.second, g);
      EXPECT_TRUE(all_close(at::matmul(y, R.t()), math::road_apply(y, cols.first, cols.second, g), 1e-6, 1e-5))
          << "road_" << variant << " group " << g;
    }
  }
}

TEST(Road, InvalidConfigsAsUpstream) {
  EXPECT_NE(error_of([] { cfg("ROAD", {{"variant", "road_3"}}); }).find("Invalid variant road_3"), std::string::npos);
  EXPECT_EQ(error_of([] { cfg("ROAD", {{"group_size", 6}, {"variant", "road_4"}}); }), "");
  EXPECT_NE(error_of([] { cfg("ROAD", {{"group_size", 3}}); }).find("group_size must be divisible by 2"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("ROAD", {{"group_size", 0}}); }).find("group_size must be divisible by 2"), std::string::npos);
  EXPECT_NE(error_of([] { cfg("ROAD", {{"group_size", "8"}}); }).find("'group_size'"), std::string::npos);
  // fields PEFT's RoadConfig does not have (PEFT drops them when loading; here they would filter layers)
  EXPECT_NE(error_of([] { cfg("ROAD", {{"layers_to_transform", {0}}}); }).find("not a field of PEFT's RoadConfig"),
            std::string::npos);
  // out_features must be a multiple of group_size (v_proj: 16 outputs)
  const std::string e = error_of([] {
    PeftModel m(load_model(golden_model("tiny-llama")), cfg("ROAD", {{"target_modules", {"q_proj", "v_proj"}}, {"group_size", 32}}));
  });
  EXPECT_NE(e.find("must be divisible by group_size (32)"), std::string::npos) << e;
  EXPECT_NE(e.find("v_proj"), std::string::npos) << e;
}

// road_mixed (gen_extra.py): two RoAd adapters sharing q_proj, from upstream PEFT
struct RoadMixed : ::testing::Test {
  std::shared_ptr<PeftModel> m;
  std::map<std::string, at::Tensor> want = golden_expected("road_mixed");
  at::Tensor ids = golden_ids("road_mixed");
  void SetUp() override {
    m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
    for (const char * n : {"one", "two"}) m->load_adapter(golden_case("road_mixed") + "/adapters/" + n, n);
  }
};

TEST_F(RoadMixed, SeveralActiveInOrderMergedAndUnmergedAsUpstream) {
  auto c = compile(*m);
  auto both = [&](const std::string & key) {
    {
      at::NoGradGuard g;
      EXPECT_CLOSE(m->forward({ids}), want.at(key)) << key;
      EXPECT_CLOSE(c.forward({ids}), want.at(key)) << key << " (compiled)";
    }
    EXPECT_CLOSE(c.forward({ids}), want.at(key)) << key << " (compiled, autograd on)";
  };
  for (const char * n : {"one", "two"}) {
    m->set_adapter(n);
    both(std::string("logits_") + n);
  }
  m->set_adapter(std::vector<std::string>{"one", "two"});
  both("logits_one_two");
  m->set_adapter(std::vector<std::string>{"two", "one"});
  both("logits_two_one");
  EXPECT_FALSE(all_close(want.at("logits_one_two"), want.at("logits_two_one")));  // the order matters
  m->set_adapter(std::vector<std::string>{"one", "two"});
  m->merge_adapter();
  both("logits_one_two_merged");
  m->unmerge_adapter();
  both("logits_one_two_unmerged");
  auto off = m->disable_adapter();
  both("logits_base");
}

TEST_F(RoadMixed, MixedBatchAsUpstreamEagerAndCompiled) {
  PeftInput in;
  in.input_ids = ids;
  in.adapter_names = {"one", "__base__", "two"};
  auto c = compile(*m);
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward(in), want.at("logits_mixed_batch"));
  EXPECT_CLOSE(c.forward(in), want.at("logits_mixed_batch"));
  // each row equals its adapter alone (and the base row the base)
  EXPECT_CLOSE(want.at("logits_mixed_batch")[0], want.at("logits_one")[0]);
  EXPECT_CLOSE(want.at("logits_mixed_batch")[1], want.at("logits_base")[1]);
  EXPECT_CLOSE(want.at("logits_mixed_batch")[2], want.at("logits_two")[2]);
  // another assignment replays the same graph
  in.adapter_names = {"two", "one", "__base__"};
  const at::Tensor got = c.forward(in);
  EXPECT_CLOSE(got[0], want.at("logits_two")[0]);
  EXPECT_CLOSE(got[1], want.at("logits_one")[1]);
  EXPECT_CLOSE(got[2], want.at("logits_base")[2]);
  EXPECT_EQ(c.stats().compiles, 1u) << c.explain();
}

// ---- DeLoRA ----

TEST(Delora, InvalidConfigsAsUpstream) {
  auto err = [](nlohmann::json j) { return error_of([&] { cfg("DELORA", j); }); };
  EXPECT_NE(err({{"r", 0}}).find("'r'"), std::string::npos);
  EXPECT_NE(err({{"r", 2.5}}).find("'r'"), std::string::npos);
  EXPECT_NE(err({{"delora_lambda", "15"}}).find("'delora_lambda'"), std::string::npos);
  EXPECT_NE(err({{"module_dropout", 1.5}}).find("'module_dropout'"), std::string::npos);
  EXPECT_EQ(err({{"module_dropout", 1.0}}), "");  // PEFT's Dropout takes p = 1
  EXPECT_NE(err({{"init_weights", "gaussian"}}).find("'init_weights'"), std::string::npos);
  EXPECT_NE(err({{"rank_pattern", {{"v_proj", 0}}}}).find("rank_pattern['v_proj']"), std::string::npos);
  EXPECT_NE(err({{"rank_pattern", {{"v_proj", 2.5}}}}).find("rank_pattern['v_proj']"), std::string::npos);
  EXPECT_NE(err({{"lambda_pattern", {{"v_proj", "x"}}}}).find("lambda_pattern"), std::string::npos);
  EXPECT_EQ(err({{"rank_pattern", {{"v_proj", 2}}}, {"lambda_pattern", {{"v_proj", -1.5}}}}), "");
  // PeftConfig's checks of the layer filter: not beside a string target_modules; a pattern needs the layers
  EXPECT_NE(err({{"target_modules", ".*q_proj"}, {"layers_to_transform", {0}}}).find("layers_to_transform"),
            std::string::npos);
  EXPECT_NE(err({{"layers_pattern", "layers"}}).find("layers_to_transform"), std::string::npos);
  EXPECT_EQ(err({{"target_modules", {"q_proj"}}, {"layers_to_transform", {0}}, {"layers_pattern", "layers"}}), "");
  // fields other methods have and PEFT's DeloraConfig does not (here they would adapt more)
  EXPECT_NE(err({{"target_parameters", {"q_proj.weight"}}}).find("not a field of PEFT's DeloraConfig"), std::string::npos);
  EXPECT_NE(err({{"trainable_token_indices", {1, 2}}}).find("not a field of PEFT's DeloraConfig"), std::string::npos);
}

TEST(Delora, WNormIsTheBaseColumnNormsSavedAndNeverTrained) {
  auto base = load_model(golden_model("tiny-llama"));
  std::map<std::string, at::Tensor> weights;
  for (const auto & p : base->named_parameters(true)) weights[p.key()] = p.value().detach().clone();
  PeftModel m(base, cfg("DELORA", {{"target_modules", {"q_proj", "down_proj"}}, {"init_weights", false}}));
  const auto sd = m.adapter_state_dict("default");
  size_t norms = 0;
  for (const auto & kv : sd) {
    const std::string suffix = ".delora_w_norm", p = "base_model.model.";
    if (kv.first.size() < suffix.size() || kv.first.compare(kv.first.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string module = kv.first.substr(p.size(), kv.first.size() - p.size() - suffix.size());
    EXPECT_TRUE(at::equal(kv.second, weights.at(module + ".weight").norm(2, {0}))) << kv.first;
    for (const auto & t : m.trainable_parameters()) EXPECT_FALSE(t.is_same(kv.second)) << kv.first << " is trained";
    ++norms;
  }
  EXPECT_EQ(norms, 4u);  // q_proj and down_proj of both layers
  EXPECT_EQ(m.trainable_parameters().size(), 3 * norms);  // delora_A, delora_B, delora_lambda
  // upstream's file holds the same norms of the same base weights
  const auto up = safetensors_load(golden_case("delora") + "/adapter/adapter_model.safetensors");
  const std::string k = "base_model.model.model.layers.1.self_attn.q_proj.delora_w_norm";
  EXPECT_TRUE(all_close(up.at(k), sd.at(k), 0, 1e-6));
}

TEST(Delora, DefaultInitTrainsFromFiniteGradients) {
  // B = 0 at first: its norm clamps at 1e-4 (no gradient through it), the update is zero, and B's gradient is
  // finite and non-zero (lambda's and A's are zero, as upstream's)
  PeftModel m(load_model(golden_model("tiny-llama")), cfg("DELORA", {{"target_modules", {"q_proj", "v_proj"}}}));
  m.forward({golden_ids("delora")}).pow(2).mean().backward();
  size_t seen = 0;
  for (const auto & p : m.model_ptr()->named_parameters(true)) {
    if (p.key().find("delora_") == std::string::npos) continue;
    const at::Tensor g = p.value().grad();
    ASSERT_TRUE(g.defined()) << p.key();
    EXPECT_TRUE(at::isfinite(g).all().item<bool>()) << p.key();
    if (p.key().find("delora_B") != std::string::npos) EXPECT_GT(g.abs().max().item<double>(), 0) << p.key();
    else EXPECT_EQ(g.abs().max().item<double>(), 0) << p.key();
    ++seen;
  }
  EXPECT_EQ(seen, 12u);
}

TEST(Delora, SeveralActiveAddEagerCompiledAndMerged) {
  auto m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
  m->load_adapter(golden_case("delora") + "/adapter", "a");
  m->load_adapter(golden_case("delora_pattern") + "/adapter", "b");
  const at::Tensor ids = golden_ids("delora");
  at::NoGradGuard g;
  m->set_adapter("a");
  const at::Tensor a = m->forward({ids});
  EXPECT_CLOSE(a, golden_expected("delora").at("logits"));
  m->set_adapter(std::vector<std::string>{"a", "b"});
  const at::Tensor both = m->forward({ids});
  EXPECT_FALSE(all_close(both, a, 1e-3, 1e-3));
  auto c = compile(*m);
  EXPECT_TRUE(all_close(c.forward({ids}), both, 5e-5, 1e-4));
  m->merge_adapter();
  EXPECT_TRUE(all_close(m->forward({ids}), both, 5e-5, 1e-4));
  EXPECT_TRUE(all_close(c.forward({ids}), both, 5e-5, 1e-4));
  m->unmerge_adapter();
  EXPECT_TRUE(all_close(m->forward({ids}), both, 5e-5, 1e-4));
}

TEST(Delora, MixedBatchRefused) {
  // upstream's DeLoRA layers take no per-row adapters (PEFT drops adapter_names and runs the active adapter on
  // every row): refused here, eager and compiled, rather than run wrong (through the CLI's --adapter-names)
  for (const std::string flags : {"", " --compile"}) {
    std::string out;
    const int rc = run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case("delora") +
                               "/input_ids.json --adapter " + golden_case("delora") + "/adapter --adapter-names " +
                               "default,__base__,default --out " + temp_dir("delora_mixed") + "/out.safetensors" + flags,
                           &out);
    EXPECT_NE(rc, 0) << flags;
    EXPECT_NE(out.find("mixed-adapter batch"), std::string::npos) << flags << ": " << out;
  }
}

}  // namespace
