// peft serve's request defaults from the model's generation_config.json (vLLM's --generation-config auto):
// a field a request leaves out takes the file's value; a field it sends wins; --generation-config vllm
// ignores the file; a bad file or flag is an error naming it.
#include <gtest/gtest.h>

#include <set>

#include "serve-world.h"

namespace {

using namespace peft::test::serve_world;

// a copy of kjv-llama whose generation_config.json is `gen`
std::string model_with(const nlohmann::json & gen) {
  const std::string dir = temp_dir("serve-defaults");
  for (const char * f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_EQ(run_command("cp " + kjv() + "/" + f + " " + dir + "/"), 0);
  }
  std::ofstream(dir + "/generation_config.json") << gen.dump();
  return dir;
}

struct Served {
  std::shared_ptr<serve::Engine> engine;
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  explicit Served(const std::string & model, const GenerationDefaults & d) {
    std::shared_ptr<Tokenizer> tok = load_tokenizer(model, 4096);
    serve::EngineOptions eo;
    eo.max_context = 96;
    engine = std::make_shared<serve::Engine>(std::make_shared<PeftModel>(load_model(model)), eo, tok);
    serve::ServerOptions so;
    so.port = 0;
    so.model_name = "kjv";
    so.defaults = d;
    server = std::make_unique<serve::Server>(engine, tok, std::nullopt, so);
    server->bind();
    thread = std::thread([this] { server->run(); });
  }
  ~Served() {
    server->stop();
    thread.join();
    engine->stop();
  }
  nlohmann::json complete(const nlohmann::json & body) {
    httplib::Client c("127.0.0.1", server->port());
    c.set_read_timeout(120, 0);
    int status = 0;
    nlohmann::json r = post(c, "/v1/completions", body, &status);
    EXPECT_EQ(status, 200) << r.dump();
    return r;
  }
};

TEST(ServeDefaults, GenerationConfigFillsWhatARequestLeavesOut) {
  // temperature 0 (greedy) and 5 new tokens unless the request says otherwise
  const std::string model = model_with({{"max_new_tokens", 5}, {"temperature", 0.0}, {"eos_token_id", nullptr}});
  const GenerationDefaults d = read_generation_config(model, 4096);
  ASSERT_TRUE(d.max_new_tokens && d.temperature);
  Served s(model, d);
  const nlohmann::json plain = s.complete({{"model", "kjv"}, {"prompt", "In the beginning"}, {"seed", 1}});
  EXPECT_EQ(plain["usage"]["completion_tokens"], 5) << plain.dump();
  // greedy by default: any seed gives the explicit temperature-0 answer
  const nlohmann::json other_seed = s.complete({{"model", "kjv"}, {"prompt", "In the beginning"}, {"seed", 99}});
  const nlohmann::json greedy = s.complete({{"model", "kjv"}, {"prompt", "In the beginning"}, {"temperature", 0}, {"max_tokens", 5}});
  EXPECT_EQ(plain["choices"][0]["text"], greedy["choices"][0]["text"]);
  EXPECT_EQ(other_seed["choices"][0]["text"], greedy["choices"][0]["text"]);
  // the request's own fields win
  const nlohmann::json three = s.complete({{"model", "kjv"}, {"prompt", "In the beginning"}, {"max_tokens", 3}});
  EXPECT_EQ(three["usage"]["completion_tokens"], 3) << three.dump();
  // without the file's defaults (OpenAI's): 16 tokens, sampled at temperature 1 (two seeds differ somewhere)
  Served plain_server(model, GenerationDefaults{});
  std::set<std::string> texts;
  for (int seed = 0; seed < 4; ++seed) {
    const nlohmann::json r = plain_server.complete({{"model", "kjv"}, {"prompt", "In the beginning"}, {"seed", seed}});
    EXPECT_EQ(r["usage"]["completion_tokens"], 16) << r.dump();
    texts.insert(r["choices"][0]["text"].get<std::string>());
  }
  EXPECT_GT(texts.size(), 1u) << "temperature 1 with four seeds gave one text";
}

TEST(ServeDefaults, BadFilesAndFlagsAreNamed) {
  const std::string bad = model_with({{"top_p", 1.5}});
  try {
    read_generation_config(bad, 4096);
    ADD_FAILURE() << "top_p 1.5 accepted";
  } catch (const Error & e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json: field 'top_p'"), std::string::npos) << e.what();
  }
  std::string out;
  EXPECT_EQ(run_cli("serve --port 0 --model " + bad, &out), 1) << out;
  EXPECT_NE(out.find("field 'top_p'"), std::string::npos) << out;
  const std::string hot = model_with({{"temperature", 3.0}});
  EXPECT_EQ(run_cli("serve --port 0 --model " + hot, &out), 1) << out;
  EXPECT_NE(out.find("'temperature' must be in [0, 2]"), std::string::npos) << out;
  EXPECT_EQ(run_cli("serve --port 0 --generation-config /nonexistent --model " + kjv(), &out), 2) << out;
  EXPECT_NE(out.find("--generation-config must be auto, vllm or a folder"), std::string::npos) << out;
}

}  // namespace
