// Golden cases made by tests/data/golden/gen_extra.py with upstream PEFT:
//  - several_active: plain LoRA, DoRA and a second LoRA active together in either order (PEFT's DoRA
//    rescales the running output, so the order matters), merged, in mixed batches and combined by
//    add_weighted_adapter, eager and compiled;
//  - mts_*: modules_to_save on the head or the embedding of a tied-embedding model, through
//    merge_and_unload (the trained copy stays untied, as in PEFT).
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/tuners/lora-weighted.h"
#include "peft/tuners/lora.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

nlohmann::json case_json(const std::string & name) {
  return nlohmann::json::parse(read_file(golden_case(name) + "/case.json"));
}

struct Several : ::testing::Test {
  std::shared_ptr<PeftModel> m;
  std::map<std::string, at::Tensor> want = golden_expected("several_active");
  at::Tensor ids = golden_ids("several_active");
  nlohmann::json spec = case_json("several_active");
  void SetUp() override {
    m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
    for (const char * n : {"plain", "dora", "other"}) m->load_adapter(golden_case("several_active") + "/adapters/" + n, n);
  }
  at::Tensor eager(const PeftInput & in) {
    at::NoGradGuard g;
    return m->forward(in);
  }
  at::Tensor eager(const ForwardInput & in) { return eager(PeftInput(in)); }
};

TEST_F(Several, ActiveSetsMatchPeftEagerAndCompiled) {
  auto compiled = compile(*m);
  for (auto it = spec["active_sets"].begin(); it != spec["active_sets"].end(); ++it) {
    m->set_adapter(it.value().get<std::vector<std::string>>());
    EXPECT_CLOSE(eager({ids}), want.at(it.key())) << it.key();
    at::NoGradGuard g;
    EXPECT_CLOSE(compiled.forward({ids}), want.at(it.key())) << it.key() << " (compiled)";
  }
  // the order of plain and DoRA matters in PEFT, and here
  EXPECT_FALSE(all_close(want.at("logits_plain_dora"), want.at("logits_dora_plain")));
  auto off = m->disable_adapter();
  EXPECT_CLOSE(eager({ids}), want.at("logits_base"));
}

TEST_F(Several, MergedAndUnmergedMatchPeft) {
  m->set_adapter(std::vector<std::string>{"plain", "dora"});
  auto compiled = compile(*m);
  m->merge_adapter();
  EXPECT_CLOSE(eager({ids}), want.at("logits_plain_dora_merged"));
  {
    at::NoGradGuard g;
    EXPECT_CLOSE(compiled.forward({ids}), want.at("logits_plain_dora_merged"));
  }
  m->unmerge_adapter();
  EXPECT_CLOSE(eager({ids}), want.at("logits_plain_dora_unmerged"));
  at::NoGradGuard g;
  EXPECT_CLOSE(compiled.forward({ids}), want.at("logits_plain_dora_unmerged"));
}

TEST_F(Several, MixedBatchWithDoraLoadedRefusesOnlyDoraRows) {
  PeftInput in;
  in.input_ids = ids;
  in.adapter_names = spec["mixed_batch"]["adapter_names"].get<std::vector<std::string>>();
  EXPECT_CLOSE(eager(in), want.at("logits_mixed_batch"));
  auto compiled = compile(*m);
  {
    at::NoGradGuard g;
    EXPECT_CLOSE(compiled.forward(in), want.at("logits_mixed_batch"));
  }
  in.adapter_names = spec["mixed_batch"]["with_dora_row"]["adapter_names"].get<std::vector<std::string>>();
  const std::string e = error_of([&] { eager(in); });
  EXPECT_NE(e.find("adapter_names[0] = 'dora'"), std::string::npos) << e;
  EXPECT_NE(e.find("DoRA"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { compiled.forward(in); }), "");
}

// Which adapters cannot run in a mixed batch is worked out once per change of the adapters, not per call:
// every change must be seen (a DoRA adapter loaded later, or under a name a plain one had; a plain one
// under a name a DoRA one had), and the refusal names the same first DoRA layer as before.
TEST_F(Several, MixedBatchRefusalFollowsEveryAdapterChange) {
  const std::string dir = golden_case("several_active") + "/adapters/";
  PeftInput in;
  in.input_ids = ids;
  in.adapter_names = spec["mixed_batch"]["adapter_names"].get<std::vector<std::string>>();  // plain, base, other
  EXPECT_CLOSE(eager(in), want.at("logits_mixed_batch"));
  // the refusal's text: the first adapter layer holding the DoRA adapter, in layer order
  auto refusal = [&](const std::string & name) {
    for (const auto & l : m->tuner_layers()) {
      if (l.second->has_adapter(name) && !l.second->mixed_batch_refusal(name).empty()) {
        return "adapter_names[0] = '" + name + "': " + l.second->name() + " at '" + l.first +
               "' cannot run in a mixed-adapter batch (PEFT: \"Cannot pass `adapter_names` when DoRA is enabled\")";
      }
    }
    return std::string("(no DoRA layer)");
  };
  PeftInput row;
  row.input_ids = ids;
  auto rows = [&](const std::string & first) {
    row.adapter_names = {first, kBaseAdapter, "plain"};
    return error_of([&] { eager(row); });
  };
  EXPECT_EQ(rows("dora"), refusal("dora"));
  EXPECT_EQ(rows("other"), "");
  // a DoRA adapter loaded after the check ran: refused
  m->load_adapter(dir + "dora", "dora2");
  EXPECT_EQ(rows("dora2"), refusal("dora2"));
  EXPECT_NE(refusal("dora2"), "(no DoRA layer)");
  // a DoRA adapter under the name a plain one had: refused; and the other way round: accepted
  m->delete_adapter("other");
  m->load_adapter(dir + "dora", "other");
  EXPECT_EQ(rows("other"), refusal("other"));
  m->delete_adapter("dora");
  EXPECT_EQ(rows("dora"), "adapter_names[0] = 'dora' is not an adapter of the model (nor __base__)");
  m->load_adapter(dir + "other", "dora");
  EXPECT_EQ(rows("dora"), "");
  // after set_adapter, merge and unmerge: the same answers
  m->set_adapter("dora2");
  m->merge_adapter();
  EXPECT_NE(rows("dora").find("while adapters are merged"), std::string::npos);
  m->unmerge_adapter();
  EXPECT_EQ(rows("dora"), "");
  EXPECT_EQ(rows("dora2"), refusal("dora2"));
  // the plain folder under its new name computes what "other" did
  m->delete_adapter("other");
  m->load_adapter(dir + "other", "other");
  EXPECT_CLOSE(eager(in), want.at("logits_mixed_batch"));
}

// PEFT's combination of DoRA sources: a DoRA adapter exactly when the first source is one, r = alpha =
// the new rank, A and B combined from the sources; its magnitude vector comes from the random
// initialisation of the new adapter (PEFT never recomputes it), which no other RNG reproduces, so it is
// taken from PEFT's saved combination before the logits are compared.
TEST_F(Several, WeightedCombinationsOfDoraSourcesMatchPeft) {
  auto compiled = compile(*m);
  for (auto it = spec["weighted"].begin(); it != spec["weighted"].end(); ++it) {
    const std::string name = it.key();
    const auto & w = it.value();
    add_weighted_adapter(*m, w["adapters"].get<std::vector<std::string>>(), w["weights"].get<std::vector<double>>(),
                         name, {w["combination_type"].get<std::string>()});
    const auto & made = spec["weighted_adapters"][name];
    const auto & cfg = m->adapter_config(name).opts<LoraOptions>();
    EXPECT_EQ(cfg.r, made["r"].get<int64_t>()) << name;
    EXPECT_EQ(cfg.alpha, made["lora_alpha"].get<double>()) << name;
    EXPECT_EQ(cfg.use_dora, made["use_dora"].get<bool>()) << name;
    // PEFT's saved tensors: A and B must agree (as the product for svd, whose factors are unique up to sign)
    PeftModel ref(load_model(golden_model("tiny-llama")));
    ref.load_adapter(golden_case("several_active") + "/" + made["folder"].get<std::string>(), name);
    for (const auto & l : m->tuner_layers()) {
      auto ours = std::dynamic_pointer_cast<LoraLinear>(l.second);
      if (!ours || !ours->has_adapter(name)) continue;
      std::shared_ptr<LoraLinear> theirs;
      for (const auto & r : ref.tuner_layers()) {
        if (r.first == l.first) theirs = std::dynamic_pointer_cast<LoraLinear>(r.second);
      }
      ASSERT_TRUE(theirs) << l.first;
      EXPECT_TRUE(all_close(ours->delta_weight(name), theirs->delta_weight(name), 1e-5, 1e-4)) << name << " " << l.first;
      if (w["combination_type"] != "svd") {
        EXPECT_TRUE(all_close(ours->lora_A(name), theirs->lora_A(name), 1e-6, 1e-5)) << name << " " << l.first;
        EXPECT_TRUE(all_close(ours->lora_B(name), theirs->lora_B(name), 1e-6, 1e-5)) << name << " " << l.first;
      }
      if (cfg.use_dora) {
        at::NoGradGuard g;
        ours->magnitude(name).copy_(theirs->magnitude(name));
      }
    }
    m->set_adapter(name);
    EXPECT_CLOSE(eager({ids}), want.at("logits_" + name)) << name;
    at::NoGradGuard g;
    EXPECT_CLOSE(compiled.forward({ids}), want.at("logits_" + name)) << name << " (compiled)";
  }
}

class TiedModulesToSave : public ::testing::TestWithParam<std::string> {};

TEST_P(TiedModulesToSave, MergeAndUnloadKeepsTheTrainedCopyUntied) {
  const std::string name = GetParam();
  const auto spec = case_json(name);
  const auto want = golden_expected(name);
  const at::Tensor ids = golden_ids(name);
  for (bool compiled : {false, true}) {
    auto base = load_model(golden_case(name) + "/../../" + spec["model"].get<std::string>());
    ASSERT_TRUE(base->config().tie_word_embeddings);
    auto m = PeftModel::from_pretrained(base, golden_case(name) + "/adapter");
    auto c = compile(*m);
    auto run = [&](const ForwardInput & in) {
      at::NoGradGuard g;
      return compiled ? c.forward(in) : m->forward(in);
    };
    EXPECT_CLOSE(run({ids}), want.at("logits")) << name;
    {
      auto off = m->disable_adapter();
      EXPECT_CLOSE(run({ids}), want.at("logits_disabled")) << name;
    }
    auto plain = m->merge_and_unload();
    at::NoGradGuard g;
    at::Tensor got = compiled ? peft::compile(plain).forward({ids}) : plain->forward({ids});
    EXPECT_CLOSE(got, want.at("logits_merge_and_unload")) << name << (compiled ? " (compiled)" : "");
    // as PEFT: no longer tied, and the config says so
    EXPECT_FALSE(plain->config().tie_word_embeddings) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, TiedModulesToSave,
                         ::testing::Values("mts_tied_opt", "mts_embed_opt", "mts_tied_llama", "mts_tied_llama_embed"));

}  // namespace
