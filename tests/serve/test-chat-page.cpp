// peft serve's chat page (src/serve/chat-page/, compiled into the binary), with `peft serve` run as a
// program on 127.0.0.1 (any free port) over kjv-llama and a LoRA adapter. Over HTTP: / and its files are
// the source tree's bytes, public with --api-key while /v1 is not, and stderr has one access line per
// request. In Debian's chromium (headless, driven by chat-page.mjs through puppeteer-core from the npm
// fixture): what the page shows after streaming equals the API's greedy answer for the same messages, for
// the base, the adapter, both side by side (each pane its own model's), over two turns; Stop leaves a prefix
// of it; an API error is shown; with --api-key the page asks for the key and uses it. Every request the page
// makes goes to the server.
//   PEFT_CHAT_PAGE_SCREENSHOT=docs/images/chat-page.png build/tests/test_chat_page --gtest_filter=*Browser*Equal*
// writes the README's screenshot (the page after a side-by-side exchange).
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

const std::string kBase = "kjv-llama";
const std::string kAdapter = "random-lora";

std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }
std::string page_source(const std::string & name) { return std::string(PEFT_TEST_SOURCE) + "/../src/serve/chat-page/" + name; }

std::string read_file(const std::string & path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A LoRA adapter of kjv-llama with random B (scaled up threefold: its answers differ from the base's).
std::string make_adapter(const std::string & dir) {
  at::manual_seed(7);
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 8},
                                       {"target_modules", {"q_proj", "v_proj", "down_proj"}}, {"init_lora_weights", false}},
                                      "test");
  PeftModel m(load_model(kjv()), cfg);
  {
    at::NoGradGuard g;
    for (auto & p : m.trainable_parameters()) p.mul_(3.0);
  }
  const std::string path = dir + "/" + kAdapter;
  m.save_pretrained(path);
  return path;
}

// `peft serve` as a program: stderr to a file, the port read from its first line; stopped with SIGTERM
// (SIGKILL after 20 s) at the end. `timeout` bounds its life should the test die first.
struct ServeProcess {
  pid_t pid = -1;
  int port = 0;
  std::string log;

  ServeProcess(const std::string & args, const std::string & log_path) : log(log_path) {
    const std::string cmd = "exec timeout 600 " + std::string(PEFT_CLI) + " serve --model " + kjv() + " --port 0 " + args;
    pid = ::fork();
    if (pid == 0) {
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int null = ::open("/dev/null", O_RDWR);
      if (fd < 0 || null < 0) ::_exit(126);
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(fd, 2);
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char *>(nullptr));
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    static const std::regex listening("on http://127\\.0\\.0\\.1:([0-9]+)");
    while (pid > 0 && std::chrono::steady_clock::now() < deadline) {
      std::smatch m;
      const std::string text = stderr_text();
      if (std::regex_search(text, m, listening)) {
        port = std::stoi(m[1]);
        return;
      }
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~ServeProcess() { stop(); }

  std::string stderr_text() const { return read_file(log); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port) + "/"; }

  // SIGTERM and wait: true when it exited on its own (0) within 20 s
  bool stop() {
    if (pid <= 0) return false;
    ::kill(pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 400; ++i) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    pid = -1;
    return false;
  }
};

// The API's answer to these messages, not streamed (the page streams): greedy, max_tokens as the page sets it.
std::string api_answer(const ServeProcess & s, const std::string & model, const std::vector<nlohmann::json> & messages, int max_tokens,
                       const std::string & key = "") {
  httplib::Client c("127.0.0.1", s.port);
  c.set_read_timeout(120, 0);
  httplib::Headers h;
  if (!key.empty()) h.emplace("Authorization", "Bearer " + key);
  const nlohmann::json body = {{"model", model}, {"messages", messages}, {"temperature", 0}, {"max_tokens", max_tokens}};
  auto r = c.Post("/v1/chat/completions", h, body.dump(), "application/json");
  if (!r) return "<no response: " + httplib::to_string(r.error()) + ">";
  if (r->status != 200) return "<HTTP " + std::to_string(r->status) + ": " + r->body + ">";
  return nlohmann::json::parse(r->body)["choices"][0]["message"]["content"];
}

nlohmann::json user(const std::string & text) { return {{"role", "user"}, {"content", text}}; }
nlohmann::json assistant(const std::string & text) { return {{"role", "assistant"}, {"content", text}}; }

// Why the browser test cannot run here, or "".
std::string browser_missing() {
  const char * chromium = std::getenv("PEFT_CHROMIUM");
  if (!exists(chromium ? chromium : "/usr/bin/chromium")) return "chromium not installed (scripts/install-deps.sh installs it)";
  if (!exists(tokenizer_ref_dir() + "/node_modules/puppeteer-core/package.json")) return "npm package puppeteer-core not installed (tests/tokenizer/fetch-reference.sh)";
  return "";
}

// Run chat-page.mjs with this plan against the server; its JSON report (a failure names the output).
nlohmann::json drive_page(const ServeProcess & s, const std::string & dir, const nlohmann::json & plan) {
  const std::string plan_path = dir + "/plan.json", report = dir + "/report.json";
  std::ofstream(plan_path) << plan.dump();
  std::string out;
  const int rc = run_command("timeout 240 node " + std::string(PEFT_TEST_SOURCE) + "/serve/chat-page.mjs " + tokenizer_ref_dir() +
                                 " " + s.url() + " " + plan_path + " > " + report,
                             &out);
  nlohmann::json j = nlohmann::json::parse(read_file(report), nullptr, false);
  if (rc != 0 || !j.is_object()) {
    ADD_FAILURE() << "chat-page.mjs exited with " << rc << ": " << out << "\nreport: " << read_file(report);
    return nlohmann::json::object();
  }
  EXPECT_EQ(j["page_errors"], nlohmann::json::array()) << "errors thrown in the page";
  EXPECT_EQ(j["foreign_requests"], nlohmann::json::array()) << "the page fetched from elsewhere than the server";
  return j;
}

const std::string kFirst = "Who made the light?";
const std::string kSecond = "And the darkness?";

TEST(ChatPage, ServedWithItsFilesPublicAndEachRequestLogged) {
  const std::string dir = temp_dir("chat-page");
  ServeProcess s("--adapter " + make_adapter(dir) + " --api-key sekrit", dir + "/serve.log");
  ASSERT_GT(s.port, 0) << s.stderr_text();
  httplib::Client c("127.0.0.1", s.port);
  c.set_read_timeout(60, 0);
  // the page's files: the source tree's bytes, with their types, no key needed
  for (const auto & [path, file, type] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"/", "index.html", "text/html; charset=utf-8"},
           {"/chat.js", "chat.js", "text/javascript; charset=utf-8"},
           {"/chat.css", "chat.css", "text/css; charset=utf-8"}}) {
    auto r = c.Get(path.c_str());
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path;
    EXPECT_EQ(r->get_header_value("Content-Type"), type) << path;
    EXPECT_EQ(r->get_header_value("Cache-Control"), "no-cache") << path;
    EXPECT_EQ(r->get_header_value("X-Content-Type-Options"), "nosniff") << path;
    EXPECT_NE(r->get_header_value("Content-Security-Policy").find("default-src 'self'"), std::string::npos) << path;
    EXPECT_EQ(r->body, read_file(page_source(file))) << path;
  }
  // the page names its files as the server serves them
  const std::string html = c.Get("/")->body;
  EXPECT_NE(html.find("src=\"chat.js\""), std::string::npos);
  EXPECT_NE(html.find("href=\"chat.css\""), std::string::npos);
  EXPECT_EQ(c.Get("/chat.jsx")->status, 404);
  EXPECT_EQ(c.Get("/chatXjs")->status, 404);  // (the route's '.' is not a regex's any-character)
  // the API still needs the key
  EXPECT_EQ(c.Get("/v1/models")->status, 401);
  auto models = c.Get("/v1/models", {{"Authorization", "Bearer sekrit"}});
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);

  // the access log: a generation's line has its model, its tokens as the response's usage, and the time
  const nlohmann::json body = {{"model", kAdapter}, {"messages", nlohmann::json::array({user(kFirst)})}, {"temperature", 0}, {"max_tokens", 9}};
  auto r = c.Post("/v1/chat/completions", {{"Authorization", "Bearer sekrit"}}, body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const auto usage = nlohmann::json::parse(r->body)["usage"];
  nlohmann::json streamed = body;
  streamed["stream"] = true;
  streamed["model"] = kBase;
  streamed["max_tokens"] = 5;
  r = c.Post("/v1/chat/completions", {{"Authorization", "Bearer sekrit"}}, streamed.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(c.Get("/%0Aforged")->status, 404);  // a decoded newline in a path cannot forge a line
  ASSERT_TRUE(s.stop()) << s.stderr_text();
  const std::string log = s.stderr_text();
  std::vector<std::string> lines;
  std::stringstream ss(log);
  for (std::string l; std::getline(ss, l);) {
    if (l.rfind("peft serve: 127.0.0.1 ", 0) == 0) lines.push_back(l.substr(22));
  }
  auto has = [&](const std::string & pattern) {
    const std::regex re(pattern);
    for (const auto & l : lines) {
      if (std::regex_match(l, re)) return true;
    }
    return false;
  };
  EXPECT_TRUE(has("GET / 200 [0-9]+ ms")) << log;
  EXPECT_TRUE(has("GET /chat\\.js 200 [0-9]+ ms")) << log;
  EXPECT_TRUE(has("GET /v1/models 401 [0-9]+ ms")) << log;
  EXPECT_TRUE(has("GET /chatXjs 404 [0-9]+ ms")) << log;
  EXPECT_TRUE(has("POST /v1/chat/completions 200 model=" + kAdapter + " prompt=" + std::to_string(usage["prompt_tokens"].get<int>()) +
                  " completion=" + std::to_string(usage["completion_tokens"].get<int>()) + " [0-9]+ ms"))
      << log;
  EXPECT_EQ(usage["completion_tokens"], 9);
  EXPECT_TRUE(has("POST /v1/chat/completions 200 model=" + kBase + " prompt=[0-9]+ completion=5 [0-9]+ ms")) << log;  // streamed
  EXPECT_TRUE(has("GET /\\\\x0aforged 404 [0-9]+ ms")) << log;
  EXPECT_FALSE(has("GET /health .*")) << "health checks are not logged: " << log;
  // one line per request: 3 files, /, 2 misses, 2 model lists, 2 completions, the forged path
  EXPECT_EQ(lines.size(), 11u) << log;
}

TEST(ChatPage, BrowserAnswersEqualTheApisGreedyAnswers) {
  const std::string missing = browser_missing();
  if (!missing.empty()) GTEST_SKIP() << missing;
  const std::string dir = temp_dir("chat-page");
  ServeProcess s("--adapter " + make_adapter(dir), dir + "/serve.log");
  ASSERT_GT(s.port, 0) << s.stderr_text();
  const nlohmann::json greedy = {{"temperature", "0"}, {"max-tokens", "40"}};
  nlohmann::json plan = {
      {"sessions",
       {
           // the base over two turns: the second request carries the first answer
           {{"models", {kBase}}, {"settings", greedy}, {"messages", {kFirst, kSecond}}},
           {{"models", {kAdapter}}, {"settings", greedy}, {"messages", {kFirst}}},
           // Stop once the answer has begun: what was shown is where the greedy answer had got to
           {{"models", {kBase}}, {"settings", {{"temperature", "0"}, {"max-tokens", "200"}}}, {"messages", {kFirst}}, {"stop", true}},
           // the server's error, shown
           {{"models", {kAdapter}}, {"settings", {{"max-tokens", "100000"}}}, {"messages", {kFirst}}},
           // side by side: the same messages to both, each pane its own model's answers
           {{"models", {kBase, kAdapter}}, {"settings", greedy}, {"messages", {kSecond, kFirst}}},
       }}};
  if (const char * shot = std::getenv("PEFT_CHAT_PAGE_SCREENSHOT")) plan["screenshot"] = shot;
  const nlohmann::json j = drive_page(s, dir, plan);
  ASSERT_EQ(j["sessions"].size(), 5u) << j.dump();
  EXPECT_EQ(j["key_prompts"], 0);
  auto pane = [&](size_t session, size_t p) { return j["sessions"][session]["panes"][p]; };

  // the base, two turns
  const std::string base1 = api_answer(s, kBase, {user(kFirst)}, 40);
  ASSERT_EQ(j["sessions"][0]["panes"].size(), 1u);
  EXPECT_EQ(pane(0, 0)["model"], kBase);
  EXPECT_EQ(pane(0, 0)["answers"][0], base1);
  EXPECT_EQ(pane(0, 0)["answers"][1], api_answer(s, kBase, {user(kFirst), assistant(base1), user(kSecond)}, 40));
  EXPECT_EQ(pane(0, 0)["finish"], nlohmann::json({"length", "length"}));
  EXPECT_NE(pane(0, 0)["meta"][0].get<std::string>().find("completion tokens"), std::string::npos) << pane(0, 0).dump();
  // the adapter
  const std::string adapter1 = api_answer(s, kAdapter, {user(kFirst)}, 40);
  EXPECT_NE(adapter1, base1);  // (else the panes below could not tell the models apart)
  EXPECT_EQ(pane(1, 0)["model"], kAdapter);
  EXPECT_EQ(pane(1, 0)["answers"], nlohmann::json({adapter1}));
  // stopped: a non-empty prefix of the whole greedy answer
  const std::string whole = api_answer(s, kBase, {user(kFirst)}, 200);
  const std::string part = pane(2, 0)["answers"][0];
  EXPECT_EQ(pane(2, 0)["finish"][0], "stopped") << "(the answer ended before Stop was clicked: " << part.size() << " bytes)";
  EXPECT_FALSE(part.empty());
  EXPECT_LT(part.size(), whole.size());
  EXPECT_EQ(whole.compare(0, part.size(), part), 0) << "shown: " << part << "\ngreedy: " << whole;
  // the error
  EXPECT_EQ(pane(3, 0)["finish"][0], "error");
  EXPECT_NE(pane(3, 0)["meta"][0].get<std::string>().find("maximum context length is 256 tokens"), std::string::npos) << pane(3, 0).dump();
  // side by side, two turns each
  ASSERT_EQ(j["sessions"][4]["panes"].size(), 2u) << j["sessions"][4].dump();
  for (size_t p = 0; p < 2; ++p) {
    const std::string model = p == 0 ? kBase : kAdapter;
    const auto got = pane(4, p);
    EXPECT_EQ(got["model"], model);
    ASSERT_EQ(got["answers"].size(), 2u) << got.dump();
    const std::string first = api_answer(s, model, {user(kSecond)}, 40);
    EXPECT_EQ(got["answers"][0], first) << model;
    EXPECT_EQ(got["answers"][1], api_answer(s, model, {user(kSecond), assistant(first), user(kFirst)}, 40)) << model;
  }
  EXPECT_NE(pane(4, 0)["answers"][0], pane(4, 1)["answers"][0]);
  EXPECT_TRUE(s.stop()) << s.stderr_text();
}

TEST(ChatPage, BrowserWithApiKey) {
  const std::string missing = browser_missing();
  if (!missing.empty()) GTEST_SKIP() << missing;
  const std::string dir = temp_dir("chat-page");
  ServeProcess s("--adapter " + make_adapter(dir) + " --api-key sekrit", dir + "/serve.log");
  ASSERT_GT(s.port, 0) << s.stderr_text();
  const nlohmann::json greedy = {{"temperature", "0"}, {"max-tokens", "24"}};
  // a wrong key first (refused: asked again), then the right one, remembered: the reloaded page asks no more
  const nlohmann::json plan = {{"keys", {"wrong", "sekrit"}},
                               {"remember_key", true},
                               {"sessions",
                                {{{"models", {kAdapter}}, {"settings", greedy}, {"messages", {kFirst}}},
                                 {{"models", {kBase, kAdapter}}, {"settings", greedy}, {"messages", {kSecond}}}}}};
  const nlohmann::json j = drive_page(s, dir, plan);
  ASSERT_EQ(j["sessions"].size(), 2u) << j.dump();
  EXPECT_EQ(j["key_prompts"], 2);
  EXPECT_EQ(j["sessions"][0]["panes"][0]["answers"], nlohmann::json({api_answer(s, kAdapter, {user(kFirst)}, 24, "sekrit")}));
  EXPECT_EQ(j["sessions"][1]["panes"][0]["answers"], nlohmann::json({api_answer(s, kBase, {user(kSecond)}, 24, "sekrit")}));
  EXPECT_EQ(j["sessions"][1]["panes"][1]["answers"], nlohmann::json({api_answer(s, kAdapter, {user(kSecond)}, 24, "sekrit")}));
  ASSERT_TRUE(s.stop());
  // the wrong key's request was refused, then the page's went through
  const std::string log = s.stderr_text();
  EXPECT_NE(log.find("GET /v1/models 401"), std::string::npos) << log;
  EXPECT_NE(log.find("POST /v1/chat/completions 200 model=" + kAdapter), std::string::npos) << log;
}

}  // namespace
