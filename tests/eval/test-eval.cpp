// Evaluation (issue 24): perplexity with a sliding window equals the same log-probabilities taken from whole
// forward passes, token by token; the chunked head and batched windows change nothing; the KL against a
// reference equals the one computed from full logits (zero against itself); multiple choice sums each
// choice's token log-probabilities after lm-evaluation-harness's encoding; `peft eval` gives the same
// numbers eager and compiled, writes lm-evaluation-harness's result shape and refuses bad input by name.
#include <fstream>

#include "peft/compile/compile.h"
#include "peft/data/dataset.h"
#include "peft/eval/multiple-choice.h"
#include "peft/eval/perplexity.h"
#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/tokenizer/tokenizer.h"
#include "peft/train/loss.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }

std::shared_ptr<PeftModel> lora_model(const std::string & dir, bool head = false) {
  at::manual_seed(3);
  std::vector<std::string> targets = {"q_proj", "v_proj", "down_proj"};
  if (head) targets.push_back("lm_head");
  auto cfg = AdapterConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"init_lora_weights", false}, {"target_modules", targets}},
      "config");
  auto m = std::make_shared<PeftModel>(load_model(dir), cfg);
  m->train(false);
  return m;
}

eval::Scorer eager(PeftModel & m, bool disabled = false) {
  return eval::scorer_of(m, [&m](const PeftInput & in) { return m.forward(in); }, disabled);
}

// log p(ids[t] | ids[begin:t]) from one whole forward pass over ids[begin : t + 1]
double direct_logprob(PeftModel & m, const std::vector<int64_t> & ids, int64_t begin, int64_t t) {
  at::NoGradGuard g;
  at::Tensor x = at::tensor(std::vector<int64_t>(ids.begin() + begin, ids.begin() + t + 1), at::kLong).unsqueeze(0);
  at::Tensor logits = m.forward(ForwardInput{x}).to(at::kFloat);
  return at::log_softmax(logits[0][t - begin - 1], -1)[ids[t]].item<double>();
}

eval::Document random_doc(int64_t n, int64_t vocab, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor r = at::randint(vocab, {n}, at::kLong);
  eval::Document d;
  d.ids.assign(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + n);
  d.scored.assign(n, 1);
  return d;
}

}  // namespace

TEST(Perplexity, OneWindowEqualsTheLossOfAWholeForward) {
  auto m = lora_model(golden_model("tiny-llama"));
  const eval::Document d = random_doc(40, m->base_model().config().vocab_size, 1);
  eval::PerplexityOptions o;
  o.context = 64;
  const auto r = eval::perplexity(eager(*m), {d}, o);
  ASSERT_EQ(r.tokens, 39);
  at::NoGradGuard g;
  at::Tensor ids = at::tensor(d.ids, at::kLong).unsqueeze(0);
  const double loss = causal_lm_loss(m->forward(ForwardInput{ids}), ids).item<double>();
  EXPECT_NEAR(r.mean_nll(), loss, 1e-5);
  EXPECT_NEAR(r.perplexity(), std::exp(loss), 1e-4 * std::exp(loss));
  EXPECT_GT(r.perplexity_stderr(), 0.0);
}

// stride 1: every token is scored with exactly context - 1 tokens before it (fewer at the start)
TEST(Perplexity, StrideOneScoresEachTokenWithTheWholeWindowBeforeIt) {
  auto m = lora_model(golden_model("tiny-llama"));
  const eval::Document d = random_doc(30, m->base_model().config().vocab_size, 2);
  eval::PerplexityOptions o;
  o.context = 8;
  o.stride = 1;
  const auto r = eval::perplexity(eager(*m), {d}, o);
  ASSERT_EQ(r.tokens, 29);
  double nll = 0;
  for (int64_t t = 1; t < 30; ++t) nll -= direct_logprob(*m, d.ids, std::max<int64_t>(0, t - 7), t);
  EXPECT_NEAR(r.nll, nll, 1e-4);
  // a shorter context scores the same text worse than... at least differently from the whole one
  eval::PerplexityOptions whole;
  whole.context = 64;
  EXPECT_GT(std::abs(eval::perplexity(eager(*m), {d}, whole).nll - r.nll), 1e-3);
}

// the Hugging Face recipe with stride < context: each token once, from the first window whose end covers it
TEST(Perplexity, SlidingWindowsScoreEachTokenOnceFromTheFirstWindowCoveringIt) {
  auto m = lora_model(golden_model("tiny-llama"));
  const eval::Document d = random_doc(37, m->base_model().config().vocab_size, 3);
  for (int64_t stride : {3, 5, 10}) {
    eval::PerplexityOptions o;
    o.context = 10;
    o.stride = stride;
    const auto r = eval::perplexity(eager(*m), {d}, o);
    ASSERT_EQ(r.tokens, 36) << stride;
    double nll = 0;
    // windows start at 0, stride, 2 stride, ... (never after the last scored token); token t is scored in
    // the first window [b, b + 10) that contains it and starts before it
    for (int64_t t = 1; t < 37; ++t) {
      int64_t b = 0, prev_end = 0;
      while (true) {
        const int64_t end = std::min<int64_t>(b + 10, 37);
        if (t < end && t >= std::max(prev_end, b + 1)) break;
        prev_end = end;
        b = std::min(b + stride, end - 1);
      }
      nll -= direct_logprob(*m, d.ids, b, t);
    }
    EXPECT_NEAR(r.nll, nll, 1e-4) << "stride " << stride;
  }
}

TEST(Perplexity, ChunkedHeadBatchedWindowsAndScoredFlagsAgree) {
  auto m = lora_model(golden_model("tiny-llama"), /*head=*/true);
  eval::Document d = random_doc(50, m->base_model().config().vocab_size, 4);
  eval::PerplexityOptions o;
  o.context = 12;
  o.stride = 4;
  eval::Scorer s = eager(*m);
  const auto a = eval::perplexity(s, {d}, o);
  s.chunk = 1;
  o.batch = 5;
  const auto b = eval::perplexity(s, {d}, o);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_LT(a.windows, 20);
  EXPECT_NEAR(a.nll, b.nll, 1e-6 * std::abs(a.nll));
  EXPECT_NEAR(a.nll_sq, b.nll_sq, 1e-6 * std::abs(a.nll_sq));
  // unscored tokens (a prompt) drop out: the sum is the scored tokens' part of the full one
  s.chunk = -1;
  o.batch = 1;
  o.stride = 1;
  o.context = 64;
  const auto all = eval::perplexity(s, {d}, o);
  for (int64_t t = 0; t < 20; ++t) d.scored[t] = 0;
  const auto part = eval::perplexity(s, {d}, o);
  EXPECT_EQ(part.tokens, 30);
  double tail = 0;
  for (int64_t t = 20; t < 50; ++t) tail -= direct_logprob(*m, d.ids, 0, t);
  EXPECT_NEAR(part.nll, tail, 1e-4);
  EXPECT_LT(part.nll, all.nll);
}

TEST(Perplexity, KlAgainstAReferenceEqualsTheFullLogitsOnes) {
  auto m = lora_model(golden_model("tiny-llama"), /*head=*/true);
  const eval::Document d = random_doc(24, m->base_model().config().vocab_size, 5);
  eval::PerplexityOptions o;
  o.context = 32;
  // against itself: nothing differs
  const eval::Scorer s = eager(*m), base = eager(*m, /*disabled=*/true);
  const auto self = eval::perplexity(s, {d}, o, nullptr, &s);
  EXPECT_NEAR(self.kl_mean(), 0.0, 1e-7);
  EXPECT_EQ(self.same_top_fraction(), 1.0);
  EXPECT_NEAR(self.ref_nll, self.nll, 1e-9);
  // against the base (the adapter disabled): KL(base || model) per token from the whole logits
  const auto r = eval::perplexity(s, {d}, o, nullptr, &base);
  ASSERT_EQ(r.kl.size(), 23u);
  at::NoGradGuard g;
  at::Tensor ids = at::tensor(d.ids, at::kLong).unsqueeze(0);
  at::Tensor lp = at::log_softmax(m->forward(ForwardInput{ids})[0].to(at::kDouble), -1);
  at::Tensor lb;
  {
    auto off = m->disable_adapter();
    lb = at::log_softmax(m->forward(ForwardInput{ids})[0].to(at::kDouble), -1);
  }
  double ref_nll = 0, kl_sum = 0, kl_max = 0;
  int64_t same = 0;
  for (int64_t t = 1; t < 24; ++t) {
    const double kl = (lb[t - 1].exp() * (lb[t - 1] - lp[t - 1])).sum().item<double>();
    EXPECT_NEAR(r.kl[t - 1], kl, 1e-5 + 1e-4 * kl) << t;
    kl_sum += kl;
    kl_max = std::max(kl_max, kl);
    ref_nll -= lb[t - 1][d.ids[t]].item<double>();
    same += lb[t - 1].argmax().item<int64_t>() == lp[t - 1].argmax().item<int64_t>();
  }
  EXPECT_GT(kl_sum, 1e-4);  // the adapter changes the model
  EXPECT_NEAR(r.kl_mean(), kl_sum / 23, 1e-5);
  EXPECT_NEAR(r.kl_quantile(1.0), kl_max, 1e-5 + 1e-4 * kl_max);
  EXPECT_NEAR(r.ref_nll, ref_nll, 1e-4);
  EXPECT_EQ(r.same_top, same);
}

TEST(Perplexity, CompiledEqualsEagerWithPromptTuning) {
  auto m = std::make_shared<PeftModel>(
      load_model(golden_model("tiny-llama")),
      AdapterConfig::from_json({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 5}, {"task_type", "CAUSAL_LM"}},
                               "config"));
  m->train(false);
  const eval::Document d = random_doc(30, m->base_model().config().vocab_size, 6);
  eval::PerplexityOptions o;
  o.context = 16;
  const auto a = eval::perplexity(eager(*m), {d}, o);
  auto compiled = std::make_shared<CompiledModel>(peft::compile(*m));
  const auto b = eval::perplexity(eval::scorer_of(*m, [compiled](const PeftInput & in) { return compiled->forward(in); }),
                                  {d}, o);
  EXPECT_EQ(a.tokens, 29);
  EXPECT_NEAR(a.nll, b.nll, 1e-5 * std::abs(a.nll));
  // the virtual tokens are in front of every window: token 1 is predicted after them, from token 0
  at::NoGradGuard g;
  at::Tensor ids = at::tensor(std::vector<int64_t>(d.ids.begin(), d.ids.begin() + 16), at::kLong).unsqueeze(0);
  at::Tensor logits = m->forward(ForwardInput{ids});
  ASSERT_EQ(logits.size(1), 21);
  const double first = at::log_softmax(logits[0][5].to(at::kFloat), -1)[d.ids[1]].item<double>();
  eval::Document two = d;
  two.ids.resize(2);
  two.scored.resize(2);
  EXPECT_NEAR(eval::perplexity(eager(*m), {two}, o).nll, -first, 1e-5);
}

TEST(MultipleChoice, EncodingMovesTheContextsTrailingSpacesToTheChoice) {
  auto tok = load_tokenizer(kjv(), 4096);
  const auto p = eval::encode_pair(*tok, "And God said ", "Let there be light");
  const auto q = eval::encode_pair(*tok, "And God said", " Let there be light");
  EXPECT_EQ(p.context, q.context);
  EXPECT_EQ(p.continuation, q.continuation);
  std::vector<int64_t> whole = p.context;
  whole.insert(whole.end(), p.continuation.begin(), p.continuation.end());
  EXPECT_EQ(whole, tok->encode("And God said Let there be light", true));
  EXPECT_EQ(p.context, tok->encode("And God said", true));
}

TEST(MultipleChoice, ChoiceScoresAreSumsOfTheirTokensLogprobs) {
  auto m = lora_model(kjv());
  auto tok = load_tokenizer(kjv(), m->base_model().config().vocab_size);
  std::vector<eval::ChoiceItem> items = {
      {"In the beginning God created", {" the heaven and the earth.", " a cat.", " fish and chips for all"}, 0},
      {"And the LORD spake unto", {" Moses, saying,", " the computer"}, 1}};
  const auto r = eval::multiple_choice(eager(*m), *tok, items, 256);
  ASSERT_EQ(r.items, 2);
  std::vector<double> best, best_norm;
  for (size_t i = 0; i < items.size(); ++i) {
    size_t arg = 0, arg_norm = 0;
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const auto p = eval::encode_pair(*tok, items[i].context, items[i].choices[c]);
      std::vector<int64_t> row = p.context;
      row.insert(row.end(), p.continuation.begin(), p.continuation.end());
      double ll = 0;
      for (size_t t = p.context.size(); t < row.size(); ++t) ll += direct_logprob(*m, row, 0, static_cast<int64_t>(t));
      EXPECT_NEAR(r.loglikelihood[i][c], ll, 1e-4) << i << "/" << c;
      if (ll > r.loglikelihood[i][arg] + 1e-12 && c > 0) arg = c;
      const double n = ll / items[i].choices[c].size(), n_best = r.loglikelihood[i][arg_norm] / items[i].choices[arg_norm].size();
      if (c > 0 && n > n_best) arg_norm = c;
    }
    best.push_back(arg == static_cast<size_t>(items[i].gold));
    best_norm.push_back(arg_norm == static_cast<size_t>(items[i].gold));
  }
  EXPECT_DOUBLE_EQ(r.acc, (best[0] + best[1]) / 2);
  EXPECT_DOUBLE_EQ(r.acc_norm, (best_norm[0] + best_norm[1]) / 2);
  // the standard error of 0/1 outcomes: sqrt(p (1 - p) n / (n - 1)) / sqrt(n)
  const double p = r.acc;
  EXPECT_NEAR(r.acc_stderr, std::sqrt(p * (1 - p) * 2.0 / 1.0) / std::sqrt(2.0), 1e-12);
  // a row longer than the limit keeps its end: the score of a choice after a shortened context
  const auto cut = eval::multiple_choice(eager(*m), *tok, {items[0]}, 10);
  EXPECT_NE(cut.loglikelihood[0][0], r.loglikelihood[0][0]);
}

TEST(MultipleChoice, TaskFileErrorsNameTheLineAndField) {
  const std::string dir = temp_dir("eval-task");
  auto write = [&](const std::string & text) {
    std::ofstream(dir + "/t.jsonl") << text;
    return error_of([&] { eval::read_choice_task(dir + "/t.jsonl"); });
  };
  EXPECT_NE(write("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 1}\n\n{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n")
                .find("t.jsonl:3: field 'choices'"), std::string::npos);
  EXPECT_NE(write("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}\n").find("t.jsonl:1: field 'gold'"),
            std::string::npos);
  EXPECT_NE(write("{\"context\": \"a\", \"choices\": [\"b\", \"c\"]\n").find("t.jsonl:1: not valid JSON"), std::string::npos);
  EXPECT_NE(write("{\"choices\": [\"b\", \"c\"], \"gold\": 0}\n").find("field 'context'"), std::string::npos);
  EXPECT_NE(write("\n").find("no task items"), std::string::npos);
  EXPECT_EQ(write("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 1}\n"), "");
}

namespace {

// An adapter of kjv-llama and a small text and task, written once for the CLI tests.
struct EvalFiles {
  std::string dir, adapter, text, task;
};
const EvalFiles & eval_files() {
  static const EvalFiles f = [] {
    EvalFiles e;
    e.dir = temp_dir("eval-cli");
    e.adapter = e.dir + "/adapter";
    lora_model(kjv(), true)->save_pretrained(e.adapter);
    e.text = e.dir + "/text.txt";
    std::ofstream(e.text) << "In the beginning God created the heaven and the earth.\n\nAnd the earth was without form, "
                             "and void; and darkness was upon the face of the deep.\n\nAnd God said, Let there be light: "
                             "and there was light.\n";
    e.task = e.dir + "/task.jsonl";
    std::ofstream(e.task) << "{\"context\": \"And God said, Let there be\", \"choices\": [\" light\", \" cheese\"], \"gold\": 0}\n"
                             "{\"context\": \"In the beginning God created the\", \"choices\": [\" heaven\", \" spreadsheet\"], \"gold\": 0}\n"
                             "{\"context\": \"And the evening and the morning were the first\", \"choices\": [\" day\", \" byte\", \" dollar\"], \"gold\": 0}\n";
    return e;
  }();
  return f;
}

nlohmann::json run_eval(const std::string & flags, const std::string & tag) {
  const auto & f = eval_files();
  const std::string out = f.dir + "/" + tag + ".json";
  std::string log;
  const int rc = run_cli("eval --model " + kjv() + " --adapter " + f.adapter + " --data " + f.text + " --task " + f.task +
                             " --context 16 --stride 8 --json " + out + " " + flags,
                         &log);
  EXPECT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("perplexity (text): "), std::string::npos) << log;
  EXPECT_NE(log.find("multiple choice (task): acc "), std::string::npos) << log;
  return nlohmann::json::parse(read_file(out));
}

}  // namespace

TEST(EvalCli, CompiledEqualsEagerInLmEvalsResultShape) {
  const auto a = run_eval("--compare-to __base__", "eager");
  const auto b = run_eval("--compare-to __base__ --compile --batch-size 3", "compiled");
  for (const char * task : {"text", "task"}) {
    ASSERT_TRUE(a["results"].contains(task)) << a.dump();
    for (auto it = a["results"][task].begin(); it != a["results"][task].end(); ++it) {
      if (!it.value().is_number() || it.key() == "tokens_per_second") continue;
      EXPECT_NEAR(it.value().get<double>(), b["results"][task][it.key()].get<double>(),
                  1e-5 * (1 + std::abs(it.value().get<double>())))
          << task << " " << it.key();
    }
  }
  const auto & t = a["results"]["text"];
  for (const char * k : {"perplexity,none", "perplexity_stderr,none", "bits_per_byte,none", "word_perplexity,none",
                         "byte_perplexity,none", "kl_mean,none", "kl_p99,none", "same_top,none", "perplexity_ratio,none"}) {
    EXPECT_TRUE(t.contains(k)) << k;
  }
  EXPECT_GT(t["kl_mean,none"].get<double>(), 0.0);
  EXPECT_NEAR(t["perplexity_ratio,none"].get<double>(),
              t["perplexity,none"].get<double>() / t["ref_perplexity,none"].get<double>(), 1e-9);
  // bits per byte and the perplexity describe the same sum: nll = ln(ppl) * tokens = bpb * ln 2 * bytes
  EXPECT_NEAR(std::log(t["perplexity,none"].get<double>()) * t["tokens"].get<double>(),
              t["bits_per_byte,none"].get<double>() * std::log(2.0) * t["bytes"].get<double>(), 1e-6);
  const auto & m = a["results"]["task"];
  for (const char * k : {"acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"}) EXPECT_TRUE(m.contains(k)) << k;
  EXPECT_EQ(a["n-samples"]["task"]["effective"], 3);
  EXPECT_EQ(a["configs"]["task"]["output_type"], "multiple_choice");
  EXPECT_EQ(a["configs"]["text"]["output_type"], "loglikelihood_rolling");
}

TEST(EvalCli, ComparingToTheSameModelFolderIsZeroAndToTheAdapterMatchesBase) {
  const auto & f = eval_files();
  std::string log;
  // the base model against itself (a model folder)
  ASSERT_EQ(run_cli("eval --model " + kjv() + " --data " + f.text + " --context 16 --compare-to " + kjv(), &log), 0) << log;
  EXPECT_NE(log.find("mean KL 0.000000"), std::string::npos) << log;
  EXPECT_NE(log.find("same top token 100.00%"), std::string::npos) << log;
  // the base compared to the adapter folder = the adapter compared to __base__, the other way round
  const auto a = run_eval("--compare-to __base__", "fwd");
  ASSERT_EQ(run_cli("eval --model " + kjv() + " --data " + f.text + " --context 16 --stride 8 --compare-to " + f.adapter +
                        " --json " + f.dir + "/rev.json",
                    &log),
            0)
      << log;
  const auto b = nlohmann::json::parse(read_file(f.dir + "/rev.json"));
  EXPECT_NEAR(a["results"]["text"]["perplexity,none"].get<double>(), b["results"]["text"]["ref_perplexity,none"].get<double>(),
              1e-6 * a["results"]["text"]["perplexity,none"].get<double>());
  EXPECT_NEAR(a["results"]["text"]["ref_perplexity,none"].get<double>(), b["results"]["text"]["perplexity,none"].get<double>(),
              1e-6 * b["results"]["text"]["perplexity,none"].get<double>());
}

TEST(EvalCli, BadInputIsRefusedByName) {
  const auto & f = eval_files();
  std::string log;
  EXPECT_EQ(run_cli("eval --model " + kjv(), &log), 2);
  EXPECT_NE(log.find("--data"), std::string::npos) << log;
  EXPECT_EQ(run_cli("eval --model " + kjv() + " --data " + f.text + " --compare-to __base__", &log), 2);
  EXPECT_NE(log.find("needs adapters"), std::string::npos) << log;
  EXPECT_EQ(run_cli("eval --model " + kjv() + " --task " + f.task + " --compare-to __base__", &log), 2);
  EXPECT_EQ(run_cli("eval --model " + kjv() + " --data " + f.text + " --context 1", &log), 2);
  EXPECT_EQ(run_cli("eval --model " + kjv() + " --data " + f.text + " --context 8 --stride 9", &log), 2);
  EXPECT_EQ(run_cli("eval --model " + kjv() + " --data " + f.text + " --compare-to " + f.dir, &log), 1);
  EXPECT_NE(log.find("neither __base__ nor a folder"), std::string::npos) << log;
  const std::string bad = f.dir + "/bad.jsonl";
  std::ofstream(bad) << "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 0}\n{\"context\": 1}\n";
  EXPECT_EQ(run_cli("eval --model " + kjv() + " --task " + bad, &log), 1);
  EXPECT_NE(log.find("bad.jsonl:2: field 'context'"), std::string::npos) << log;
  // the output may not overwrite an input
  EXPECT_NE(run_cli("eval --model " + kjv() + " --data " + f.text + " --json " + f.text, &log), 0);
  EXPECT_NE(read_file(f.text).find("In the beginning"), std::string::npos);
}
