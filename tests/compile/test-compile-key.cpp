// The compile key and the adapter state's single owner:
//  - every public mutator of PeftModel, and of the adapter layers it exposes, is followed by a compiled
//    forward that must equal the eager one (a stale graph would return the old result);
//  - each field of the key: changing it recompiles, repeating a call with nothing changed does not.
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/peft-model.h"
#include "peft/tuners/lora.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

struct Stale : ::testing::Test {
  std::shared_ptr<PeftModel> m;
  at::Tensor ids = golden_ids("multi_adapter");
  std::string dir = golden_case("multi_adapter") + "/adapters/";
  void SetUp() override {
    m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
    m->load_adapter(dir + "alpha", "alpha");
    m->load_adapter(dir + "beta", "beta");
    m->set_adapter("alpha");
  }
  at::Tensor eager() {
    at::NoGradGuard g;
    return m->forward({ids});
  }
  // compiled after `change` equals eager after it, and `change` changed the output (so the check can fail)
  void check(CompiledModel & c, const std::string & what, const std::function<void()> & change, bool changes = true) {
    at::Tensor before;
    {
      at::NoGradGuard g;
      before = c.forward({ids});
    }
    change();
    at::Tensor now = eager();
    at::NoGradGuard g;
    at::Tensor got = c.forward({ids});
    EXPECT_TRUE(all_close(got, now, 1e-5, 1e-4)) << what << ": compiled result is stale\n" << c.explain();
    if (changes) EXPECT_FALSE(all_close(before, now, 1e-6, 1e-5)) << what << " changed nothing: the check is void";
  }
  std::shared_ptr<TunerLayer> layer(const std::string & path_end) {
    for (const auto & l : m->tuner_layers()) {
      if (l.first.size() >= path_end.size() && l.first.compare(l.first.size() - path_end.size(), path_end.size(), path_end) == 0) {
        return l.second;
      }
    }
    return nullptr;
  }
};

TEST_F(Stale, EveryPeftModelMutator) {
  auto c = compile(*m);
  check(c, "set_adapter", [&] { m->set_adapter("beta"); });
  check(c, "set_adapter (several)", [&] { m->set_adapter(std::vector<std::string>{"alpha", "beta"}); });
  check(c, "merge_adapter", [&] { m->merge_adapter(); }, false);
  check(c, "unmerge_adapter", [&] { m->unmerge_adapter(); }, false);
  check(c, "set_adapters_disabled", [&] { m->set_adapters_disabled(true); });
  check(c, "set_adapters_disabled(false)", [&] { m->set_adapters_disabled(false); });
  check(c, "set_scale", [&] { m->set_scale("alpha", 3.0); });
  check(c, "delete_adapter", [&] { m->delete_adapter("beta"); });
  check(c, "load_adapter + set_adapter", [&] {
    m->load_adapter(dir + "gamma", "gamma");
    m->set_adapter("gamma");
  });
  check(c, "hotswap_adapter", [&] { m->hotswap_adapter(dir + "beta", "alpha"); m->set_adapter("alpha"); });
  check(c, "add_adapter + set_adapter", [&] {
    auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"k_proj"}},
                                         {"init_lora_weights", false}}, "cfg");
    m->add_adapter("fresh", cfg);
    m->set_adapter("fresh");
  });
  check(c, "prepare_for_hotswap + hotswap", [&] {
    m->set_adapter("alpha");
    m->prepare_for_hotswap(8);
    m->hotswap_adapter(dir + "gamma", "alpha");
  });
  check(c, "train(false) after train(true)", [&] { m->train(true); m->train(false); }, false);
}

TEST_F(Stale, EveryLayerMutatorReachableThroughTunerLayers) {
  auto c = compile(*m);
  auto q = layer("layers.0.self_attn.q_proj");
  ASSERT_TRUE(q);
  // merging one layer by hand changes what forward computes there (merged layers run their base)
  check(c, "layer merge", [&] { q->merge({"alpha"}, false); }, false);
  check(c, "layer unmerge_last", [&] { q->unmerge_last(); }, false);
  check(c, "layer merge (beta, not active)", [&] { q->merge({"beta"}, false); });
  check(c, "layer unmerge_all", [&] { q->unmerge_all(); });
  check(c, "layer rescale", [&] { q->rescale("alpha", m->adapter_config("alpha"), "x", 5.0); });
  check(c, "layer pad_rank", [&] { q->pad_rank("alpha", 16); }, false);
  check(c, "layer delete_adapter", [&] { q->delete_adapter("alpha"); });
  auto v = std::dynamic_pointer_cast<LoraLinear>(layer("layers.1.self_attn.v_proj"));
  ASSERT_TRUE(v);
  m->set_adapter(std::vector<std::string>{"alpha", "beta"});
  check(c, "layer delete_adapter (beta)", [&] { v->delete_adapter("beta"); });
  check(c, "LoraLinear::add_adapter", [&] {
    LoraSettings s;
    s.r = 2;
    s.init = "false";
    v->add_adapter("beta", s);
  });
  check(c, "layer restore_merged", [&] {
    q->merge({"beta"}, false);
    q->restore_merged({});  // the caller claims to have restored the weights: the layer runs unmerged again
  });
}

// ---- one test per key field ----

struct KeyFields : Stale {
  size_t compiles_after(CompiledModel & c, const std::function<void()> & call) {
    size_t before = c.stats().compiles;
    call();
    return c.stats().compiles - before;
  }
  void run(CompiledModel & c, const PeftInput & in) {
    at::NoGradGuard g;
    c.forward(in);
  }
  void run(CompiledModel & c, const ForwardInput & in) { run(c, PeftInput(in)); }
};

TEST_F(KeyFields, NothingChangedNoRecompile) {
  auto c = compile(*m);
  run(c, {ids});
  EXPECT_EQ(compiles_after(c, [&] { run(c, {ids}); run(c, {ids}); }), 0u);
}

TEST_F(KeyFields, AdapterInjections) {
  auto c = compile(*m);
  run(c, {ids});
  m->delete_adapter("beta");
  run(c, {ids});  // beta gone: a new key
  EXPECT_EQ(compiles_after(c, [&] {
              m->load_adapter(dir + "beta", "beta");  // same name, new injection
              run(c, {ids});
            }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("injections"), std::string::npos) << c.recompile_reasons().back();
  EXPECT_EQ(compiles_after(c, [&] { run(c, {ids}); }), 0u);
}

TEST_F(KeyFields, ActiveSet) {
  auto c = compile(*m);
  run(c, {ids});
  EXPECT_EQ(compiles_after(c, [&] { m->set_adapter("beta"); run(c, {ids}); }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("active adapters: [alpha] -> [beta]"), std::string::npos)
      << c.recompile_reasons().back();
  EXPECT_EQ(compiles_after(c, [&] { m->set_adapter("alpha"); run(c, {ids}); m->set_adapter("beta"); run(c, {ids}); }), 0u);
}

TEST_F(KeyFields, Disabled) {
  auto c = compile(*m);
  run(c, {ids});
  EXPECT_EQ(compiles_after(c, [&] { auto off = m->disable_adapter(); run(c, {ids}); }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("disabled: false -> true"), std::string::npos);
  EXPECT_EQ(compiles_after(c, [&] { run(c, {ids}); auto off = m->disable_adapter(); run(c, {ids}); }), 0u);
}

TEST_F(KeyFields, LayerSignature) {
  auto c = compile(*m);
  run(c, {ids});
  m->set_adapters_disabled(false);
  EXPECT_EQ(compiles_after(c, [&] { m->prepare_for_hotswap(8); run(c, {ids}); }), 1u);  // ranks change
  EXPECT_NE(c.recompile_reasons().back().find("active here"), std::string::npos) << c.recompile_reasons().back();
  EXPECT_EQ(compiles_after(c, [&] { m->prepare_for_hotswap(8); run(c, {ids}); }), 0u);  // same ranks again
}

TEST_F(KeyFields, Merged) {
  auto c = compile(*m);
  run(c, {ids});
  EXPECT_EQ(compiles_after(c, [&] { m->merge_adapter(); run(c, {ids}); }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("merged: [] -> [alpha]"), std::string::npos) << c.recompile_reasons().back();
  EXPECT_EQ(compiles_after(c, [&] { m->unmerge_adapter(); run(c, {ids}); m->merge_adapter(); run(c, {ids}); }), 0u);
}

TEST_F(KeyFields, TrainingAndGradMode) {
  auto c = compile(*m);
  run(c, {ids});
  EXPECT_EQ(compiles_after(c, [&] { m->train(true); run(c, {ids}); }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("mode changed: eval,no_grad,Float -> train,no_grad,Float"), std::string::npos)
      << c.recompile_reasons().back();
  m->train(false);
  EXPECT_EQ(compiles_after(c, [&] { c.forward({ids}); }), 1u);  // grad enabled
  EXPECT_NE(c.recompile_reasons().back().find("eval,grad"), std::string::npos) << c.recompile_reasons().back();
  EXPECT_EQ(compiles_after(c, [&] { run(c, {ids}); c.forward({ids}); }), 0u);
}

TEST_F(KeyFields, WeightDtype) {
  auto c = compile(*m);
  run(c, {ids});
  m->base_model().to(at::kBFloat16);
  EXPECT_EQ(compiles_after(c, [&] { run(c, {ids}); }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("BFloat16"), std::string::npos) << c.recompile_reasons().back();
  EXPECT_EQ(compiles_after(c, [&] { run(c, {ids}); }), 0u);
}

TEST_F(KeyFields, InputShapesMaskPositionsAndRouting) {
  auto c = compile(*m);
  run(c, {ids});
  EXPECT_EQ(compiles_after(c, [&] { run(c, {ids.narrow(1, 0, 5)}); }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("input shapes changed"), std::string::npos);
  ForwardInput masked{ids};
  masked.attention_mask = at::ones_like(ids);
  EXPECT_EQ(compiles_after(c, [&] { run(c, masked); }), 1u);
  ForwardInput positioned{ids};
  positioned.position_ids = at::arange(ids.size(1)).unsqueeze(0).expand(ids.sizes()).contiguous();
  EXPECT_EQ(compiles_after(c, [&] { run(c, positioned); }), 1u);
  PeftInput mixed;
  mixed.input_ids = ids;
  mixed.adapter_names = {"alpha", "__base__", "beta"};
  EXPECT_EQ(compiles_after(c, [&] { run(c, mixed); }), 1u);
  mixed.adapter_names = {"beta", "alpha", "__base__"};  // another assignment: data, not structure
  EXPECT_EQ(compiles_after(c, [&] { run(c, mixed); run(c, masked); run(c, positioned); run(c, {ids}); }), 0u);
}

TEST_F(KeyFields, KvCache) {
  auto c = compile(*m);
  const ModelConfig & cfg = m->base_model().config();
  auto cache = KVCache::allocate(cfg, ids.size(0), 16, m->base_model().options());
  ForwardInput in{ids};
  in.cache = &cache;
  in.cache_position = at::arange(ids.size(1));
  run(c, in);
  auto bigger = KVCache::allocate(cfg, ids.size(0), 32, m->base_model().options());
  in.cache = &bigger;
  EXPECT_EQ(compiles_after(c, [&] { run(c, in); }), 1u);
  EXPECT_NE(c.recompile_reasons().back().find("kv"), std::string::npos) << c.recompile_reasons().back();
  EXPECT_EQ(compiles_after(c, [&] { run(c, in); }), 0u);
}

}  // namespace
