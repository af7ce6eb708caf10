// Typed method options: every field is read once, with named errors; PEFT options that change the
// computation and are not implemented are refused by name; PEFT's targeting rules (layer filter on
// suffix matches only, no layer filter with a string target_modules).
#include <set>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/tuners/lora.h"
#include "peft/tuners/lycoris.h"
#include "peft/tuners/oft.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::string config_error(nlohmann::json j, const std::string & type = "LORA") {
  j["peft_type"] = type;
  return error_of([&] { AdapterConfig::from_json(j, "cfg.json"); });
}

std::vector<std::string> adapted(const PeftModel & m) {
  std::vector<std::string> out;
  for (const auto & l : m.tuner_layers()) out.push_back(l.first);
  return out;
}

TEST(Options, ParsedOnceIntoTypedStructs) {
  auto c = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 6}, {"lora_alpha", 12}, {"use_rslora", true},
                                     {"rank_pattern", {{"q_proj", 2}}}, {"target_modules", {"q_proj"}}},
                                    "cfg.json");
  const auto & o = c.opts<LoraOptions>();
  EXPECT_EQ(o.r, 6);
  EXPECT_EQ(o.alpha, 12);
  EXPECT_TRUE(o.use_rslora);
  EXPECT_EQ(o.for_module("model.layers.0.self_attn.q_proj").r, 2);
  EXPECT_EQ(o.for_module("model.layers.0.self_attn.v_proj").r, 6);
  // the wrong struct is a named error, not undefined behaviour
  EXPECT_NE(error_of([&] { c.opts<LycorisOptions>(); }).find("LORA"), std::string::npos);
  // a change goes through set_field, which parses again
  c.set_field("r", 10);
  EXPECT_EQ(c.opts<LoraOptions>().r, 10);
  EXPECT_NE(error_of([&] { c.set_field("r", "ten", "edit"); }).find("edit: field 'r' must be an integer"),
            std::string::npos);
}

TEST(Options, MistypedFieldsAreNamed) {
  EXPECT_NE(config_error({{"r", "8"}}).find("cfg.json: field 'r' must be an integer"), std::string::npos);
  EXPECT_NE(config_error({{"lora_dropout", 1.5}}).find("field 'lora_dropout' must be in [0, 1)"), std::string::npos);
  EXPECT_NE(config_error({{"use_dora", "yes"}}).find("field 'use_dora' must be true or false"), std::string::npos);
  EXPECT_NE(config_error({{"alpha", "x"}}, "LOHA").find("field 'alpha' must be a number"), std::string::npos);
  EXPECT_NE(config_error({{"init_ia3_weights", 3}}, "IA3").find("field 'init_ia3_weights'"), std::string::npos);
  EXPECT_NE(config_error({{"vera_dropout", -1}}, "VERA").find("field 'vera_dropout'"), std::string::npos);
  EXPECT_NE(config_error({{"rank_pattern", {{"q_proj", "big"}}}}).find("rank_pattern['q_proj'] must be a number"),
            std::string::npos);
}

TEST(Options, UnimplementedPeftOptionsAreRefusedByName) {
  const std::vector<std::pair<std::string, nlohmann::json>> cases = {
      {"alora_invocation_tokens", {1, 2}},
      {"kasa_config", nlohmann::json::object()},
      {"velora_config", {{"rank", 2}}},
      {"monteclora_config", nlohmann::json::object()},
      {"arrow_config", nlohmann::json::object()},
      {"use_bdlora", true},
      {"use_qalora", true},
  };
  for (const auto & kv : cases) {
    const std::string e = config_error({{kv.first, kv.second}});
    EXPECT_NE(e.find("field '" + kv.first + "'"), std::string::npos) << kv.first << ": " << e;
    EXPECT_NE(e.find("not supported"), std::string::npos) << e;
  }
  // their neutral values are accepted (PEFT writes them into every file)
  EXPECT_EQ(config_error({{"use_qalora", false}, {"alora_invocation_tokens", nullptr}}), "");
}

TEST(Targeting, StringTargetModulesTakeNoLayerFilter) {
  EXPECT_NE(config_error({{"target_modules", "all-linear"}, {"layers_to_transform", {0}}})
                .find("'layers_to_transform' cannot be used when 'target_modules' is a string"),
            std::string::npos);
  EXPECT_NE(config_error({{"target_modules", ".*q_proj"}, {"layers_to_transform", {0}}})
                .find("'layers_to_transform' cannot be used"),
            std::string::npos);
  EXPECT_NE(config_error({{"target_modules", {"q_proj"}}, {"layers_pattern", "layers"}})
                .find("'layers_pattern' requires 'layers_to_transform'"),
            std::string::npos);
  // a rule of LoRA's config (and AdaLoRA's, HRA's, MiSS's, FourierFT's), not of every method's: OFT's takes the
  // filter, which then filters nothing ("all-linear" becomes full names, a regex is matched as it is)
  EXPECT_EQ(config_error({{"target_modules", "all-linear"}, {"layers_to_transform", {0}}, {"r", 0}, {"oft_block_size", 4}},
                         "OFT"),
            "");
  EXPECT_EQ(config_error({{"target_modules", ".*q_proj"}, {"layers_to_transform", {0}}, {"layers_pattern", "layers"}}, "LOHA"),
            "");
  EXPECT_NE(config_error({{"target_modules", ".*q_proj"}, {"layers_to_transform", {0}}}, "HRA").find("cannot be used"),
            std::string::npos);
  // PEFT's MiSS and RandLoRA configs do not check layers_pattern without layers_to_transform (it filters nothing)
  EXPECT_EQ(config_error({{"target_modules", {"q_proj"}}, {"layers_pattern", "layers"}}, "MISS"), "");
  EXPECT_NE(config_error({{"target_modules", {"q_proj"}}, {"layers_pattern", "layers"}}, "VERA").find("requires"),
            std::string::npos);
}

// golden case config_rules: the layer filter beside a string target_modules (and layers_pattern alone) for every
// method that has one, accepted or refused as upstream's config does, and adapting the modules upstream adapted
TEST(Targeting, LayerFilterRulesPerMethodAsUpstream) {
  const auto checks = nlohmann::json::parse(read_file(golden_case("config_rules") + "/case.json"))["checks"];
  ASSERT_GE(checks.size(), 40u);
  for (auto it = checks.begin(); it != checks.end(); ++it) {
    const auto & c = it.value();
    nlohmann::json j = c["fields"];
    j["peft_type"] = c["peft_type"];
    std::vector<std::string> got;
    const std::string e = error_of([&] {
      PeftModel m(load_model(golden_case("config_rules") + "/../../" + c["applied_to"].get<std::string>()),
                  AdapterConfig::from_json(j, "cfg.json"));
      got = adapted(m);
    });
    EXPECT_EQ(e.empty(), c["accepted"].get<bool>())
        << it.key() << ": upstream " << (c["accepted"].get<bool>() ? "accepts" : "refuses: ") << c.value("error", "")
        << "; here: " << (e.empty() ? "accepted" : e);
    if (e.empty() && c["accepted"].get<bool>()) {
      EXPECT_EQ(got, c["adapted_modules"].get<std::vector<std::string>>()) << it.key();
    }
  }
}

TEST(Targeting, LayerFilterAppliesToSuffixMatchesOnly) {
  // PEFT: a full module name is taken as it is; suffixes are filtered by layers_to_transform
  auto c = AdapterConfig::from_json({{"peft_type", "LORA"},
                                     {"r", 2},
                                     {"target_modules", {"model.layers.0.self_attn.k_proj", "q_proj"}},
                                     {"layers_to_transform", {1}}},
                                    "cfg.json");
  PeftModel m(load_model(golden_model("tiny-llama")), c);
  EXPECT_EQ(adapted(m), (std::vector<std::string>{"model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.q_proj"}));
}

TEST(Targeting, LayersPatternNeedsADotBeforeIt) {
  auto c = AdapterConfig::from_json({{"peft_type", "LORA"},
                                     {"r", 2},
                                     {"target_modules", {"q_proj"}},
                                     {"layers_to_transform", {0}},
                                     {"layers_pattern", "layers"}},
                                    "cfg.json");
  PeftModel m(load_model(golden_model("tiny-llama")), c);
  EXPECT_EQ(adapted(m), std::vector<std::string>{"model.layers.0.self_attn.q_proj"});
}

TEST(Options, OrthogonalInitNeedsAnEvenRank) {
  auto even = AdapterConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 4}, {"init_lora_weights", "orthogonal"}, {"target_modules", {"q_proj"}}}, "cfg");
  PeftModel m(load_model(golden_model("tiny-llama")), even);
  auto q = std::dynamic_pointer_cast<LoraLinear>(m.tuner_layers()[0].second);
  ASSERT_TRUE(q);
  // A and B are both non-zero, but built from the odd and even rows of one orthogonal matrix, so B A = 0:
  // the adapter starts as a no-op with both factors trainable
  EXPECT_GT(q->lora_B("default").abs().max().item<double>(), 1e-3);
  EXPECT_GT(q->lora_A("default").abs().max().item<double>(), 1e-3);
  EXPECT_EQ(q->lora_A("default").sizes(), (at::IntArrayRef{4, 32}));
  EXPECT_LT(q->delta_weight("default").abs().max().item<double>(), 1e-6);
  auto odd = AdapterConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 3}, {"init_lora_weights", "orthogonal"}, {"target_modules", {"q_proj"}}}, "cfg");
  const std::string e = error_of([&] { PeftModel bad(load_model(golden_model("tiny-llama")), odd); });
  EXPECT_NE(e.find("even LoRA rank"), std::string::npos) << e;
}

TEST(Options, EffectiveConv2dIsIgnoredOnLinearTargets) {
  // PEFT reads use_effective_conv2d for Conv2d layers only: on Linear targets the adapter is the same one
  EXPECT_EQ(config_error({{"use_effective_conv2d", true}, {"target_modules", {"q_proj"}}}, "LOHA"), "");
  const at::Tensor ids = golden_ids("lora");
  auto logits = [&](const nlohmann::json & extra) {
    nlohmann::json j = {{"peft_type", "LOHA"}, {"r", 4}, {"init_weights", false}, {"target_modules", {"q_proj"}}};
    j.update(extra);
    at::manual_seed(3);
    PeftModel m(load_model(golden_model("tiny-llama")), AdapterConfig::from_json(j, "cfg"));
    at::NoGradGuard g;
    return std::make_pair(m.forward({ids}), m.adapter_state_dict("default"));
  };
  const auto with = logits({{"use_effective_conv2d", true}}), without = logits({{"use_effective_conv2d", false}});
  EXPECT_TRUE(at::equal(with.first, without.first));
  ASSERT_EQ(with.second.size(), without.second.size());
  for (const auto & kv : without.second) EXPECT_TRUE(at::equal(with.second.at(kv.first), kv.second)) << kv.first;
  at::NoGradGuard g;
  EXPECT_FALSE(at::equal(with.first, load_model(golden_model("tiny-llama"))->forward({ids})));  // (an adapter that acts)
}

TEST(Options, BiasModes) {
  // PEFT: "none", "all" or any "<x>_only" (vera_only is VeRA's documented name; vera_lambda_only works too):
  // "<x>_only" trains the biases of the adapted layers and no other
  EXPECT_NE(config_error({{"bias", "some"}, {"target_modules", {"q_proj"}}}, "VERA").find("\"vera_only\""),
            std::string::npos);
  for (const char * mode : {"vera_only", "vera_lambda_only", "none"}) {
    SCOPED_TRACE(mode);
    EXPECT_EQ(config_error({{"bias", mode}, {"target_modules", {"q_proj"}}}, "VERA"), "");
    nlohmann::json j = {{"peft_type", "VERA"}, {"r", 4}, {"bias", mode}, {"target_modules", {"q_proj"}}};
    PeftModel m(load_model(golden_model("tiny-opt")), AdapterConfig::from_json(j, "cfg"));
    std::set<std::string> trained_biases;
    int biases = 0;
    for (const auto & p : named_parameters(m.base_model())) {
      const std::string & n = p.first;
      if (n.size() < 5 || n.compare(n.size() - 5, 5, ".bias") != 0) continue;
      ++biases;
      if (p.second.requires_grad()) trained_biases.insert(n);
    }
    ASSERT_GT(biases, 4);  // (OPT's Linear layers have biases)
    if (std::string(mode) == "none") {
      EXPECT_TRUE(trained_biases.empty());
      continue;
    }
    const auto layers = m.tuner_layers();
    ASSERT_EQ(trained_biases.size(), layers.size());
    for (const auto & l : layers) {
      EXPECT_EQ(trained_biases.count(l.first + ".base_layer.bias"), 1u) << l.first;
    }
  }
}

TEST(Options, CoftLoadsForInferenceOnly) {
  nlohmann::json j = {{"peft_type", "OFT"}, {"r", 0}, {"oft_block_size", 4}, {"coft", true}, {"target_modules", {"q_proj"}}};
  j["inference_mode"] = true;
  EXPECT_NO_THROW(AdapterConfig::from_json(j, "cfg.json"));
  j["inference_mode"] = false;
  EXPECT_NE(error_of([&] { AdapterConfig::from_json(j, "cfg.json"); }).find("training with 'coft'"), std::string::npos);
}

}  // namespace

namespace {

// The configurations of golden case config_checks, as adapter_config.json fields here: each must be
// accepted or refused exactly as upstream PEFT did (when the config is made or applied).
TEST(Options, AcceptedOrRefusedAsUpstream) {
  const auto spec = nlohmann::json::parse(read_file(golden_case("config_checks") + "/case.json"))["checks"];
  const std::map<std::string, nlohmann::json> ours = {
      {"lora_all_linear_layers_to_transform",
       {{"peft_type", "LORA"}, {"target_modules", "all-linear"}, {"layers_to_transform", {0}}}},
      {"lora_regex_layers_to_transform", {{"peft_type", "LORA"}, {"target_modules", ".*q_proj"}, {"layers_to_transform", {0}}}},
      {"lora_layers_pattern_without_layers_to_transform",
       {{"peft_type", "LORA"}, {"target_modules", {"q_proj"}}, {"layers_pattern", "layers"}}},
      {"lora_orthogonal_odd_rank", {{"peft_type", "LORA"}, {"r", 3}, {"init_lora_weights", "orthogonal"}, {"target_modules", {"q_proj"}}}},
      {"lora_orthogonal_even_rank", {{"peft_type", "LORA"}, {"r", 4}, {"init_lora_weights", "orthogonal"}, {"target_modules", {"q_proj"}}}},
      {"loha_use_effective_conv2d_on_linear", {{"peft_type", "LOHA"}, {"target_modules", {"q_proj"}}, {"use_effective_conv2d", true}}},
      {"vera_bias_vera_lambda_only", {{"peft_type", "VERA"}, {"target_modules", {"q_proj"}}, {"bias", "vera_lambda_only"}}},
  };
  ASSERT_EQ(spec.size(), ours.size());
  for (auto it = spec.begin(); it != spec.end(); ++it) {
    ASSERT_TRUE(ours.count(it.key())) << it.key();
    const std::string e = error_of([&] {
      PeftModel m(load_model(golden_case("config_checks") + "/../../" + it.value()["applied_to"].get<std::string>()),
                  AdapterConfig::from_json(ours.at(it.key()), "cfg.json"));
    });
    EXPECT_EQ(e.empty(), it.value()["accepted"].get<bool>())
        << it.key() << ": upstream " << (it.value()["accepted"].get<bool>() ? "accepts" : "refuses: ")
        << it.value().value("error", "") << "; here: " << (e.empty() ? "accepted" : e);
  }
}

}  // namespace
