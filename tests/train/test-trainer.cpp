// The Trainer's loop: gradient accumulation equals one large batch, SGD's update, evaluation, the
// epoch sampler, the step count from epochs, callbacks and checkpoint rotation.
#include <fstream>
#include <set>

#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::shared_ptr<PeftModel> lora_model() {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("lora") + "/adapter", "default",
                                      /*is_trainable=*/true);
  m->train();
  return m;
}

std::vector<int64_t> row_of(const at::Tensor & t, int64_t r) {
  at::Tensor x = t[r].contiguous();
  return std::vector<int64_t>(x.data_ptr<int64_t>(), x.data_ptr<int64_t>() + x.numel());
}

std::shared_ptr<TokenDataset> random_docs(int n, int len_lo, int len_hi, uint64_t seed) {
  at::manual_seed(seed);
  std::vector<std::vector<int64_t>> rows;
  for (int i = 0; i < n; ++i) {
    const int len = at::randint(len_lo, len_hi + 1, {1}, at::kLong).item<int64_t>();
    at::Tensor t = at::randint(90, {len}, at::kLong);
    rows.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + len);
  }
  return std::make_shared<TokenDataset>(TokenDataset::from_rows(rows, "random"));
}

TEST(Trainer, AccumulatedMicroBatchesEqualOneBatch) {
  SequenceSet data(random_docs(4, 5, 12, 1), "pad", 16);
  auto a = lora_model(), b = lora_model();
  TrainOptions o;
  o.lr = 1e-2;
  Trainer ta([&](const ForwardInput & in) { return a->forward(in); }, a->trainable_parameters(), o);
  Trainer tb([&](const ForwardInput & in) { return b->forward(in); }, b->trainable_parameters(), o);
  StepLog one = ta.step({data.batch({0, 1, 2, 3})});
  StepLog two = tb.step({data.batch({0, 1}), data.batch({2, 3})});
  EXPECT_NEAR(one.loss, two.loss, 1e-5);
  EXPECT_NEAR(one.grad_norm, two.grad_norm, 1e-5);
  EXPECT_EQ(one.tokens, two.tokens);
  auto pa = a->trainable_parameters(), pb = b->trainable_parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(all_close(pa[i], pb[i], 1e-6, 1e-5)) << i;
  // (the halves count different numbers of tokens, so averaging their means would not have matched)
  ASSERT_NE(data.batch({0, 1}).loss_tokens, data.batch({2, 3}).loss_tokens);
}

TEST(Trainer, SgdStepIsParamMinusLrTimesGrad) {
  auto m = lora_model();
  SequenceSet data(random_docs(2, 8, 8, 2), "pad", 16);
  const Batch b = data.batch({0, 1});
  // the gradient, computed by hand
  auto params = m->trainable_parameters();
  std::vector<at::Tensor> before, grads;
  {
    at::Tensor loss = causal_lm_loss_sum(m->forward({b.input_ids}), b.labels) / static_cast<double>(b.loss_tokens);
    loss.backward();
    for (auto & p : params) {
      before.push_back(p.detach().clone());
      grads.push_back(p.grad().clone());
      p.mutable_grad() = at::Tensor();
    }
  }
  TrainOptions o;
  o.optimizer = "sgd";
  o.lr = 0.5;
  o.weight_decay = 0;
  Trainer t([&](const ForwardInput & in) { return m->forward(in); }, params, o);
  t.step({b});
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(all_close(params[i], before[i] - 0.5 * grads[i], 1e-6, 1e-5));
}

TEST(Trainer, EvaluateIsTheMeanTokenLossWithoutTraining) {
  auto m = lora_model();
  SequenceSet data(random_docs(5, 4, 9, 3), "pad", 16);
  TrainOptions o;
  o.batch_size = 2;
  int mode_changes = 0;
  TrainCallbacks cb;
  cb.set_training = [&](bool on) {
    ++mode_changes;
    m->train(on);
  };
  Trainer t([&](const ForwardInput & in) { return m->forward(in); }, m->trainable_parameters(), o, cb);
  EvalLog e = t.evaluate(data);
  double sum = 0;
  int64_t n = 0;
  {
    at::NoGradGuard g;
    for (size_t i = 0; i < data.size(); ++i) {
      Batch b = data.batch({i});
      sum += causal_lm_loss_sum(m->forward({b.input_ids}), b.labels).item<double>();
      n += b.loss_tokens;
    }
  }
  EXPECT_NEAR(e.loss, sum / n, 1e-5);
  EXPECT_NEAR(e.perplexity, std::exp(sum / n), 1e-3);
  EXPECT_EQ(e.tokens, n);
  EXPECT_EQ(mode_changes, 2);
  for (const auto & p : m->trainable_parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(Trainer, EpochsVisitEverySequenceOnceInASeededOrder) {
  auto m = lora_model();
  SequenceSet data(random_docs(10, 3, 3, 4), "pad", 8);
  TrainOptions o;
  o.batch_size = 3;
  o.gradient_accumulation_steps = 2;
  o.steps = 0;
  o.epochs = 1.5;
  o.lr = 1e-6;
  std::vector<std::vector<int64_t>> seen;
  Trainer t(
      [&](const ForwardInput & in) {
        for (int64_t r = 0; r < in.input_ids.size(0); ++r) seen.push_back(row_of(in.input_ids, r));
        return m->forward(in);
      },
      m->trainable_parameters(), o);
  // 4 batches per epoch (3, 3, 3, 1), 1.5 epochs = 6 micro-batches = 3 steps
  EXPECT_EQ(t.total_steps(data), 3);
  t.train(data);
  EXPECT_EQ(t.global_step(), 3);
  ASSERT_EQ(seen.size(), 10u + 6u);
  std::set<std::vector<int64_t>> first(seen.begin(), seen.begin() + 10);
  EXPECT_EQ(first.size(), 10u);  // the first epoch saw every sequence once
  bool in_order = true;
  for (size_t i = 0; i < 10; ++i) {
    Batch b = data.batch({i});
    in_order = in_order && seen[i] == row_of(b.input_ids, 0);
  }
  EXPECT_FALSE(in_order);  // shuffled
}

TEST(Trainer, CallbacksEvaluationsAndCheckpointRotation) {
  auto m = lora_model();
  SequenceSet data(random_docs(8, 6, 6, 5), "pad", 8), eval(random_docs(3, 6, 6, 6), "pad", 8);
  const std::string dir = temp_dir("trainer-ckpt");
  TrainOptions o;
  o.batch_size = 2;
  o.steps = 7;
  o.lr = 1e-3;
  o.eval_steps = 3;
  o.eval_on_start = true;
  o.save_steps = 2;
  o.save_total_limit = 2;
  o.checkpoint_dir = dir + "/ckpts";
  std::vector<int64_t> steps, evals, updates, saves;
  int extra = 0;
  TrainCallbacks cb;
  cb.set_training = [&](bool on) { m->train(on); };
  cb.save_model = [&](FolderWriter & w) { m->save_pretrained(w); };
  cb.extra_loss = [&] {
    ++extra;
    return at::zeros({});
  };
  cb.after_update = [&](int64_t s) { updates.push_back(s); };
  cb.on_step_end = [&](const StepLog & s) { steps.push_back(s.step); };
  cb.on_evaluate = [&](const EvalLog & e) { evals.push_back(e.step); };
  cb.on_save = [&](const std::string &, int64_t s) { saves.push_back(s); };
  Trainer t([&](const ForwardInput & in) { return m->forward(in); }, m->trainable_parameters(), o, cb);
  t.train(data, &eval);
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(updates, steps);
  EXPECT_EQ(extra, 7);
  EXPECT_EQ(evals, (std::vector<int64_t>{0, 3, 6, 7}));
  EXPECT_EQ(saves, (std::vector<int64_t>{2, 4, 6, 7}));  // the last step too, after its evaluation
  std::string ls;
  run_command("ls " + dir + "/ckpts", &ls);
  EXPECT_EQ(ls, "checkpoint-6\ncheckpoint-7\n");
  EXPECT_EQ(latest_checkpoint(dir + "/ckpts"), dir + "/ckpts/checkpoint-7");
  // a checkpoint is a PEFT adapter folder
  auto again = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir + "/ckpts/checkpoint-7");
  EXPECT_EQ(again->adapter_names(), (std::vector<std::string>{"default"}));
}

TEST(Trainer, ResumingChecksTheRun) {
  auto m = lora_model();
  SequenceSet data(random_docs(8, 6, 6, 5), "pad", 8);
  const std::string dir = temp_dir("trainer-resume-check");
  TrainOptions o;
  o.batch_size = 2;
  o.steps = 4;
  o.save_steps = 2;
  o.checkpoint_dir = dir;
  TrainCallbacks cb;
  cb.save_model = [&](FolderWriter & w) { m->save_pretrained(w); };
  Trainer t([&](const ForwardInput & in) { return m->forward(in); }, m->trainable_parameters(), o, cb);
  t.train(data);
  o.batch_size = 4;
  Trainer other([&](const ForwardInput & in) { return m->forward(in); }, m->trainable_parameters(), o, cb);
  const std::string e = error_of([&] { other.resume(dir + "/checkpoint-2", data); });
  EXPECT_NE(e.find("differs from the checkpoint's in 'batch_size' (checkpoint: 2, now: 4)"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { other.resume(dir + "/nothing", data); }).find("is not a complete checkpoint"),
            std::string::npos);
}

}  // namespace

namespace {

// `peft train` on an AdaLoRA adapter runs upstream's rank allocator: the 14-step golden run of
// upstream PEFT (tests/data/golden/cases/adalora_allocator) step for step, eager and compiled, and the
// saved adapter_config.json holds upstream's rank_pattern.
TEST(TrainCli, AdaLoraRunsTheRankAllocatorAsUpstream) {
  const std::string c = golden_case("adalora_allocator");
  auto want = golden_expected("adalora_allocator");
  const auto want_config = read_json_file(c + "/adapter_final/adapter_config.json");
  for (const std::string extra : {"", " --compile"}) {
    const std::string dir = temp_dir("adalora-cli");
    std::string out;
    ASSERT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --adapter-init " + c + "/adapter_init --data " + c +
                          "/input_ids.json --batch-size 3 --steps 14 --lr 1e-2 --weight-decay 0.01 --no-shuffle --no-plot" +
                          " --log-file " + dir + "/log.jsonl --out " + dir + "/adapter" + extra,
                      &out),
              0)
        << out;
    std::ifstream log(dir + "/log.jsonl");
    int64_t s = 0;
    for (std::string line; std::getline(log, line); ++s) {
      const double got = nlohmann::json::parse(line)["loss"].get<double>(), w = want.at("losses")[s].item<double>();
      EXPECT_NEAR(got, w, 1e-5 + 1e-5 * std::abs(w)) << "step " << s << extra;
    }
    EXPECT_EQ(s, 14);
    const auto saved = read_json_file(dir + "/adapter/adapter_config.json");
    EXPECT_EQ(saved["rank_pattern"], want_config["rank_pattern"]) << extra;
  }
}

}  // namespace
