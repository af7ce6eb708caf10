// Generation: the KV cache changes nothing (same tokens as recomputing the whole sequence), left
// padding in a batch changes nothing for a row, sampling is seeded, processors do what they say.
#include <ATen/CPUGeneratorImpl.h>

#include <set>
#include <sstream>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/generate/generate.h"
#include "peft/model/config.h"
#include "peft/tokenizer/tokenizer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

class Generate : public ::testing::TestWithParam<std::string> {
 protected:
  std::shared_ptr<CausalLM> m = load_model(golden_model(GetParam()));
  LogitsFn fwd = [this](const ForwardInput & in) { return m->forward(in); };
  std::vector<std::vector<int64_t>> prompts = {{5, 17, 33, 40, 2 + 9}, {60, 3}, {11, 12, 13, 14, 15, 16, 17, 18}};
  std::vector<std::vector<int64_t>> run(GenerationConfig g, const std::vector<std::vector<int64_t>> & p) {
    return generate(fwd, m->config(), m->options(), p, g);
  }
};

TEST_P(Generate, CacheGivesTheSameTokensAsNoCache) {
  GenerationConfig g;
  g.max_new_tokens = 24;
  auto cached = run(g, prompts);
  g.use_cache = false;
  EXPECT_EQ(cached, run(g, prompts));
}

TEST_P(Generate, SampledCacheAndNoCacheAgreeToo) {
  GenerationConfig g;
  g.max_new_tokens = 16;
  g.do_sample = true;
  g.temperature = 0.8;
  g.top_k = 20;
  g.top_p = 0.9;
  g.repetition_penalty = 1.3;
  g.seed = 7;
  auto cached = run(g, prompts);
  g.use_cache = false;
  EXPECT_EQ(cached, run(g, prompts));
}

TEST_P(Generate, BatchRowEqualsSingleRow) {
  GenerationConfig g;
  g.max_new_tokens = 12;
  auto batch = run(g, prompts);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(batch[i], run(g, {prompts[i]})[0]) << "row " << i;
}

TEST_P(Generate, SeededSamplingIsReproducibleAndTopK1IsGreedy) {
  GenerationConfig g;
  g.max_new_tokens = 10;
  auto greedy = run(g, prompts);
  g.do_sample = true;
  g.seed = 3;
  auto a = run(g, prompts), b = run(g, prompts);
  EXPECT_EQ(a, b);
  g.seed = 4;
  EXPECT_NE(a, run(g, prompts));  // 30 sampled tokens from a near-uniform model: equal only by accident
  g.top_k = 1;
  EXPECT_EQ(run(g, prompts), greedy);
}

TEST_P(Generate, StopsOnEos) {
  GenerationConfig g;
  g.max_new_tokens = 12;
  auto free_run = run(g, {prompts[0]})[0];
  g.eos_token_ids = {free_run[3]};
  auto stopped = run(g, {prompts[0]})[0];
  auto first = std::find(free_run.begin(), free_run.end(), free_run[3]) - free_run.begin();
  EXPECT_EQ(stopped.size(), static_cast<size_t>(first + 1));
}

TEST_P(Generate, StopsOnStopString) {
  auto tok = make_byte_tokenizer(m->config().vocab_size);
  GenerationConfig g;
  g.max_new_tokens = 12;
  auto free_run = run(g, {prompts[1]})[0];
  std::string text = tok->decode(free_run);
  ASSERT_GE(text.size(), 6u);
  g.stop_strings = {text.substr(3, 2)};
  auto stopped = generate(fwd, m->config(), m->options(), {prompts[1]}, g, {},
                          [&](const std::vector<int64_t> & ids) { return tok->decode(ids); })[0];
  EXPECT_LT(stopped.size(), free_run.size());
  EXPECT_NE(tok->decode(stopped).find(text.substr(3, 2)), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Models, Generate, ::testing::Values("tiny-llama", "tiny-opt"));

// sample_next's processors: logit bias first, min-p after temperature (vLLM's order), each doing what it says
TEST(Sampling, LogitBiasAndMinPDoWhatTheySay) {
  // probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1
  const at::Tensor logits = (at::log(at::tensor({0.5f, 0.3f, 0.15f, 0.05f})) + 10).unsqueeze(0);  // (all positive)
  at::Generator rng = at::detail::createCPUGenerator(7);
  GenerationConfig g;
  g.do_sample = true;
  auto counts = [&](const GenerationConfig & c) {
    std::vector<int> n(4, 0);
    for (int i = 0; i < 2000; ++i) ++n[sample_next(logits, {{}}, c, rng)[0].item<int64_t>()];
    return n;
  };
  std::vector<int> n = counts(g);
  EXPECT_GT(n[3], 0);  // (the tail is sampled without min_p: the checks below can fail)
  g.min_p = 0.2;       // threshold 0.1: only the 0.05 token goes
  n = counts(g);
  EXPECT_EQ(n[3], 0);
  EXPECT_GT(n[2], 0);
  g.temperature = 0.5;  // min_p applies after temperature: 0.5^2 : 0.15^2 = 0.09 < 0.2 of the top's probability
  n = counts(g);
  EXPECT_EQ(n[2], 0);
  EXPECT_GT(n[1], 0);
  g.min_p = 1.0;  // only the most likely token
  n = counts(g);
  EXPECT_EQ(n[0], 2000);
  // a bias makes the last token the most likely, before the penalty and greedy choice too
  GenerationConfig greedy;
  greedy.logit_bias = {{3, 5.0f}};
  EXPECT_EQ(sample_next(logits, {{}}, greedy, rng)[0].item<int64_t>(), 3);
  greedy.repetition_penalty = 1e6;  // the biased token seen before: penalised after the bias
  EXPECT_EQ(sample_next(logits, {{3}}, greedy, rng)[0].item<int64_t>(), 0);
}

TEST(GenerateArgs, InvalidSettingsAreErrors) {
  auto m = load_model(golden_model("tiny-llama"));
  LogitsFn fwd = [&](const ForwardInput & in) { return m->forward(in); };
  GenerationConfig g;
  g.temperature = 0;
  EXPECT_THROW(generate(fwd, m->config(), m->options(), {{1, 2}}, g), peft::Error);
  g = GenerationConfig();
  g.top_p = 1.5;
  EXPECT_THROW(generate(fwd, m->config(), m->options(), {{1, 2}}, g), peft::Error);
  g = GenerationConfig();
  EXPECT_THROW(generate(fwd, m->config(), m->options(), {{}}, g), peft::Error);
}

TEST(GenerateCli, StreamsAndPrintsIds) {
  std::string out;
  ASSERT_EQ(run_cli("generate --byte-tokenizer --model " + golden_model("tiny-llama") + " --prompt Hi --max-new-tokens 5 --print-ids", &out), 0)
      << out;
  EXPECT_EQ(out.rfind("Hi", 0), 0u) << out;
  EXPECT_NE(out.find("["), std::string::npos) << out;
  ASSERT_EQ(run_cli("generate --byte-tokenizer --model " + golden_model("tiny-llama") + " --prompt Hi --max-new-tokens 5 --temperature 0", &out), 1);
  EXPECT_NE(out.find("temperature"), std::string::npos) << out;
}

// ---- peft generate --chat (one-shot and interactive) and --prompts-file (offline batches) ----

std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }

// Single-quoted for the shell (the test's own texts have no quote).
std::string q(const std::string & s) { return "'" + s + "'"; }

// The lines of `out` that are JSON arrays of integers: what --print-ids prints, one per answer.
std::vector<std::vector<int64_t>> ids_lines(const std::string & out) {
  std::vector<std::vector<int64_t>> rows;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_array()) continue;
    std::vector<int64_t> row;
    bool ints = true;
    for (const auto & x : j) {
      if (!x.is_number_integer()) ints = false;
      if (ints) row.push_back(x.get<int64_t>());
    }
    if (ints) rows.push_back(row);
  }
  return rows;
}

// The prompt kjv-llama's chat template makes of `messages` with the generation prompt (peft chat-template),
// without its leading bos_token "<s>": a plain --prompt gets the BOS from the tokenizer.
std::string rendered_without_bos(const nlohmann::json & messages, const std::string & dir) {
  write_file_atomic(dir + "/messages.json", messages.dump());
  std::string text;
  EXPECT_EQ(run_cli("chat-template --model " + kjv() + " --messages " + dir + "/messages.json --add-generation-prompt", &text), 0)
      << text;
  EXPECT_EQ(text.rfind("<s>", 0), 0u) << text;
  return text.substr(std::min<size_t>(3, text.size()));
}

// The ids a plain `peft generate --prompt TEXT --print-ids` generates (TEXT from a file: it has newlines).
std::vector<int64_t> plain_run_ids(const std::string & text, const std::string & dir, const std::string & flags) {
  write_file_atomic(dir + "/prompt.txt", text);
  std::string out;
  const int rc = run_command("p=\"$(cat " + dir + "/prompt.txt; printf x)\"; " + std::string(PEFT_CLI) + " generate --model " +
                                 kjv() + " --prompt \"${p%x}\" --print-ids " + flags,
                             &out);
  EXPECT_EQ(rc, 0) << out;
  auto rows = ids_lines(out);
  EXPECT_EQ(rows.size(), 1u) << out;
  return rows.empty() ? std::vector<int64_t>{} : rows.back();
}

TEST(GenerateChat, OneShotEqualsTheRenderedTemplateAsAPlainPrompt) {
  const std::string dir = temp_dir("chat-oneshot"), flags = "--max-new-tokens 24";
  const nlohmann::json messages = {{{"role", "system"}, {"content", "Answer as the scripture does."}},
                                   {{"role", "user"}, {"content", "Who made the heaven and the earth?"}}};
  std::string out;
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --chat --system " + q("Answer as the scripture does.") + " --prompt " +
                        q("Who made the heaven and the earth?") + " --print-ids " + flags,
                    &out),
            0)
      << out;
  const auto chat = ids_lines(out);
  ASSERT_EQ(chat.size(), 1u) << out;
  ASSERT_FALSE(chat[0].empty()) << out;
  EXPECT_EQ(chat[0], plain_run_ids(rendered_without_bos(messages, dir), dir, flags));
  // the answer is printed without the prompt (and without the end-of-turn token's text)
  EXPECT_EQ(out.find("Who made"), std::string::npos) << out;
  EXPECT_EQ(out.find("<|"), std::string::npos) << out;
}

// One {"messages": ...} line through --prompts-file: the completion's text.
std::string completion_of(const nlohmann::json & messages, const std::string & dir, const std::string & flags) {
  write_file_atomic(dir + "/one.jsonl", nlohmann::json({{"messages", messages}}).dump() + "\n");
  std::string out;
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompts-file " + dir + "/one.jsonl --out " + dir + "/one.out.jsonl " + flags,
                    &out),
            0)
      << out;
  const auto rows = read_jsonl(dir + "/one.out.jsonl", {});
  EXPECT_EQ(rows.size(), 1u);
  return rows.empty() ? "" : rows[0]["completion"].get<std::string>();
}

TEST(GenerateChat, InteractiveLoopKeepsTheHistory) {
  const std::string dir = temp_dir("chat-loop"), flags = "--max-new-tokens 16";
  const std::string u1 = "Who made the heaven?", u2 = "And what did he say unto Moses?";
  write_file_atomic(dir + "/turns.txt", u1 + "\n" + u2 + "\n");
  std::string out;
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --chat --print-ids " + flags + " < " + dir + "/turns.txt", &out), 0) << out;
  const auto turns = ids_lines(out);
  ASSERT_EQ(turns.size(), 2u) << out;  // an answer to each turn, then the end of input ends the chat
  EXPECT_NE(out.rfind("> ", 0), 0u) << "no prompt when stdin is not a terminal: " << out;

  // turn 1 = a one-shot chat of u1
  const nlohmann::json m1 = {{{"role", "user"}, {"content", u1}}};
  std::string one;
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --chat --print-ids --prompt " + q(u1) + " " + flags, &one), 0) << one;
  ASSERT_EQ(ids_lines(one).size(), 1u) << one;
  EXPECT_EQ(turns[0], ids_lines(one)[0]);
  // turn 2 = a one-shot run of the whole history, the first answer's text as the assistant's message
  const std::string a1 = completion_of(m1, dir, flags);
  nlohmann::json m2 = m1;
  m2.push_back({{"role", "assistant"}, {"content", a1}});
  m2.push_back({{"role", "user"}, {"content", u2}});
  EXPECT_EQ(turns[1], plain_run_ids(rendered_without_bos(m2, dir), dir, flags));
  const std::string a2 = completion_of(m2, dir, flags);
  // what is printed: each answer's text (the text kept in the history), then its ids
  EXPECT_EQ(out, a1 + "\n" + nlohmann::json(turns[0]).dump() + "\n" + a2 + "\n" + nlohmann::json(turns[1]).dump() + "\n");
}

TEST(GenerateChat, ClearStartsOverAndExitEnds) {
  const std::string dir = temp_dir("chat-clear"), flags = "--max-new-tokens 12";
  write_file_atomic(dir + "/turns.txt", "Who made the heaven?\n/clear\nWho made the heaven?\n/exit\nAnd the earth?\n");
  std::string out;
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --chat --print-ids " + flags + " < " + dir + "/turns.txt", &out), 0) << out;
  const auto turns = ids_lines(out);
  ASSERT_EQ(turns.size(), 2u) << out;  // nothing after /exit
  EXPECT_EQ(turns[0], turns[1]) << "after /clear the same question starts the same conversation";
}

// What a per-prompt `peft generate` run says of one prompts-file line: its generated ids.
std::vector<int64_t> single_run(const nlohmann::json & line, const std::string & dir, const std::string & flags) {
  if (line.contains("prompt")) return plain_run_ids(line["prompt"].get<std::string>(), dir, flags);
  std::string out;
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --chat --print-ids --prompt " + q(line["messages"][0]["content"]) + " " + flags,
                    &out),
            0)
      << out;
  const auto rows = ids_lines(out);
  EXPECT_EQ(rows.size(), 1u) << out;
  return rows.empty() ? std::vector<int64_t>{} : rows[0];
}

// Runs the file with `flags` and checks every output line against a per-prompt run (same flags).
void check_prompts_file(const std::vector<nlohmann::json> & lines, const std::string & dir, const std::string & flags,
                        int64_t max_new, const std::string & stop, std::vector<std::string> * completions = nullptr,
                        std::vector<std::string> * reasons = nullptr) {
  std::string in;
  for (size_t i = 0; i < lines.size(); ++i) in += lines[i].dump() + (i == 1 ? "\n\n" : "\n");  // a blank line is skipped
  write_file_atomic(dir + "/in.jsonl", in);
  std::string out;
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --prompts-file " + dir + "/in.jsonl --out " + dir + "/out.jsonl --batch-size 2 " +
                        flags,
                    &out),
            0)
      << out;
  const auto rows = read_jsonl(dir + "/out.jsonl", {});
  ASSERT_EQ(rows.size(), lines.size());
  auto tok = load_tokenizer(kjv(), 0);
  const auto eos = ModelConfig::load(kjv()).eos_token_ids;
  for (size_t i = 0; i < lines.size(); ++i) {
    SCOPED_TRACE("line " + lines[i].dump());
    const auto & r = rows[i];
    EXPECT_EQ(r.contains("id"), lines[i].contains("id"));
    if (lines[i].contains("id")) EXPECT_EQ(r["id"], lines[i]["id"]);
    if (lines[i].contains("prompt")) {
      EXPECT_EQ(r["prompt"], lines[i]["prompt"]);
      EXPECT_EQ(r["prompt_tokens"].get<size_t>(), tok->encode(lines[i]["prompt"].get<std::string>(), true).size());
    } else {
      EXPECT_EQ(r["messages"], lines[i]["messages"]);
      write_file_atomic(dir + "/m.json", lines[i]["messages"].dump());
      std::string ids;
      ASSERT_EQ(run_cli("chat-template --model " + kjv() + " --messages " + dir + "/m.json --add-generation-prompt --ids", &ids), 0);
      EXPECT_EQ(r["prompt_tokens"].get<size_t>(), nlohmann::json::parse(ids).size());
    }
    auto want = single_run(lines[i], dir, flags);
    EXPECT_EQ(r["completion_tokens"].get<size_t>(), want.size());
    const bool ended_by_eos = !want.empty() && std::find(eos.begin(), eos.end(), want.back()) != eos.end();
    if (ended_by_eos) want.pop_back();
    std::string text = tok->decode(want);
    const size_t at = stop.empty() ? std::string::npos : text.find(stop);
    if (at != std::string::npos) text.resize(at);
    EXPECT_EQ(r["completion"].get<std::string>(), text);
    EXPECT_EQ(r["finish_reason"].get<std::string>(), ended_by_eos || at != std::string::npos ? "stop" : "length");
    if (!ended_by_eos && at == std::string::npos) EXPECT_EQ(r["completion_tokens"].get<int64_t>(), max_new);
    if (completions) completions->push_back(r["completion"].get<std::string>());
    if (reasons) reasons->push_back(r["finish_reason"].get<std::string>());
  }
}

TEST(GeneratePromptsFile, EqualsPerPromptRuns) {
  const std::string dir = temp_dir("prompts-file");
  const std::vector<nlohmann::json> lines = {
      {{"id", "a"}, {"prompt", "In the beginning"}},
      {{"prompt", "And God said, Let there be"}},
      {{"id", 7}, {"messages", {{{"role", "user"}, {"content", "Who made the heaven?"}}}}},
      {{"prompt", "Blessed are the"}},
      {{"id", nullptr}, {"prompt", "The LORD is my shepherd"}}};
  std::vector<std::string> free_text, reasons;
  check_prompts_file(lines, dir, "--max-new-tokens 12", 12, "", &free_text, &reasons);
  // a stop string from the first completion's middle ends that line early: "stop", the text cut before it
  ASSERT_GE(free_text[0].size(), 8u) << free_text[0];
  ASSERT_EQ(reasons[0], "length");
  const std::string stop = free_text[0].substr(4, 3);
  ASSERT_EQ(stop.find('\''), std::string::npos);
  reasons.clear();
  check_prompts_file(lines, dir, "--max-new-tokens 12 --stop " + q(stop), 12, stop, nullptr, &reasons);
  EXPECT_EQ(reasons[0], "stop");
}

TEST(GeneratePromptsFile, EosFromGenerationConfigEndsALine) {
  // a copy of kjv-llama whose generation_config.json adds a token of a greedy run as an eos id
  const std::string dir = temp_dir("prompts-eos"), model = dir + "/model";
  const std::string p0 = "In the beginning", p1 = "And God said, Let there be";
  const auto free0 = plain_run_ids(p0, dir, "--max-new-tokens 12"), free1 = plain_run_ids(p1, dir, "--max-new-tokens 12");
  ASSERT_EQ(free0.size(), 12u);
  const int64_t x = free0[3];
  const auto k0 = std::find(free0.begin(), free0.end(), x) - free0.begin();
  ASSERT_EQ(run_command("mkdir " + model + " && for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do ln -s " +
                        kjv() + "/$f " + model + "/$f; done"),
            0);
  write_file_atomic(model + "/generation_config.json", nlohmann::json({{"eos_token_id", {2, 6, x}}}).dump());
  write_file_atomic(dir + "/in.jsonl", nlohmann::json({{"prompt", p0}}).dump() + "\n" + nlohmann::json({{"prompt", p1}}).dump() + "\n");
  std::string out;
  ASSERT_EQ(run_cli("generate --model " + model + " --prompts-file " + dir + "/in.jsonl --out " + dir + "/out.jsonl --max-new-tokens 12", &out), 0)
      << out;
  const auto rows = read_jsonl(dir + "/out.jsonl", {});
  ASSERT_EQ(rows.size(), 2u);
  auto tok = load_tokenizer(kjv(), 0);
  // row 0 ends at its first x: counted in completion_tokens, not in the text
  EXPECT_EQ(rows[0]["completion_tokens"].get<int64_t>(), k0 + 1);
  EXPECT_EQ(rows[0]["finish_reason"], "stop");
  EXPECT_EQ(rows[0]["completion"].get<std::string>(), tok->decode(std::vector<int64_t>(free0.begin(), free0.begin() + k0)));
  // row 1, batched with it, goes on as alone (to its own first x, if any)
  const auto k1 = std::find(free1.begin(), free1.end(), x) - free1.begin();
  const bool stops1 = k1 < static_cast<int64_t>(free1.size());
  EXPECT_EQ(rows[1]["completion_tokens"].get<int64_t>(), stops1 ? k1 + 1 : 12);
  EXPECT_EQ(rows[1]["finish_reason"], stops1 ? "stop" : "length");
  EXPECT_EQ(rows[1]["completion"].get<std::string>(), tok->decode(std::vector<int64_t>(free1.begin(), free1.begin() + std::min<int64_t>(k1, 12))));
  // a one-shot chat stops there too
  ASSERT_EQ(run_cli("generate --model " + model + " --chat --prompt hi --max-new-tokens 64 --print-ids", &out), 0) << out;
  ASSERT_EQ(ids_lines(out).size(), 1u) << out;
  const auto chat = ids_lines(out)[0];
  EXPECT_EQ(std::find(chat.begin(), chat.end(), x) - chat.begin(), static_cast<int64_t>(chat.size()) - (chat.back() == x ? 1 : 0));
  // an eos id outside the vocabulary is refused, naming the file
  write_file_atomic(model + "/generation_config.json", R"({"eos_token_id": [2, 4096]})");
  EXPECT_EQ(run_cli("generate --model " + model + " --prompt In --max-new-tokens 2", &out), 1) << out;
  EXPECT_NE(out.find("generation_config.json"), std::string::npos) << out;
}

TEST(GeneratePromptsFile, WithChatPromptsAreUserMessages) {
  const std::string dir = temp_dir("prompts-chat"), flags = "--max-new-tokens 10";
  const std::string sys = "Answer as the scripture does.", user = "Who made the heaven?";
  write_file_atomic(dir + "/in.jsonl", nlohmann::json({{"prompt", user}}).dump() + "\n");
  std::string out;
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --chat --system " + q(sys) + " --prompts-file " + dir + "/in.jsonl --out " + dir +
                        "/out.jsonl " + flags,
                    &out),
            0)
      << out;
  const auto rows = read_jsonl(dir + "/out.jsonl", {});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["prompt"], user);
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --chat --print-ids --system " + q(sys) + " --prompt " + q(user) + " " + flags, &out), 0)
      << out;
  ASSERT_EQ(ids_lines(out).size(), 1u) << out;
  const auto ids = ids_lines(out)[0];
  EXPECT_EQ(rows[0]["completion_tokens"].get<size_t>(), ids.size());
  EXPECT_EQ(out, rows[0]["completion"].get<std::string>() + "\n" + nlohmann::json(ids).dump() + "\n");
  write_file_atomic(dir + "/m.json", nlohmann::json({{{"role", "system"}, {"content", sys}}, {{"role", "user"}, {"content", user}}}).dump());
  ASSERT_EQ(run_cli("chat-template --model " + kjv() + " --messages " + dir + "/m.json --add-generation-prompt --ids", &out), 0) << out;
  EXPECT_EQ(rows[0]["prompt_tokens"].get<size_t>(), nlohmann::json::parse(out).size());
}

TEST(GenerateChat, ErrorsNameTheFileAndLine) {
  const std::string dir = temp_dir("chat-errors");
  std::string out;
  // no chat template: tiny-llama has no tokenizer_config.json; a copy with one that lacks "chat_template"
  EXPECT_EQ(run_cli("generate --byte-tokenizer --model " + golden_model("tiny-llama") + " --chat --prompt hi", &out), 1) << out;
  EXPECT_NE(out.find("tokenizer_config.json"), std::string::npos) << out;
  const std::string model = dir + "/model";
  ASSERT_EQ(run_command("mkdir " + model + " && cp " + golden_model("tiny-llama") + "/* " + model + "/"), 0);
  write_file_atomic(model + "/tokenizer_config.json", R"({"bos_token": "<s>", "eos_token": "</s>"})");
  EXPECT_EQ(run_cli("generate --byte-tokenizer --model " + model + " --chat --prompt hi", &out), 1) << out;
  EXPECT_NE(out.find("tokenizer_config.json"), std::string::npos) << out;
  EXPECT_NE(out.find("chat_template"), std::string::npos) << out;
  write_file_atomic(dir + "/m.jsonl", "{\"prompt\": \"hi\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
  EXPECT_EQ(run_cli("generate --byte-tokenizer --model " + model + " --prompts-file " + dir + "/m.jsonl --out " + dir + "/o.jsonl", &out), 1) << out;
  EXPECT_NE(out.find("m.jsonl:2"), std::string::npos) << out;
  EXPECT_NE(out.find("tokenizer_config.json"), std::string::npos) << out;

  // a bad line: the file and its line number; the output is not written (an old one stays as it was)
  write_file_atomic(dir + "/out.jsonl", "old\n");
  write_file_atomic(dir + "/bad.jsonl", "{\"prompt\": \"In the beginning\"}\n\n{\"prompt\": \"And God\"\n");
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompts-file " + dir + "/bad.jsonl --out " + dir + "/out.jsonl", &out), 1) << out;
  EXPECT_NE(out.find("bad.jsonl:3"), std::string::npos) << out;
  EXPECT_EQ(read_file(dir + "/out.jsonl"), "old\n");
  write_file_atomic(dir + "/bad2.jsonl", "{\"prompt\": \"In the beginning\", \"max_tokens\": 3}\n");
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompts-file " + dir + "/bad2.jsonl --out " + dir + "/o2.jsonl", &out), 1) << out;
  EXPECT_NE(out.find("bad2.jsonl:1"), std::string::npos) << out;
  EXPECT_NE(out.find("max_tokens"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/o2.jsonl"));
  write_file_atomic(dir + "/bad3.jsonl", "{\"prompt\": \"a\", \"messages\": []}\n");
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompts-file " + dir + "/bad3.jsonl --out " + dir + "/o3.jsonl", &out), 1) << out;
  EXPECT_NE(out.find("bad3.jsonl:1"), std::string::npos) << out;
  // the output may not be an input
  write_file_atomic(dir + "/good.jsonl", "{\"prompt\": \"In the beginning\"}\n");
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompts-file " + dir + "/good.jsonl --out " + dir + "/good.jsonl", &out), 1)
      << out;
  EXPECT_EQ(read_file(dir + "/good.jsonl"), "{\"prompt\": \"In the beginning\"}\n");

  // usage errors exit 2: no --prompt without --chat or --prompts-file, and flags that do not go together
  EXPECT_EQ(run_cli("generate --model " + kjv(), &out), 2) << out;
  EXPECT_NE(out.find("--prompt"), std::string::npos) << out;
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompts-file " + dir + "/good.jsonl", &out), 2) << out;
  EXPECT_NE(out.find("--out"), std::string::npos) << out;
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompt hi --prompts-file " + dir + "/good.jsonl --out " + dir + "/x.jsonl", &out), 2)
      << out;
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompt hi --system be", &out), 2) << out;
  EXPECT_NE(out.find("--system"), std::string::npos) << out;
  EXPECT_EQ(run_cli("generate --model " + kjv() + " --prompt hi --out " + dir + "/x.jsonl", &out), 2) << out;
}

}  // namespace

namespace {

TEST(Cli, EveryCommandHasHelp) {
  const std::pair<const char *, const char *> cmds[] = {{"info", "--model"},  {"forward", "--input-ids"},
                                                        {"generate", "--prompt"}, {"train", "--log-file"},
                                                        {"bench", "--json"},   {"merge", "--out"}};
  for (const auto & c : cmds) {
    std::string out;
    EXPECT_EQ(run_cli(std::string(c.first) + " --help", &out), 0) << c.first;
    EXPECT_NE(out.find(c.second), std::string::npos) << c.first << ": " << out;
  }
}

TEST(Cli, UnknownFlagAndMissingRequiredExitNonZero) {
  std::string out;
  EXPECT_NE(run_cli("forward --model x --bogus 1", &out), 0);
  EXPECT_NE(run_cli("train --model " + golden_model("tiny-llama"), &out), 0);
  EXPECT_NE(out.find("required"), std::string::npos) << out;
}

TEST(Cli, BenchQuickRunsAndWritesJson) {
  std::string dir = temp_dir("bench"), out;
  ASSERT_EQ(run_cli("bench --quick --json " + dir + "/b.json", &out), 0) << out;
  auto j = nlohmann::json::parse(read_file(dir + "/b.json"));
  std::set<std::string> names;
  for (const auto & row : j) {
    names.insert(row["name"].get<std::string>());
    EXPECT_GT(row["eager_ms"].get<double>(), 0);
    EXPECT_GT(row["compiled_ms"].get<double>(), 0);
  }
  for (const char * n : {"decode_b1_lora", "decode_b8_lora", "decode_b8_mixed8_lora", "decode_b1_base", "decode_b1_nf4_lora", "decode_b1_int8_lora",
                         "prefill_b1_s16_nf4_lora", "train_step_b4_s16_nf4_lora"}) {
    EXPECT_TRUE(names.count(n)) << n;
  }
  for (const auto & row : j) {
    if (!row.contains("quant_format")) continue;
    const double bpp = row["quantized_bytes_per_param"].get<double>();
    if (row["quant_format"] == "nf4") EXPECT_LE(bpp, 0.57) << row.dump();
    if (row["quant_format"] == "int8") EXPECT_LE(bpp, 1.1) << row.dump();
    ASSERT_TRUE(row.contains("memory")) << row.dump();
    EXPECT_GT(row["memory"]["process_peak_rss_kb"].get<double>(), 0) << row.dump();
  }
  auto m = nlohmann::json::parse(read_file(dir + "/b.json.machine.json"));
  ASSERT_TRUE(m.contains("quantized")) << m.dump();
  for (const char * k : {"decode_b1_nf4_lora_speedup_vs_float32_compiled", "decode_b1_int8_lora_speedup_vs_float32_compiled",
                         "train_step_b4_s16_nf4_lora_time_over_float32_compiled"}) {
    EXPECT_GT(m["quantized"][k].get<double>(), 0) << k;
  }
  ASSERT_TRUE(m.contains("batched_decode")) << m.dump();
  for (const char * k : {"decode_b8_over_b1_step_time", "decode_b8_over_b1_step_time_target",
                         "decode_b8_mixed8_over_b8_throughput", "decode_b8_mixed8_over_b8_throughput_target"}) {
    EXPECT_GT(m["batched_decode"][k].get<double>(), 0) << k;
  }
}

}  // namespace
