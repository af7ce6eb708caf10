// The served world of the server tests: kjv-llama with four LoRA adapters behind a compiled engine and
// `peft serve`'s HTTP server on 127.0.0.1 (any free port), and an eager reference model that computes what
// `peft generate` answers for one request alone. One per test process (gtest_discover_tests runs each test
// in its own).
#pragma once
#include <httplib.h>
#include <sys/stat.h>

#include <fstream>
#include <random>
#include <thread>

#include "peft/data/chat-template.h"
#include "peft/generate/generate.h"
#include "peft/io/files.h"
#include "peft/serve/server.h"
#include "peft/util/utf8.h"
#include "support.h"

namespace peft::test::serve_world {

using namespace peft;
using namespace peft::test;


inline std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }
inline const std::vector<std::string> kAdapters = {"a0", "a1", "a2", "a3"};
inline const std::vector<std::string> kPrompts = {"In the beginning", "And the LORD said unto Moses,", "Blessed are",
                                           "The grace of our Lord", "Then came", "He that hath an ear, let him hear"};

inline int64_t rss_kb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return 0;
}

// Four LoRA adapters of kjv-llama (random B: init_lora_weights false), the server with them loaded, and a
// separate eager model with the same adapters that computes what `peft generate` returns for one request.
struct World {
  std::string dir;
  std::shared_ptr<Tokenizer> tok;
  std::shared_ptr<PeftModel> ref;
  std::shared_ptr<serve::Engine> engine;
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  std::map<std::string, std::string> expected;  // key(prompt, model, max_tokens) -> text
  std::mutex mu;

  World() {
    dir = temp_dir("serve");
    for (size_t i = 0; i < kAdapters.size(); ++i) {
      at::manual_seed(1000 + i);
      auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 8},
                                           {"target_modules", {"q_proj", "v_proj", "down_proj"}}, {"init_lora_weights", false}},
                                          "test");
      PeftModel m(load_model(kjv()), cfg);
      {
        at::NoGradGuard g;  // larger than the default init: each adapter answers differently
        for (auto & p : m.trainable_parameters()) p.mul_(3.0);
      }
      m.save_pretrained(dir + "/" + kAdapters[i]);
    }
    tok = load_tokenizer(kjv(), 4096);
    ref = std::make_shared<PeftModel>(load_model(kjv()));
    for (const auto & a : kAdapters) ref->load_adapter(dir + "/" + a, a);
    serve::EngineOptions eo;
    eo.max_batch = 8;
    eo.max_context = 128;
    eo.prefill_chunk = 16;
    eo.compile = true;
    engine = std::make_shared<serve::Engine>(std::make_shared<PeftModel>(load_model(kjv())), eo, tok);
    // as `peft serve --adapter` loads them: through the engine, which owns the served model's adapters
    for (const auto & a : kAdapters) engine->load_adapter(dir + "/" + a, a);
    serve::ServerOptions so;
    so.port = 0;
    so.model_name = "kjv";
    so.access_log = false;  // (hundreds of requests; test-chat-page.cpp checks the log of `peft serve`)
    so.allow_adapter_loading = true;
    so.adapter_root = dir;
    server = std::make_unique<serve::Server>(engine, tok, ChatTemplate::from_model(kjv()), so);
    server->bind();
    thread = std::thread([this] { server->run(); });
  }
  ~World() {
    server->stop();
    thread.join();
    engine->stop();
  }
  int port() const { return server->port(); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port()); }

  // what `peft generate` gives for this request alone: the eager model, the adapter active, greedy
  std::vector<int64_t> generate_ids(const std::vector<int64_t> & prompt, const std::string & model, int64_t max_tokens) {
    std::lock_guard<std::mutex> g(mu);
    GenerationConfig gen;
    gen.max_new_tokens = max_tokens;
    gen.eos_token_ids = ref->base_model().config().eos_token_ids;
    LogitsFn fwd = [&](const ForwardInput & in) { return ref->forward(in); };
    if (model == "kjv") {
      auto off = ref->disable_adapter();
      return generate(fwd, ref->base_model().config(), ref->base_model().options(), {prompt}, gen)[0];
    }
    ref->set_adapter(model);
    return generate(fwd, ref->base_model().config(), ref->base_model().options(), {prompt}, gen)[0];
  }
  // log_softmax in float32 of one direct eager forward over `ids` with the model's adapter (or the base):
  // row t holds the log-probabilities of the token after ids[t]; (S, V)
  at::Tensor log_softmax(const std::vector<int64_t> & ids, const std::string & model) {
    std::lock_guard<std::mutex> g(mu);
    at::NoGradGuard ng;
    ForwardInput in;
    in.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    at::Tensor logits;
    if (model == "kjv") {
      auto off = ref->disable_adapter();
      logits = ref->forward(in);
    } else {
      ref->set_adapter(model);
      logits = ref->forward(in);
    }
    return at::log_softmax(logits[0].to(at::kFloat), -1);
  }
  std::string expect(const std::string & prompt, const std::string & model, int64_t max_tokens) {
    const std::string key = prompt + "|" + model + "|" + std::to_string(max_tokens);
    {
      std::lock_guard<std::mutex> g(mu);
      auto it = expected.find(key);
      if (it != expected.end()) return it->second;
    }
    auto ids = generate_ids(tok->encode(prompt, true), model, max_tokens);
    // eos ends a completion and is not part of its text; the API's text is valid UTF-8 (as HF decodes)
    std::string text = utf8_lossy(tok->decode(ids));
    std::lock_guard<std::mutex> g(mu);
    return expected[key] = text;
  }
};

// How far a served log-probability may be from a direct eager forward's (or `peft eval`'s): float32 rounding
// of a compiled, chunk-prefilled forward with the mixed-batch routing, 1e-5 plus 2e-6 of the value (measured
// here: at most 1.1e-5 at values near -8 for an adapter scaled up threefold; 7e-6 elsewhere).
inline double logprob_tol(double want) { return 1e-5 + 2e-6 * std::abs(want); }

inline World & world() {
  static World w;
  return w;
}

inline nlohmann::json post(httplib::Client & c, const std::string & path, const nlohmann::json & body, int * status = nullptr) {
  auto r = c.Post(path.c_str(), body.dump(), "application/json");
  if (!r) {
    if (status) *status = -1;
    return nlohmann::json{{"http_error", httplib::to_string(r.error())}};
  }
  if (status) *status = r->status;
  return nlohmann::json::parse(r->body, nullptr, false);
}

inline nlohmann::json completion(const std::string & model, const std::string & prompt, int64_t max_tokens, int * status = nullptr) {
  httplib::Client c("127.0.0.1", world().port());
  c.set_read_timeout(120, 0);
  const nlohmann::json body = {{"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
  int s = 0;
  nlohmann::json r = post(c, "/v1/completions", body, &s);
  // cpp-httplib 0.11 drops the odd connection when many clients connect at once on a loaded machine (see
  // LoadTest): a transport error (no HTTP status) is sent once more, as clients do
  if (s == -1) r = post(c, "/v1/completions", body, &s);
  if (status) *status = s;
  return r;
}

}  // namespace peft::test::serve_world
