// Compiled equals eager, for everything that exists: every golden case in every adapter state, with and
// without autograd, with each pass on and off; state-change sequences with their expected recompiles.
#include "../tuners/golden-cases.h"
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

// ---- every golden case, every state, compiled ----

class CompiledGolden : public ::testing::TestWithParam<GoldenCase> {
 protected:
  std::shared_ptr<PeftModel> load() {
    return load_golden(GetParam(), load_model(golden_model(GetParam().model)));
  }
  at::Tensor ids = golden_ids(GetParam().name);
  std::map<std::string, at::Tensor> want = golden_expected(GetParam().name);
};

void check_states(PeftModel & m, CompiledModel & c, const at::Tensor & ids, const std::map<std::string, at::Tensor> & want) {
  EXPECT_CLOSE(c.forward({ids}), want.at("logits"));
  {
    auto off = m.disable_adapter();
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_disabled"));
  }
  EXPECT_CLOSE(c.forward({ids}), want.at("logits"));
  m.merge_adapter();
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_merged"));
  m.unmerge_adapter();
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_unmerged"));
  m.merge_and_unload();
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_merge_and_unload"));
  EXPECT_EQ(c.stats().graph_breaks, 0u);
}

TEST_P(CompiledGolden, InferenceEveryState) {
  auto m = load();
  auto c = compile(*m);
  at::NoGradGuard g;
  check_states(*m, c, ids, want);
  // on, disabled, on (hit), merged, unmerged (hit: same state as "on"), plain: 4 graphs
  EXPECT_EQ(c.stats().compiles, 4u) << c.explain();
}

TEST_P(CompiledGolden, WithAutogradEveryState) {
  auto m = load();
  auto c = compile(*m);
  check_states(*m, c, ids, want);  // grad mode on: no folding, the adapter ops run in the graph
}

TEST_P(CompiledGolden, EveryPassOff) {
  CompileOptions none;
  none.remove_noop_casts = none.fold_adapters = none.fuse_lora_gemm = none.batch_sibling_lora = none.gemv_decode =
      none.small_row_linear = none.constant_propagation = none.common_subexpressions = false;
  auto m = load();
  auto c = compile(*m, none);
  at::NoGradGuard g;
  check_states(*m, c, ids, want);
}

TEST_P(CompiledGolden, EqualsEagerClosely) {
  auto m = load();
  auto c = compile(*m);
  at::NoGradGuard g;
  // folded weights round differently from the unfolded sum: agreement to ~1e-5 absolute
  EXPECT_TRUE(all_close(c.forward({ids}), m->forward({ids}), 5e-5, 1e-4));
  at::Tensor one = ids.narrow(0, 0, 1).narrow(1, 0, 1);  // single row: the GEMV path
  EXPECT_TRUE(all_close(c.forward({one}), m->forward({one}), 5e-5, 1e-4));
}

TEST_P(CompiledGolden, FoldedInferenceGraphIsTheBaseGraph) {
  // with autograd off, every adapter folds into the weights: the graph has exactly the base model's ops
  auto m = load();
  auto c = compile(*m);
  auto plain = compile(load_model(golden_model(GetParam().model)));
  at::NoGradGuard g;
  EXPECT_CLOSE(c.forward({ids}), want.at("logits"));
  plain.forward({ids});
  EXPECT_EQ(c.last_graph_ops(), plain.last_graph_ops()) << c.last_graph();
}

INSTANTIATE_TEST_SUITE_P(Peft, CompiledGolden, ::testing::ValuesIn(single_adapter_cases()),
                         [](const auto & i) { return i.param.name; });

// ---- state sequences with several adapters, and the recompiles they cost ----

struct CompiledMulti : ::testing::Test {
  std::shared_ptr<PeftModel> m;
  std::map<std::string, at::Tensor> want = golden_expected("multi_adapter");
  at::Tensor ids = golden_ids("multi_adapter");
  void SetUp() override {
    m = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
    for (const char * n : {"alpha", "beta", "gamma"}) m->load_adapter(golden_case("multi_adapter") + "/adapters/" + n, n);
  }
};

TEST_F(CompiledMulti, SwitchingReusesGraphs) {
  auto c = compile(*m);
  at::NoGradGuard g;
  const char * seq[] = {"alpha", "beta", "gamma", "alpha", "beta", "gamma", "alpha"};
  for (const char * n : seq) {
    m->set_adapter(n);
    EXPECT_CLOSE(c.forward({ids}), want.at(std::string("logits_") + n)) << n;
  }
  EXPECT_EQ(c.stats().compiles, 3u) << c.explain();  // a state seen before does not recompile
  EXPECT_EQ(c.stats().cache_hits, 4u);
  {
    auto off = m->disable_adapter();
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_base"));
  }
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_alpha"));
  EXPECT_EQ(c.stats().compiles, 4u);
  ASSERT_FALSE(c.recompile_reasons().empty());
  EXPECT_NE(c.recompile_reasons().back().find("adapter state changed"), std::string::npos) << c.recompile_reasons().back();
}

TEST_F(CompiledMulti, MixedBatchEagerAndCompiled) {
  auto c = compile(*m);
  at::NoGradGuard g;
  PeftInput in;
  in.input_ids = ids;
  in.adapter_names = {"alpha", "__base__", "gamma"};  // as in the golden case
  EXPECT_CLOSE(m->forward(in), want.at("logits_mixed_batch"));
  EXPECT_CLOSE(c.forward(in), want.at("logits_mixed_batch"));
  // another assignment of adapters to rows is data, not structure: same graph
  in.adapter_names = {"beta", "beta", "__base__"};
  at::Tensor got = c.forward(in);
  EXPECT_CLOSE(got.narrow(0, 0, 1), want.at("logits_beta").narrow(0, 0, 1));
  EXPECT_CLOSE(got.narrow(0, 1, 1), want.at("logits_beta").narrow(0, 1, 1));
  EXPECT_CLOSE(got.narrow(0, 2, 1), want.at("logits_base").narrow(0, 2, 1));
  EXPECT_EQ(c.stats().compiles, 1u) << c.explain();
  // bad routing is an error, eager and compiled
  in.adapter_names = {"alpha", "nope", "gamma"};
  EXPECT_THROW(m->forward(in), peft::Error);
  EXPECT_THROW(c.forward(in), peft::Error);
  in.adapter_names = {"alpha"};
  EXPECT_THROW(c.forward(in), peft::Error);
  in.adapter_names = {"alpha", "beta", "gamma"};
  m->set_adapter("alpha");
  m->merge_adapter();
  EXPECT_THROW(m->forward(in), peft::Error);
}

TEST_F(CompiledMulti, MixedBatchRefusedInTrainingAndForOtherMethods) {
  PeftInput in;
  in.input_ids = ids;
  in.adapter_names = {"alpha", "__base__", "gamma"};
  m->train();
  EXPECT_THROW(m->forward(in), peft::Error);
  auto ia3 = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("ia3") + "/adapter");
  in.adapter_names = {"default", "__base__", "default"};
  EXPECT_THROW(ia3->forward(in), peft::Error);
}

TEST_F(CompiledMulti, DeleteAndReloadIsANewGraphNeverAStaleOne) {
  auto c = compile(*m);
  at::NoGradGuard g;
  m->set_adapter("beta");
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_beta"));
  m->delete_adapter("beta");
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_alpha"));  // active fell back to alpha
  // load gamma's weights under the name beta: same name, other tensors -> must not replay the old graph
  m->load_adapter(golden_case("multi_adapter") + "/adapters/gamma", "beta");
  m->set_adapter("beta");
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_gamma"));
}

TEST_F(CompiledMulti, MergeUnmergeAndSeveralActive) {
  auto c = compile(*m);
  at::NoGradGuard g;
  m->set_adapter(std::vector<std::string>{"alpha", "gamma"});
  at::Tensor both = m->forward({ids});
  EXPECT_TRUE(all_close(c.forward({ids}), both, 1e-5, 1e-5));
  m->merge_adapter();
  EXPECT_TRUE(all_close(c.forward({ids}), both, 1e-4, 1e-4));
  m->unmerge_adapter();
  EXPECT_TRUE(all_close(c.forward({ids}), both, 1e-5, 1e-5));
  EXPECT_EQ(c.stats().compiles, 2u) << c.explain();
}

TEST_F(CompiledMulti, ScaleChangeIsReadLiveWithoutRecompile) {
  auto c = compile(*m);
  at::NoGradGuard g;
  m->set_adapter("alpha");
  c.forward({ids});
  m->set_scale("alpha", 0.0);  // scale 0: the adapter contributes nothing
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_base"));
  m->set_scale("alpha", 1.0);
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_alpha"));
  EXPECT_EQ(c.stats().compiles, 1u) << c.explain();
  EXPECT_GE(c.stats().refolds, 2u);  // the folded weights followed the scale
}

TEST_F(CompiledMulti, HotSwapNeedsNoRecompile) {
  auto c = compile(*m);
  at::NoGradGuard g;
  m->set_adapter("alpha");
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_alpha"));
  m->hotswap_adapter(golden_case("multi_adapter") + "/adapters/beta", "alpha");  // same rank and targets
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_beta"));
  EXPECT_EQ(c.stats().compiles, 1u) << c.explain();
  // an adapter of a larger rank does not fit (rank 4 into gamma's rank 2), and nothing changes
  m->set_adapter("gamma");
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_gamma"));
  EXPECT_THROW(m->hotswap_adapter(golden_case("multi_adapter") + "/adapters/alpha", "gamma"), peft::Error);
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_gamma"));
}

TEST_F(CompiledMulti, HotSwapToAnotherRankAfterPadding) {
  m->set_adapter("alpha");
  m->prepare_for_hotswap(4);  // alpha/beta have rank 4, gamma rank 2
  auto c = compile(*m);
  at::NoGradGuard g;
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_alpha"));  // zero padding changes nothing
  m->hotswap_adapter(golden_case("multi_adapter") + "/adapters/gamma", "alpha");
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_gamma"));
  m->hotswap_adapter(golden_case("multi_adapter") + "/adapters/beta", "alpha");
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_beta"));
  EXPECT_EQ(c.stats().compiles, 1u) << c.explain();
  m->set_adapter("gamma");  // gamma itself, padded to rank 4, still gives its own output
  EXPECT_CLOSE(c.forward({ids}), want.at("logits_gamma"));
}

TEST_F(CompiledMulti, InPlaceWeightChangeIsSeen) {
  auto c = compile(*m);
  at::NoGradGuard g;
  m->set_adapter("alpha");
  c.forward({ids});
  auto layer = m->tuner_layers().front().second;
  for (auto & p : layer->adapter_parameters("alpha")) p.second.mul_(0.0);  // e.g. an optimizer step
  at::Tensor eager = m->forward({ids});
  EXPECT_TRUE(all_close(c.forward({ids}), eager, 1e-5, 1e-5));
  EXPECT_EQ(c.stats().compiles, 1u);
  EXPECT_GE(c.stats().refolds, 1u);
}

TEST_F(CompiledMulti, RecompileLogAndEviction) {
  CompileOptions o;
  o.cache_capacity = 2;
  auto c = compile(*m, o);
  at::NoGradGuard g;
  for (int64_t s : {3, 5, 7, 3}) c.forward({ids.narrow(1, 0, s)});
  EXPECT_EQ(c.stats().compiles, 4u);
  EXPECT_EQ(c.stats().evictions, 2u);
  EXPECT_NE(c.recompile_reasons().back().find("evicted"), std::string::npos);
  EXPECT_NE(c.explain().find("0 graph breaks"), std::string::npos) << c.explain();
}

// ---- what the passes do ----

TEST(CompilePasses, FoldRemovesAdapterNodesForInference) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("dora") + "/adapter");
  auto c = compile(*m);
  at::NoGradGuard g;
  c.forward({golden_ids("dora")});
  auto ops = c.last_graph_ops();
  EXPECT_EQ(ops.count("peft::dora_add"), 0u) << c.last_graph();
  EXPECT_EQ(ops.count("peft::lora_add"), 0u);
}

TEST(CompilePasses, TrainingGraphKeepsAdaptersBatchedAndFused) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("lora_rslora_dropout") + "/adapter",
                                      "default", true);
  auto c = compile(*m);
  c.forward({golden_ids("lora")});  // grad mode on, eval: dropout inactive
  auto ops = c.last_graph_ops();
  EXPECT_EQ(ops.count("peft::lora_add"), 0u) << c.last_graph();
  EXPECT_EQ(ops["peft::lora_shrink"], 4u);       // q/k/v of 2 layers, gate/up of 2 layers share inputs
  EXPECT_EQ(ops["peft::lora_expand_add"], 10u);  // the 10 adapters behind those 4 shared inputs
  EXPECT_EQ(ops["peft::lora_add_fused"], 5u);    // o_proj, down_proj x 2, lm_head
}

TEST(CompilePasses, GemvForSingleRows) {
  auto m = load_model(golden_model("tiny-llama"));
  auto c = compile(m);
  at::NoGradGuard g;
  at::Tensor one = golden_ids("lora").narrow(0, 0, 1).narrow(1, 0, 1);
  EXPECT_TRUE(all_close(c.forward({one}), m->forward({one}), 1e-5, 1e-5));
  EXPECT_EQ(c.last_graph_ops().count("aten::linear"), 0u) << c.last_graph();
  EXPECT_EQ(c.last_graph_ops()["peft::linear_small"], 15u);  // 7 per layer + lm_head: the small-row kernel
  // with grad mode on (the graph may be differentiated), or the small-row kernel off: BLAS's GEMV
  {
    at::AutoGradMode on(true);
    EXPECT_TRUE(all_close(c.forward({one}), m->forward({one}), 1e-5, 1e-5));
    EXPECT_EQ(c.last_graph_ops()["peft::linear_gemv"], 15u) << c.last_graph();
  }
  CompileOptions off;
  off.small_row_linear = false;
  auto d = compile(m, off);
  EXPECT_TRUE(all_close(d.forward({one}), m->forward({one}), 1e-5, 1e-5));
  EXPECT_EQ(d.last_graph_ops()["peft::linear_gemv"], 15u);
}

TEST(CompilePasses, SmallRowLinearForBatchedDecode) {
  auto m = load_model(golden_model("tiny-llama"));
  auto c = compile(m);
  const at::Tensor ids = golden_ids("lora").narrow(1, 0, 1).repeat({8, 1}).narrow(0, 0, 8);  // (8, 1)
  {
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(c.forward({ids}), m->forward({ids}), 1e-5, 1e-5));
    EXPECT_EQ(c.last_graph_ops().count("aten::linear"), 0u) << c.last_graph();
    EXPECT_EQ(c.last_graph_ops()["peft::linear_small"], 15u);  // 7 per layer + lm_head
  }
  // with grad mode on, the graph may be differentiated: the linears stay
  EXPECT_TRUE(all_close(c.forward({ids}), m->forward({ids}), 1e-5, 1e-5));
  EXPECT_EQ(c.last_graph_ops().count("peft::linear_small"), 0u) << c.last_graph();
  // on by default; off by its option
  CompileOptions off;
  off.small_row_linear = false;
  auto d = compile(m, off);
  at::NoGradGuard g;
  EXPECT_TRUE(all_close(d.forward({ids}), m->forward({ids}), 1e-5, 1e-5));
  EXPECT_EQ(d.last_graph_ops().count("peft::linear_small"), 0u);
  auto e = compile(m);
  e.forward({ids});
  EXPECT_EQ(e.last_graph_ops()["peft::linear_small"], 15u);
}

TEST(CompileGuards, TrainEvalAndGradModeAreKeys) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("lora_rslora_dropout") + "/adapter",
                                      "default", true);
  auto c = compile(*m);
  at::Tensor ids = golden_ids("lora");
  at::Tensor eval_grad = c.forward({ids});
  {
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(c.forward({ids}), eval_grad, 5e-5, 1e-4));  // folded vs unfolded rounding
  }
  m->train();
  at::manual_seed(5);
  at::Tensor eager = m->forward({ids});
  at::manual_seed(5);
  at::Tensor compiled = c.forward({ids});  // dropout 0.1 active: same random stream as eager
  EXPECT_TRUE(all_close(compiled, eager, 1e-5, 1e-5));
  EXPECT_FALSE(all_close(compiled, eval_grad, 1e-3, 1e-3));
  EXPECT_EQ(c.stats().compiles, 3u);
  EXPECT_NE(c.recompile_reasons().back().find("mode changed"), std::string::npos);
}

TEST(CompileGuards, OutOfRangeIdsStillRejected) {
  auto c = compile(load_model(golden_model("tiny-llama")));
  EXPECT_THROW(c.forward({at::full({1, 2}, 500, at::kLong)}), peft::Error);
}

}  // namespace

namespace {

TEST(CompileDtype, Bfloat16BaseWithFloat32Adapter) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama"), at::kBFloat16), golden_case("dora") + "/adapter");
  auto c = compile(*m);
  at::NoGradGuard g;
  at::Tensor ids = golden_ids("dora");
  at::Tensor eager = m->forward({ids}).to(at::kFloat), compiled = c.forward({ids}).to(at::kFloat);
  EXPECT_TRUE(all_close(compiled, eager, 5e-2, 5e-2));
  EXPECT_TRUE(all_close(compiled, golden_expected("dora").at("logits"), 1e-1, 1e-1));
}

}  // namespace
