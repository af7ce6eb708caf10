// The server's log-probabilities are `peft eval`'s (issue 24): a prompt scored by /v1/completions (echo,
// logprobs, max_tokens 0) gives, token by token, the values peft::eval's scorer computes for the same ids,
// and its mean is the token loss `peft eval` reports for them, base and adapter alike.
#include "peft/eval/perplexity.h"
#include "serve/serve-world.h"

using namespace peft;
using namespace peft::test;
using namespace peft::test::serve_world;

TEST(ServeEval, PromptLogprobsEqualPeftEvals) {
  World & w = world();
  std::string text;
  for (const auto & p : kPrompts) text += p + ", ";
  const std::vector<int64_t> ids = w.tok->encode(text, true);
  ASSERT_GT(ids.size(), 20u);
  httplib::Client c("127.0.0.1", w.port());
  c.set_read_timeout(120, 0);
  for (const std::string model : {"kjv", "a2"}) {
    int status = 0;
    const auto j = post(c, "/v1/completions",
                        {{"model", model}, {"prompt", ids}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}}, &status);
    ASSERT_EQ(status, 200) << j.dump();
    const auto & lp = j["choices"][0]["logprobs"]["token_logprobs"];
    ASSERT_EQ(lp.size(), ids.size()) << j.dump();
    EXPECT_TRUE(lp[0].is_null());
    // peft::eval's scorer on the reference model (eager, the adapter active or disabled)
    eval::Scores sc;
    {
      std::lock_guard<std::mutex> g(w.mu);
      if (model != "kjv") w.ref->set_adapter(model);
      PeftModel & m = *w.ref;
      const eval::Scorer s = eval::scorer_of(m, [&m](const PeftInput & in) { return m.forward(in); }, model == "kjv");
      at::Tensor x = at::tensor(ids, at::kLong).unsqueeze(0);
      at::Tensor mask = at::ones_like(x, at::kBool);
      mask[0][0] = false;
      eval::score_tokens(s, x, mask, sc);
    }
    ASSERT_EQ(sc.logprob.size(), ids.size() - 1);
    double sum = 0, worst = 0;
    for (size_t t = 1; t < ids.size(); ++t) {
      worst = std::max(worst, std::abs(lp[t].get<double>() - sc.logprob[t - 1]));
      EXPECT_NEAR(lp[t].get<double>(), sc.logprob[t - 1], logprob_tol(sc.logprob[t - 1])) << model << " token " << t;
      sum -= lp[t].get<double>();
    }
    const at::Tensor lsm = w.log_softmax(ids, model);
    double worst_fwd = 0, worst_srv = 0;
    for (size_t t = 1; t < ids.size(); ++t) {
      worst_fwd = std::max(worst_fwd, std::abs(lsm[t - 1][ids[t]].item<double>() - sc.logprob[t - 1]));
      worst_srv = std::max(worst_srv, std::abs(lsm[t - 1][ids[t]].item<double>() - lp[t].get<double>()));
    }
    std::printf("%s: eval vs server %.3g, eval vs forward %.3g, server vs forward %.3g\n", model.c_str(), worst, worst_fwd, worst_srv);
    EXPECT_LE(worst_fwd, 1e-5) << model;  // peft eval's scorer and a whole forward: the same values
    // `peft eval` on the same ids (one window): its token loss is the mean of the server's values
    const std::string dir = temp_dir("serve-eval");
    std::ofstream(dir + "/ids.json") << nlohmann::json(std::vector<std::vector<int64_t>>{ids}).dump();
    std::string log;
    const std::string adapter = model == "kjv" ? "" : " --adapter " + w.dir + "/" + model;
    ASSERT_EQ(run_cli("eval --model " + kjv() + adapter + " --data " + dir + "/ids.json --context 128 --json " + dir +
                          "/out.json",
                      &log),
              0)
        << log;
    const auto r = nlohmann::json::parse(read_file(dir + "/out.json"))["results"]["ids"];
    EXPECT_EQ(r["tokens"].get<size_t>(), ids.size() - 1);
    EXPECT_NEAR(r["token_loss,none"].get<double>(), sum / static_cast<double>(ids.size() - 1), 1e-5) << model;
  }
}
