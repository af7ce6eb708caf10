// peft serve on 127.0.0.1: greedy answers equal `peft generate` for the request alone whatever else is in
// the batch (rows of 4 adapters and the base in the same compiled steps), OpenAI's Node client and curl
// against it, a bounded load test, bad requests and a disconnecting client, adapters loaded and unloaded
// while serving, and the API key.
#include "serve/serve-world.h"

using namespace peft;
using namespace peft::test;
using namespace peft::test::serve_world;

namespace {

TEST(Serve, GreedyEqualsGenerateAloneInMixedBatches) {
  World & w = world();
  std::vector<std::pair<std::string, std::string>> jobs;  // (model, prompt)
  for (const auto & m : {"kjv", "a0", "a1", "a2", "a3"}) {
    for (size_t p = 0; p < 3; ++p) jobs.emplace_back(m, kPrompts[p]);
  }
  completion("a0", kPrompts[4], 2);  // warm: the prefill and decode graphs exist
  const auto before = w.engine->stats();
  std::vector<nlohmann::json> got(jobs.size());
  std::vector<int> status(jobs.size());
  std::vector<std::thread> ts;
  for (size_t i = 0; i < jobs.size(); ++i) {
    ts.emplace_back([&, i] { got[i] = completion(jobs[i].first, jobs[i].second, 16, &status[i]); });
  }
  for (auto & t : ts) t.join();
  const auto after = w.engine->stats();
  std::set<std::string> distinct;
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_EQ(status[i], 200) << got[i].dump();
    const std::string want = w.expect(jobs[i].second, jobs[i].first, 16);
    EXPECT_EQ(got[i]["choices"][0]["text"], want) << jobs[i].first << " / " << jobs[i].second;
    EXPECT_EQ(got[i]["usage"]["prompt_tokens"], static_cast<int64_t>(w.tok->encode(jobs[i].second, true).size()));
    distinct.insert(want);
  }
  EXPECT_GE(distinct.size(), 10u);  // the adapters change the answers
  // the requests shared decode steps: far fewer steps than tokens
  const int64_t tokens = after.completion_tokens - before.completion_tokens;
  const int64_t steps = after.decode_steps - before.decode_steps;
  EXPECT_LT(steps * 2, tokens) << steps << " steps for " << tokens << " tokens";
  // and any mix of adapters in a step ran through the same compiled graphs: nothing was captured again
  EXPECT_GT(before.graphs_compiled, 0);
  EXPECT_EQ(after.graphs_compiled, before.graphs_compiled);
}

TEST(Serve, CliGenerateGivesTheSameTokens) {
  World & w = world();
  std::string out;
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --adapter " + w.dir + "/a1 --prompt '" + kPrompts[1] +
                        "' --max-new-tokens 16 --print-ids",
                    &out),
            0)
      << out;
  // the last line holds the new token ids
  auto ids = nlohmann::json::parse(out.substr(out.rfind("\n[") + 1), nullptr, false);
  ASSERT_TRUE(ids.is_array()) << out;
  std::vector<int64_t> v = ids.get<std::vector<int64_t>>();
  auto got = completion("a1", kPrompts[1], 16);
  EXPECT_EQ(got["choices"][0]["text"], w.tok->decode(v));
}

TEST(Serve, OpenAINodeClient) {
  if (!exists(tokenizer_ref_dir() + "/node_modules/openai/package.json")) GTEST_SKIP() << "npm package openai not installed";
  World & w = world();
  std::string out;
  const std::string prompt = kPrompts[2];
  ASSERT_EQ(run_command("node " + std::string(PEFT_TEST_SOURCE) + "/serve/openai-client.js " + tokenizer_ref_dir() + " " + w.url() +
                            "/v1 none a2 '" + prompt + "'",
                        &out),
            0)
      << out;
  auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["models"], nlohmann::json({"kjv", "a0", "a1", "a2", "a3"}));
  const std::string want = w.expect(prompt, "a2", 12);
  EXPECT_EQ(j["completion"]["text"], want);
  EXPECT_EQ(j["completion"]["object"], "text_completion");
  EXPECT_EQ(j["completion"]["usage"]["completion_tokens"], 12);
  EXPECT_EQ(j["stream"]["text"], want);
  EXPECT_GT(j["stream"]["chunks"].get<int>(), 2);
  EXPECT_EQ(j["stream"]["finish_reason"], "length");
  // chat: the model's template, rendered and tokenized as transformers would
  auto tpl = ChatTemplate::from_model(kjv());
  const std::string text = tpl.render(nlohmann::json::array({{{"role", "user"}, {"content", prompt}}}), true);
  auto ids = w.generate_ids(w.tok->encode(text, false), "a2", 12);
  std::vector<int64_t> kept;
  for (int64_t id : ids) {
    const auto & eos = w.ref->base_model().config().eos_token_ids;
    if (std::find(eos.begin(), eos.end(), id) != eos.end()) break;
    kept.push_back(id);
  }
  EXPECT_EQ(j["chat"]["content"], w.tok->decode(kept));
  EXPECT_EQ(j["chat"]["role"], "assistant");
  EXPECT_EQ(j["chat_stream"]["content"], w.tok->decode(kept));
  EXPECT_EQ(j["chat_stream"]["roles"], nlohmann::json({"assistant"}));
  EXPECT_EQ(j["chat_stream"]["usage"]["completion_tokens"], j["chat"]["usage"]["completion_tokens"]);
  EXPECT_EQ(j["unknown_model"]["status"], 404);
  EXPECT_EQ(j["unknown_model"]["code"], "model_not_found");
}

TEST(Serve, Curl) {
  World & w = world();
  std::string out;
  ASSERT_EQ(run_command("curl -s -S --max-time 60 " + w.url() + "/v1/completions -H 'Content-Type: application/json' -d '" +
                            nlohmann::json({{"model", "a3"}, {"prompt", kPrompts[0]}, {"max_tokens", 8}, {"temperature", 0}}).dump() +
                            "'",
                        &out),
            0)
      << out;
  auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["choices"][0]["text"], w.expect(kPrompts[0], "a3", 8));
  ASSERT_EQ(run_command("curl -s -S --max-time 30 " + w.url() + "/metrics", &out), 0) << out;
  for (const char * m : {"peft_requests_total", "peft_generation_tokens_total", "peft_requests_waiting",
                         "peft_time_to_first_token_seconds_count", "peft_inter_token_latency_seconds_sum"}) {
    EXPECT_NE(out.find(m), std::string::npos) << m;
  }
  ASSERT_EQ(run_command("curl -s -S --max-time 30 " + w.url() + "/health", &out), 0);
  EXPECT_NE(out.find("ok"), std::string::npos);
}

// 32 clients, a few hundred requests over 4 adapters and the base, a quarter streamed: every request
// completes with the answer it gets alone; memory stays bounded.
TEST(Serve, LoadTest) {
  World & w = world();
  for (const auto & m : {"kjv", "a0", "a1", "a2", "a3"}) {
    for (const auto & p : kPrompts) w.expect(p, m, 8);
  }
  completion("a0", kPrompts[0], 8);  // warm: graphs compiled before measuring memory
  const int64_t rss_before = rss_kb();
  const int clients = 32, per_client = 8;
  std::atomic<int> ok{0}, wrong{0}, retried{0};
  std::vector<std::string> failures;
  std::mutex fmu;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c) {
    ts.emplace_back([&, c] {
      std::mt19937 rng(c);
      httplib::Client cli("127.0.0.1", w.port());
      cli.set_read_timeout(300, 0);
      for (int k = 0; k < per_client; ++k) {
        const std::string model = std::vector<std::string>{"kjv", "a0", "a1", "a2", "a3"}[rng() % 5];
        const std::string prompt = kPrompts[rng() % kPrompts.size()];
        const bool stream = rng() % 4 == 0;
        nlohmann::json body = {{"model", model}, {"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}, {"stream", stream}};
        auto r = cli.Post("/v1/completions", body.dump(), "application/json");
        if (!r) {  // a transport error (a kept-alive connection closing as it was reused): once more, as clients do
          ++retried;
          r = cli.Post("/v1/completions", body.dump(), "application/json");
        }
        std::string text;
        if (r && r->status == 200 && stream) {
          std::stringstream ss(r->body);
          for (std::string line; std::getline(ss, line);) {
            if (line.rfind("data: {", 0) != 0) continue;
            auto j = nlohmann::json::parse(line.substr(6), nullptr, false);
            if (j.is_object() && j.contains("choices") && !j["choices"].empty()) text += j["choices"][0]["text"].get<std::string>();
          }
        } else if (r && r->status == 200) {
          text = nlohmann::json::parse(r->body)["choices"][0]["text"];
        }
        if (r && r->status == 200 && text == w.expect(prompt, model, 8)) {
          ++ok;
        } else {
          ++wrong;
          std::lock_guard<std::mutex> g(fmu);
          failures.push_back(model + " / " + prompt + ": " + (r ? std::to_string(r->status) + " " + r->body.substr(0, 200) : "no response: " + httplib::to_string(r.error())));
        }
      }
    });
  }
  for (auto & t : ts) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ok.load(), clients * per_client);
  for (size_t i = 0; i < failures.size() && i < 5; ++i) ADD_FAILURE() << failures[i];
  const int64_t grown_mb = (rss_kb() - rss_before) / 1024;
  EXPECT_LT(grown_mb, 300) << "RSS grew by " << grown_mb << " MB";
  std::printf("load test: %d requests in %.1f s, RSS +%lld MB, %d sent again after a transport error\n", clients * per_client,
              secs, static_cast<long long>(grown_mb), retried.load());
  // (cpp-httplib 0.11 drops about one connection in a few hundred when 32 clients connect at once; the
  // OpenAI clients retry such errors by default; more than a few would be a server fault)
  EXPECT_LE(retried.load(), clients * per_client / 20);
  EXPECT_EQ(w.engine->stats().running, 0);
}

TEST(Serve, BadRequestsGetOpenAIErrorsAndTheServerGoesOn) {
  World & w = world();
  httplib::Client c("127.0.0.1", w.port());
  c.set_read_timeout(60, 0);
  auto check = [&](const std::string & body, int want_status, const std::string & want_in_message, const std::string & code = "") {
    auto r = c.Post("/v1/completions", body, "application/json");
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, want_status) << body << " -> " << r->body;
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(want_in_message), std::string::npos) << r->body;
    EXPECT_TRUE(j["error"].contains("type") && j["error"].contains("param") && j["error"].contains("code")) << r->body;
    if (!code.empty()) EXPECT_EQ(j["error"]["code"], code) << r->body;
  };
  check("{not json", 400, "not valid JSON");
  check(R"({"model": "nope", "prompt": "x"})", 404, "does not exist", "model_not_found");
  check(R"({"model": "kjv", "prompt": "x", "max_tokens": 1000})", 400, "maximum context length", "context_length_exceeded");
  std::string longp;
  for (int i = 0; i < 200; ++i) longp += "the LORD ";
  check(nlohmann::json({{"model", "kjv"}, {"prompt", longp}}).dump(), 400, "maximum context length", "context_length_exceeded");
  check(R"({"model": "kjv", "prompt": "x", "temperature": 7})", 400, "'temperature' must be in");
  check(R"({"model": "kjv", "prompt": "x", "n": 0})", 400, "'n' must be in");
  check(R"({"model": "kjv", "prompt": "x", "logprobs": 3})", 400, "'logprobs' is not supported");
  check(R"({"model": "kjv"})", 400, "'prompt' is required");
  check(R"({"model": "kjv", "prompt": [5, 99999]})", 400, "outside the vocabulary");
  // a client that hangs up mid-stream: its request is cancelled, everyone else is served
  {
    httplib::Client s("127.0.0.1", w.port());
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = nlohmann::json({{"model", "a1"}, {"prompt", kPrompts[3]}, {"max_tokens", 100}, {"stream", true}, {"temperature", 0}}).dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char *, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
    auto r = s.send(req);
    EXPECT_GE(chunks, 3);
  }
  for (int i = 0; i < 100 && w.engine->stats().running > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(w.engine->stats().running, 0);
  auto j = completion("a1", kPrompts[3], 8);
  EXPECT_EQ(j["choices"][0]["text"], w.expect(kPrompts[3], "a1", 8));
}

TEST(Serve, AdaptersLoadAndUnloadWhileServing) {
  World & w = world();
  httplib::Client c("127.0.0.1", w.port());
  c.set_read_timeout(60, 0);
  // a copy of a0 under the adapter root, loaded as "fresh"
  ASSERT_EQ(run_command("cp -r " + w.dir + "/a0 " + w.dir + "/fresh"), 0);
  ::mkdir((w.dir + "/empty").c_str(), 0755);
  int st = 0;
  // a long request of another adapter runs meanwhile and is not disturbed
  nlohmann::json running;
  std::thread longreq([&] { running = completion("a2", kPrompts[5], 48); });
  auto j = post(c, "/v1/load_lora_adapter", {{"lora_name", "fresh"}, {"lora_path", "fresh"}}, &st);
  EXPECT_EQ(st, 200);
  auto models = nlohmann::json::parse(c.Get("/v1/models")->body);
  bool listed = false;
  for (const auto & m : models["data"]) listed = listed || m["id"] == "fresh";
  EXPECT_TRUE(listed);
  EXPECT_EQ(completion("fresh", kPrompts[4], 10)["choices"][0]["text"], w.expect(kPrompts[4], "a0", 10));
  // refused: outside the root (as a path that does not exist: no oracle), a folder that is no adapter,
  // a bad name, a name in use
  j = post(c, "/v1/load_lora_adapter", {{"lora_name", "x"}, {"lora_path", "../"}}, &st);
  EXPECT_EQ(st, 400);
  EXPECT_NE(j.dump().find("not an adapter folder inside the adapter root"), std::string::npos) << j.dump();
  post(c, "/v1/load_lora_adapter", {{"lora_name", "x"}, {"lora_path", "/tmp"}}, &st);
  EXPECT_EQ(st, 400);
  j = post(c, "/v1/load_lora_adapter", {{"lora_name", "x"}, {"lora_path", "empty"}}, &st);
  EXPECT_EQ(st, 400);
  EXPECT_NE(j.dump().find("cannot load the adapter"), std::string::npos) << j.dump();
  post(c, "/v1/load_lora_adapter", {{"lora_name", "../evil"}, {"lora_path", "fresh"}}, &st);
  EXPECT_EQ(st, 400);
  post(c, "/v1/load_lora_adapter", {{"lora_name", "a1"}, {"lora_path", "fresh"}}, &st);
  EXPECT_EQ(st, 400);
  // unloaded: gone from the list and from requests
  post(c, "/v1/unload_lora_adapter", {{"lora_name", "fresh"}}, &st);
  EXPECT_EQ(st, 200);
  completion("fresh", kPrompts[4], 4, &st);
  EXPECT_EQ(st, 404);
  post(c, "/v1/unload_lora_adapter", {{"lora_name", "fresh"}}, &st);
  EXPECT_EQ(st, 404);
  longreq.join();
  EXPECT_EQ(running["choices"][0]["text"], w.expect(kPrompts[5], "a2", 48));
}

TEST(Serve, ApiKeyAndDisabledLoading) {
  World & w = world();  // (its model and adapters)
  auto pm = std::make_shared<PeftModel>(load_model(kjv()));
  serve::EngineOptions eo;
  eo.max_context = 64;
  auto engine = std::make_shared<serve::Engine>(pm, eo, w.tok);
  serve::ServerOptions so;
  so.port = 0;
  so.model_name = "kjv";
  so.api_key = "sekrit";
  serve::Server server(engine, w.tok, std::nullopt, so);
  server.bind();
  std::thread t([&] { server.run(); });
  httplib::Client c("127.0.0.1", server.port());
  const std::string body = nlohmann::json({{"model", "kjv"}, {"prompt", kPrompts[0]}, {"max_tokens", 4}, {"temperature", 0}}).dump();
  auto r = c.Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_NE(r->body.find("invalid_api_key"), std::string::npos);
  r = c.Post("/v1/completions", {{"Authorization", "Bearer wrong"}}, body, "application/json");
  EXPECT_EQ(r->status, 401);
  r = c.Post("/v1/completions", {{"Authorization", "Bearer sekrit"}}, body, "application/json");
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);
  r = c.Post("/v1/load_lora_adapter", {{"Authorization", "Bearer sekrit"}},
             nlohmann::json({{"lora_name", "a0"}, {"lora_path", w.dir + "/a0"}}).dump(), "application/json");
  EXPECT_EQ(r->status, 403);
  // no chat template given: chat completions answer with an error naming it
  r = c.Post("/v1/chat/completions", {{"Authorization", "Bearer sekrit"}},
             R"({"model": "kjv", "messages": [{"role": "user", "content": "hi"}]})", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("chat template"), std::string::npos);
  server.stop();
  t.join();
}

}  // namespace

namespace {

// The engine owns the served model's adapters: a model that comes with adapters is refused (they would
// skip the load-time checks), and each adapter loads through load_adapter, which refuses what a mixed batch
// cannot hold and leaves the model as it was.
TEST(ServeEngine, AdaptersEnterOnlyThroughTheEngine) {
  const std::string several = golden_case("several_active") + "/adapters/";
  auto held = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
  held->load_adapter(several + "plain", "plain");
  serve::EngineOptions eo;
  eo.max_context = 32;
  const std::string e = error_of([&] { serve::Engine engine(held, eo, nullptr); });
  EXPECT_NE(e.find("already holds adapter(s) 'plain'"), std::string::npos) << e;
  EXPECT_NE(e.find("Engine::load_adapter"), std::string::npos) << e;

  auto pm = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")));
  serve::Engine engine(pm, eo, nullptr);
  auto refused = [&](const std::string & dir, const std::string & name) {
    const std::string err = error_of([&] { engine.load_adapter(dir, name); });
    EXPECT_NE(err.find("DoRA"), std::string::npos) << name << ": " << err;
    EXPECT_FALSE(engine.has_adapter(name));
  };
  refused(several + "dora", "d");
  EXPECT_TRUE(pm->adapter_names().empty());  // undone
  engine.load_adapter(several + "plain", "plain");
  refused(several + "dora", "d");  // again, with another adapter loaded
  engine.load_adapter(several + "other", "other");
  engine.unload_adapter("plain");
  refused(several + "dora", "plain");  // and after one was unloaded, under its name
  EXPECT_EQ(engine.adapters(), std::vector<std::string>{"other"});
  EXPECT_EQ(pm->adapter_names(), std::vector<std::string>{"other"});
  EXPECT_EQ(error_of([&] { engine.load_adapter(several + "plain", kBaseAdapter); }), "adapter name '__base__' is reserved");
  // a request for the loaded adapter runs to its end
  std::promise<serve::Finish> done;
  serve::Request r;
  r.adapter = "other";
  r.prompt = {1, 5, 9};
  r.params.max_tokens = 3;
  r.params.temperature = 0;
  r.callbacks.on_done = [&](const serve::Finish & f) { done.set_value(f); };
  engine.submit(std::move(r));
  const serve::Finish f = done.get_future().get();
  EXPECT_TRUE(f.reason == serve::FinishReason::kLength || f.reason == serve::FinishReason::kStop)
      << serve::finish_reason_name(f.reason) << ": " << f.error;
  engine.stop();
}

TEST(ServeCli, AnAdapterThatCannotShareABatchIsRefusedAtStart) {
  std::string out;
  EXPECT_EQ(run_cli("serve --model " + golden_model("tiny-llama") + " --adapter " + golden_case("dora") + "/adapter=d --port 0", &out), 1)
      << out;
  EXPECT_NE(out.find("DoRA"), std::string::npos) << out;
}

}  // namespace
