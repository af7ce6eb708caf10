// Gradient checkpointing (issue 23, training memory): each decoder layer keeps only its input and runs
// again in the backward pass. The gradients equal a run without it (dropout included: the recomputation
// draws the same numbers) on every architecture, eager and compiled (each layer one peft::checkpointed
// node of the captured graph); `peft train --gradient-checkpointing` gives the plain run's steps, with
// --compile too.
#include "peft/compile/compile.h"
#include "peft/model/checkpoint.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::vector<at::Tensor> grads_of(PeftModel & m, const at::Tensor & ids, uint64_t seed, CompiledModel * c = nullptr) {
  for (auto p : m.trainable_parameters()) p.mutable_grad() = at::Tensor();
  at::manual_seed(seed);  // the same dropout masks for both runs
  causal_lm_loss(c ? c->forward({ids}) : m.forward({ids}), ids).backward();
  std::vector<at::Tensor> g;
  for (const auto & p : m.trainable_parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
  return g;
}

}  // namespace

TEST(GradientCheckpointing, GradientsEqualWithoutItOnEveryArchitecture) {
  for (const char * name : {"tiny-llama", "tiny-opt", "tiny-gpt2", "tiny-gpt-neox", "tiny-gemma2", "tiny-qwen3-sliding"}) {
    at::manual_seed(3);
    auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"},
                                         {"r", 4},
                                         {"lora_alpha", 8},
                                         {"lora_dropout", 0.1},
                                         {"init_lora_weights", false},
                                         {"target_modules", "all-linear"}},
                                        "config");
    auto m = std::make_shared<PeftModel>(load_model(golden_model(name)), cfg);
    m->train();
    const at::Tensor ids = at::randint(m->base_model().config().vocab_size, {2, 11}, at::kLong);
    const auto want = grads_of(*m, ids, 17);
    m->base_model().set_gradient_checkpointing(true);
    const auto got = grads_of(*m, ids, 17);
    ASSERT_EQ(got.size(), want.size()) << name;
    size_t nonzero = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE(want[i].defined() && got[i].defined()) << name << " " << i;
      EXPECT_TRUE(all_close(got[i], want[i], 1e-6, 1e-5)) << name << ": gradient " << i;
      if (want[i].abs().max().item<double>() > 0) ++nonzero;
    }
    EXPECT_EQ(nonzero, want.size()) << name << ": every adapter tensor, the first layer's too, gets a gradient";
    // compiled: the captured graph holds each decoder layer as one recomputable node
    auto c = compile(*m);
    const auto comp = grads_of(*m, ids, 17, &c);
    const int64_t layers = m->base_model().config().num_layers;
    EXPECT_EQ(c.last_graph_ops()["peft::checkpointed"], static_cast<size_t>(layers)) << name << "\n" << c.last_graph();
    ASSERT_EQ(comp.size(), want.size()) << name;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE(comp[i].defined()) << name << " " << i;
      EXPECT_TRUE(all_close(comp[i], want[i], 1e-6, 1e-5)) << name << ": compiled gradient " << i;
    }
    // turned off, the same compiled model captures the layers inline again (a new graph, not the old one)
    m->base_model().set_gradient_checkpointing(false);
    const auto off = grads_of(*m, ids, 17, &c);
    EXPECT_EQ(c.last_graph_ops().count("peft::checkpointed"), 0u) << name;
    for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(all_close(off[i], want[i], 1e-6, 1e-5)) << name << " " << i;
    m->base_model().set_gradient_checkpointing(true);
    // inference is untouched: eval mode or no autograd runs the layers plainly
    m->train(false);
    at::NoGradGuard g;
    m->base_model().set_gradient_checkpointing(false);
    const at::Tensor plain = m->forward({ids});
    m->base_model().set_gradient_checkpointing(true);
    EXPECT_TRUE(at::equal(m->forward({ids}), plain)) << name;
  }
}

// checkpoint() itself: only the input is kept, the result needs a gradient even when the input does not,
// and the recomputation sees the forward's random numbers
TEST(GradientCheckpointing, CheckpointRecomputesWithTheSameRandomNumbers) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({4, 4}).requires_grad_(true);
  const at::Tensor x = at::randn({3, 4});
  auto fn = [w](const at::Tensor & a) { return at::dropout(at::mm(a, w), 0.5, true).sum(1); };
  at::manual_seed(9);
  fn(x).sum().backward();
  const at::Tensor want = w.grad().clone();
  w.mutable_grad() = at::Tensor();
  at::manual_seed(9);
  const at::Tensor out = checkpoint(x, fn);
  EXPECT_TRUE(out.requires_grad());
  at::randn({100});  // the random stream moves on before the backward pass
  out.sum().backward();
  EXPECT_TRUE(at::equal(w.grad(), want));
  // a second backward through the same checkpoint is refused with a message
  EXPECT_THROW(out.sum().backward(), std::exception);
}

TEST(GradientCheckpointing, CliRunEqualsThePlainRunEagerAndCompiled) {
  const std::string dir = temp_dir("grad-ckpt");
  const std::string data = make_text(dir);
  const std::string common = "train --model " + golden_model("tiny-llama") +
                             " --byte-tokenizer --method lora --r 4 --lora-dropout 0.1 --target-modules q_proj,v_proj,down_proj --data " +
                             data + " --max-length 32 --batch-size 2 --steps 3 --lr 1e-2 --seed 3 --no-plot";
  auto run = [&](const std::string & tag, const std::string & extra) {
    std::string out;
    EXPECT_EQ(run_cli(common + " --log-file " + dir + "/" + tag + ".jsonl --out " + dir + "/" + tag + " " + extra, &out), 0)
        << out;
    return read_jsonl(dir + "/" + tag + ".jsonl");
  };
  const auto plain = run("plain", ""), ckpt = run("ckpt", "--gradient-checkpointing"),
             both = run("both", "--gradient-checkpointing --chunked-loss"),
             comp = run("comp", "--gradient-checkpointing --compile");
  ASSERT_EQ(plain.size(), 3u);
  ASSERT_EQ(ckpt.size(), 3u);
  ASSERT_EQ(both.size(), 3u);
  ASSERT_EQ(comp.size(), 3u);
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_NEAR(ckpt[i]["loss"].get<double>(), plain[i]["loss"].get<double>(), 1e-5) << i;
    EXPECT_NEAR(ckpt[i]["grad_norm"].get<double>(), plain[i]["grad_norm"].get<double>(), 1e-5) << i;
    EXPECT_NEAR(both[i]["loss"].get<double>(), plain[i]["loss"].get<double>(), 1e-5) << i;
    EXPECT_NEAR(comp[i]["loss"].get<double>(), plain[i]["loss"].get<double>(), 1e-5) << i;
    EXPECT_NEAR(comp[i]["grad_norm"].get<double>(), plain[i]["grad_norm"].get<double>(), 1e-5) << i;
  }
}

// what checkpointing cannot recompute is refused by name: prefix tuning's cache (mixed-adapter batches
// are refused in training mode already)
TEST(GradientCheckpointing, PrefixTuningIsRefused) {
  auto base = load_model(golden_model("tiny-llama"));
  const at::Tensor ids = at::randint(base->config().vocab_size, {2, 5}, at::kLong);
  base->set_gradient_checkpointing(true);
  {
    auto m = std::make_shared<PeftModel>(base, AdapterConfig::from_json({{"peft_type", "PREFIX_TUNING"},
                                                                        {"task_type", "CAUSAL_LM"},
                                                                        {"num_virtual_tokens", 3}},
                                                                       "config"));
    m->train();
    EXPECT_NE(error_of([&] { m->forward({ids}); }).find("prefix tuning"), std::string::npos);
    auto c = compile(*m);
    EXPECT_NE(error_of([&] { c.forward({ids}); }).find("prefix tuning"), std::string::npos);
  }
}
