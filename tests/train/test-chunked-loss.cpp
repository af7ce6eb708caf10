// The chunked loss (issue 23, training memory): the forward stops at the final hidden states and the head
// runs a few tokens at a time. Loss and every gradient equal the plain loss over whole logits, eager and
// compiled, with the head's own adapter, padding, prompt learning's virtual tokens and Gemma 2's
// soft-capped head; the Trainer and `peft train --chunked-loss` give the plain run's steps.
#include <torch/csrc/autograd/autograd.h>

#include "peft/compile/compile.h"
#include "peft/peft-model.h"
#include "peft/train/loss.h"
#include "peft/train/trainer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

// LoRA on the attention and on lm_head, so the head has trainable tensors of its own
std::shared_ptr<PeftModel> lora_with_head(const std::string & model = "tiny-llama") {
  at::manual_seed(11);
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"},
                                       {"r", 4},
                                       {"lora_alpha", 8},
                                       {"init_lora_weights", false},
                                       {"target_modules", {"q_proj", "v_proj", "lm_head"}}},
                                      "config");
  auto m = std::make_shared<PeftModel>(load_model(golden_model(model)), cfg);
  m->train(false);  // (no dropout: the two runs must see the same function)
  return m;
}

// Two rows, the second padded: labels -100 where the mask is 0
std::pair<ForwardInput, at::Tensor> padded_batch(int64_t vocab) {
  at::manual_seed(5);
  ForwardInput in;
  in.input_ids = at::randint(vocab, {2, 9}, at::kLong);
  in.attention_mask = at::ones({2, 9}, at::kLong);
  in.attention_mask[1].narrow(0, 6, 3).fill_(0);
  const at::Tensor labels = in.input_ids.masked_fill(in.attention_mask == 0, -100);
  return {in, labels};
}

struct LossRun {
  double loss = 0;
  std::vector<at::Tensor> grads;
};

std::vector<at::Tensor> take_grads(const std::vector<at::Tensor> & params) {
  std::vector<at::Tensor> g;
  for (auto p : params) {
    g.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
    p.mutable_grad() = at::Tensor();
  }
  return g;
}

LossRun plain_run(PeftModel & m, const LogitsFn & f, ForwardInput in, const at::Tensor & labels, double scale) {
  in.hidden_states = false;
  at::Tensor loss = causal_lm_loss_sum(f(in), labels);
  (loss * scale).backward();
  return {loss.item<double>(), take_grads(m.trainable_parameters())};
}

LossRun chunked_run(PeftModel & m, const LogitsFn & f, ForwardInput in, const at::Tensor & labels, int64_t chunk, double scale) {
  in.hidden_states = true;
  const at::Tensor hidden = f(in);
  EXPECT_EQ(hidden.size(-1), m.base_model().config().hidden_size);
  const ChunkedLoss c = chunked_loss_sum(hidden, labels, [&](const at::Tensor & h) { return m.base_model().logits(h); },
                                         chunk, scale);
  EXPECT_TRUE(c.hidden_grad.defined());
  EXPECT_EQ(c.hidden_grad.sizes(), hidden.sizes());
  torch::autograd::backward({hidden}, {c.hidden_grad});
  return {c.sum, take_grads(m.trainable_parameters())};
}

void expect_same(const LossRun & want, const LossRun & got, const std::string & what) {
  EXPECT_NEAR(got.loss, want.loss, 1e-5 * std::abs(want.loss)) << what;
  ASSERT_EQ(got.grads.size(), want.grads.size());
  for (size_t i = 0; i < want.grads.size(); ++i) {
    EXPECT_TRUE(all_close(got.grads[i], want.grads[i], 1e-6, 1e-5)) << what << ": gradient " << i;
  }
}

}  // namespace

TEST(ChunkedLoss, LossAndGradientsEqualThePlainLossEagerAndCompiled) {
  auto m = lora_with_head();
  auto [in, labels] = padded_batch(m->base_model().config().vocab_size);
  const double scale = 1.0 / 13;
  LogitsFn eager = [&](const ForwardInput & x) { return m->forward(x); };
  const LossRun want = plain_run(*m, eager, in, labels, scale);
  bool head_grad = false;
  for (const auto & p : m->base_model().output_layer()->named_parameters(true)) {
    if (p.value().requires_grad()) head_grad = true;
  }
  ASSERT_TRUE(head_grad) << "the head's LoRA is trained too";
  ASSERT_GT(want.loss, 0);
  for (int64_t chunk : {int64_t(1), int64_t(3), int64_t(-1), int64_t(1000)}) {
    expect_same(want, chunked_run(*m, eager, in, labels, chunk, scale), "eager, chunk " + std::to_string(chunk));
  }
  auto c = compile(*m);
  LogitsFn compiled = [&](const ForwardInput & x) { return c.forward(x); };
  expect_same(want, plain_run(*m, compiled, in, labels, scale), "compiled plain");
  expect_same(want, chunked_run(*m, compiled, in, labels, 3, scale), "compiled, chunk 3");
  // the hidden-states graph is its own (the key says so), and each is replayed afterwards
  const size_t compiles = c.stats().compiles;
  expect_same(want, chunked_run(*m, compiled, in, labels, 3, scale), "compiled again");
  expect_same(want, plain_run(*m, compiled, in, labels, scale), "compiled plain again");
  EXPECT_EQ(c.stats().compiles, compiles);
  // without a gradient: the sum alone
  at::NoGradGuard g;
  ForwardInput h = in;
  h.hidden_states = true;
  const ChunkedLoss nograd =
      chunked_loss_sum(m->forward(h), labels, [&](const at::Tensor & x) { return m->base_model().logits(x); }, 4);
  EXPECT_FALSE(nograd.hidden_grad.defined());
  EXPECT_NEAR(nograd.sum, want.loss, 1e-5 * want.loss);
}

// Prompt tuning: the hidden states cover the virtual tokens first, as the logits do
TEST(ChunkedLoss, VirtualTokensAlignAsThePlainLoss) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("prompt_tuning") + "/adapter",
                                      "default", /*is_trainable=*/true);
  m->train(false);
  auto [in, labels] = padded_batch(m->base_model().config().vocab_size);
  LogitsFn eager = [&](const ForwardInput & x) { return m->forward(x); };
  const LossRun want = plain_run(*m, eager, in, labels, 0.5);
  expect_same(want, chunked_run(*m, eager, in, labels, 2, 0.5), "prompt tuning, chunk 2");
}

// The head is output_layer() plus the config's final soft-capping (Gemma 2): logits(hidden) is the forward's
TEST(ChunkedLoss, HeadOfHiddenStatesIsTheForward) {
  for (const char * name : {"tiny-gemma2", "tiny-opt", "tiny-gpt2", "tiny-gpt-neox", "tiny-llama-tied"}) {
    auto base = load_model(golden_model(name));
    at::NoGradGuard g;
    ForwardInput in;
    in.input_ids = at::randint(base->config().vocab_size, {2, 7}, at::kLong);
    const at::Tensor logits = base->forward(in);
    in.hidden_states = true;
    const at::Tensor hidden = base->forward(in);
    EXPECT_EQ(hidden.sizes(), (std::vector<int64_t>{2, 7, base->config().hidden_size})) << name;
    EXPECT_TRUE(all_close(base->logits(hidden), logits, 1e-6, 1e-6)) << name;
  }
  EXPECT_GT(load_model(golden_model("tiny-gemma2"))->config().final_logit_softcapping, 0) << "the soft-capped case";
}

// The chunk size keeps a chunk's float32 logits, log-probabilities and their gradient within 64 MiB
TEST(ChunkedLoss, ChunkSizeFromTheVocabulary) {
  for (int64_t v : {int64_t(32), int64_t(32000), int64_t(128256), int64_t(262144), int64_t(50000000)}) {
    const int64_t c = loss_chunk_tokens(v);
    EXPECT_GE(c, 1);
    if (c > 1) EXPECT_LE(3 * 4 * c * v, int64_t(64) << 20) << v;
  }
  EXPECT_EQ(loss_chunk_tokens(128256), (int64_t(64) << 20) / (12 * 128256));
}

// The Trainer: chunked steps and evaluations equal the plain ones (the same parameters after each step);
// the step log carries the peak resident memory
TEST(ChunkedLoss, TrainerStepsEqualThePlainRun) {
  auto a = lora_with_head(), b = lora_with_head();
  a->train(), b->train();
  SequenceSet data(std::make_shared<TokenDataset>(TokenDataset::from_rows(
                       {{5, 9, 3, 44, 7, 81}, {12, 3, 3, 7, 9, 10, 11, 64, 2}, {1, 2, 3}, {70, 71, 72, 73}}, "rows")),
                   "pad", 10);
  TrainOptions o;
  o.lr = 1e-2;
  TrainCallbacks cb;
  cb.head = [&](const at::Tensor & h) { return b->base_model().logits(h); };
  TrainOptions oc = o;
  oc.loss_chunk = 3;
  Trainer ta([&](const ForwardInput & in) { return a->forward(in); }, a->trainable_parameters(), o);
  Trainer tb([&](const ForwardInput & in) { return b->forward(in); }, b->trainable_parameters(), oc, cb);
  for (int s = 0; s < 3; ++s) {
    const std::vector<Batch> micro = {data.batch({0, 1}), data.batch({2, 3})};
    const StepLog la = ta.step(micro), lb = tb.step(micro);
    EXPECT_NEAR(la.loss, lb.loss, 1e-5) << s;
    EXPECT_NEAR(la.grad_norm, lb.grad_norm, 1e-5) << s;
    EXPECT_GT(lb.peak_rss_mb, 1.0);
  }
  auto pa = a->trainable_parameters(), pb = b->trainable_parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(all_close(pb[i], pa[i], 1e-6, 1e-5)) << i;
  EXPECT_NEAR(ta.evaluate(data).loss, tb.evaluate(data).loss, 1e-5);
  // the chunked loss without the head is refused when the Trainer is built
  EXPECT_NE(error_of([&] { Trainer t([&](const ForwardInput & in) { return b->forward(in); }, b->trainable_parameters(), oc); })
                .find("needs the model's head"),
            std::string::npos);
  oc.loss_chunk = -2;
  EXPECT_NE(error_of([&] { check_train_options(oc); }).find("loss_chunk"), std::string::npos);
}

// `peft train --chunked-loss` (compiled too): the log's losses are the plain run's; every step logs peak_rss_mb
TEST(ChunkedLoss, CliChunkedLossMatchesThePlainRun) {
  const std::string dir = temp_dir("chunked-loss");
  const std::string data = make_text(dir);
  auto run = [&](const std::string & tag, const std::string & extra) {
    std::string out;
    EXPECT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --byte-tokenizer --method lora --r 4 --target-modules q_proj,v_proj,lm_head" +
                          " --data " + data + " --max-length 32 --batch-size 2 --steps 3 --lr 1e-2 --seed 3 --no-plot" +
                          " --log-file " + dir + "/" + tag + ".jsonl --out " + dir + "/" + tag + " " + extra,
                      &out),
              0)
        << out;
    return read_jsonl(dir + "/" + tag + ".jsonl", {});
  };
  const auto plain = run("plain", ""), chunked = run("chunked", "--chunked-loss"),
             compiled = run("compiled", "--chunked-loss --loss-chunk 5 --compile");
  ASSERT_EQ(plain.size(), 3u);
  ASSERT_EQ(chunked.size(), 3u);
  ASSERT_EQ(compiled.size(), 3u);
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_NEAR(chunked[i]["loss"].get<double>(), plain[i]["loss"].get<double>(), 1e-5) << i;
    EXPECT_NEAR(compiled[i]["loss"].get<double>(), plain[i]["loss"].get<double>(), 1e-5) << i;
    EXPECT_GT(chunked[i]["peak_rss_mb"].get<double>(), 1.0) << i;
  }
  std::string out;
  EXPECT_NE(run_cli("train --model " + golden_model("tiny-llama") + " --byte-tokenizer --method lora --data " + data +
                        " --steps 1 --chunked-loss --loss-chunk 0 --log-file " + dir + "/x.jsonl --out " + dir + "/x",
                    &out),
            0);
  EXPECT_NE(out.find("--loss-chunk must be > 0 with --chunked-loss"), std::string::npos) << out;
}
