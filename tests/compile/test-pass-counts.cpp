// Every graph pass fires where it should, counted: a pass that silently stops matching (for instance
// because another LibTorch version traces the model into other ops) fails here, not just gets slower.
// The counts are read from CompiledModel::explain() ("passes: name=count ..." for each cached graph).
#include "peft/compile/compile.h"
#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

// name -> count of the one cached graph of `c`
std::map<std::string, size_t> pass_counts(const CompiledModel & c) {
  const std::string e = c.explain();
  std::map<std::string, size_t> out;
  const size_t at = e.find("passes:");
  if (at == std::string::npos) return out;
  std::istringstream line(e.substr(at + 7, e.find('\n', at) - at - 7));
  for (std::string kv; line >> kv;) {
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) out[kv.substr(0, eq)] = std::stoul(kv.substr(eq + 1));
  }
  return out;
}

std::shared_ptr<PeftModel> adapter_model(const std::string & golden, bool trainable = false) {
  return PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case(golden) + "/adapter", "default", trainable);
}

// (the counts are of tiny-llama: 2 layers, 7 Linears each + lm_head; the golden adapters' targets)

TEST(PassCounts, InferenceFoldsAdaptersAndRemovesNoopCasts) {
  auto m = adapter_model("dora");  // DoRA on q_proj, v_proj of 2 layers
  auto c = compile(*m);
  at::NoGradGuard g;
  c.forward({golden_ids("dora")});
  auto n = pass_counts(c);
  EXPECT_EQ(n["fold_adapters"], 4u) << c.explain();
  EXPECT_EQ(n["remove_noop_casts"], 2u) << c.explain();  // the attention's float casts of float tensors
  EXPECT_EQ(n["gemv_decode"], 0u) << c.explain();         // (a whole sequence: no single-row linears)
  EXPECT_EQ(n["batch_sibling_lora"], 0u) << c.explain();  // (folded: no adapter node left to batch)
}

TEST(PassCounts, TrainingBatchesSiblingsAndFusesTheRest) {
  auto m = adapter_model("lora_rslora_dropout", true);  // LoRA on every Linear
  auto c = compile(*m);
  c.forward({golden_ids("lora")});  // grad mode: nothing folded or hoisted
  auto n = pass_counts(c);
  EXPECT_EQ(n["batch_sibling_lora"], 10u) << c.explain();  // q/k/v and gate/up of 2 layers: 10 adapters, 4 inputs
  EXPECT_EQ(n["fuse_lora_gemm"], 5u) << c.explain();       // o_proj, down_proj x 2, lm_head
  EXPECT_EQ(n.count("fold_adapters"), 0u) << c.explain();
  EXPECT_EQ(n.count("hoist_weight_computations"), 0u) << c.explain();
  EXPECT_EQ(n["remove_noop_casts"], 2u) << c.explain();
}

TEST(PassCounts, ScalesFoldIntoWeightsAndWeightMathIsHoisted) {
  {
    auto m = adapter_model("ia3");  // IA3: k/v output scales and the down_proj input scale, 2 layers
    auto c = compile(*m);
    at::NoGradGuard g;
    c.forward({golden_ids("ia3")});
    auto n = pass_counts(c);
    EXPECT_EQ(n["fold_linear_algebra"], 6u) << c.explain();
    EXPECT_EQ(n["hoist_weight_computations"], 6u) << c.explain();
    EXPECT_EQ(n["remove_noop_casts"], 8u) << c.explain();
  }
  {
    auto m = adapter_model("oft");  // OFT: the rotation is computed from the weights alone
    auto c = compile(*m);
    at::NoGradGuard g;
    c.forward({golden_ids("oft")});
    auto n = pass_counts(c);
    EXPECT_EQ(n["hoist_weight_computations"], 56u) << c.explain();
    EXPECT_EQ(n["fold_linear_algebra"], 4u) << c.explain();
  }
}

TEST(PassCounts, DecodeRowsUseTheGemvKernels) {
  auto m = adapter_model("lora");
  auto c = compile(*m);
  at::NoGradGuard g;
  c.forward({golden_ids("lora").narrow(0, 0, 1).narrow(1, 0, 1)});  // one row, one token
  auto n = pass_counts(c);
  EXPECT_EQ(n["gemv_decode"], 15u) << c.explain();  // 7 Linears per layer + lm_head
  EXPECT_EQ(n["fold_adapters"], 4u) << c.explain();
}

TEST(PassCounts, SwitchedOffPassesDoNotRun) {
  auto m = adapter_model("lora_rslora_dropout", true);
  CompileOptions o;
  o.batch_sibling_lora = false;
  o.fuse_lora_gemm = false;
  o.remove_noop_casts = false;
  auto c = compile(*m, o);
  c.forward({golden_ids("lora")});
  auto n = pass_counts(c);
  EXPECT_EQ(n.count("batch_sibling_lora") + n.count("fuse_lora_gemm") + n.count("remove_noop_casts"), 0u) << c.explain();
}

}  // namespace
