// Reading a user's data: .txt paragraphs, .jsonl records (text, prompt/completion, messages) with their
// loss flags, errors naming file, line and field, and the memory-mapped token cache.
#include <fstream>

#include "peft/data/dataset.h"
#include "peft/io/files.h"
#include "peft/model/config.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

// a model folder with the byte tokenizer (tiny Llama) and a chat template
std::string model_with_template(const std::string & dir) {
  run_command("cp -r " + golden_model("tiny-llama") + " " + dir + "/model");
  nlohmann::json tc = {{"eos_token", "</s>"},
                       {"bos_token", "<s>"},
                       {"chat_template",
                        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"}};
  write_file_atomic(dir + "/model/tokenizer_config.json", tc.dump());
  return dir + "/model";
}

// the tiny models have no tokenizer.json: the byte tokenizer, asked for
TextEncoder encoder(const std::string & model) {
  return TextEncoder::for_model(model, ModelConfig::load(model), /*byte_tokenizer=*/true);
}

// Without tokenizer.json, text cannot be tokenized: an error naming the file, not a silent byte tokenizer
// (issue 25); the byte tokenizer only when asked for.
TEST(Dataset, AModelWithoutATokenizerIsAnErrorUnlessBytesAreAskedFor) {
  const std::string model = golden_model("tiny-llama");
  ASSERT_FALSE(exists(model + "/tokenizer.json"));
  const ModelConfig cfg = ModelConfig::load(model);
  const std::string err = error_of([&] { TextEncoder::for_model(model, cfg); });
  EXPECT_NE(err.find(model + "/tokenizer.json"), std::string::npos) << err;
  const std::string err2 = error_of([&] { load_tokenizer(model, cfg.vocab_size); });
  EXPECT_NE(err2.find(model + "/tokenizer.json"), std::string::npos) << err2;
  const TextEncoder bytes = TextEncoder::for_model(model, cfg, /*byte_tokenizer=*/true);
  ASSERT_NE(bytes.tokenizer, nullptr);
  EXPECT_EQ(bytes.tokenizer->decode(bytes.tokenizer->encode("abc"), false), "abc");
  // a model with tokenizer.json loads it, as before
  const std::string kjv = std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama";
  const ModelConfig kc = ModelConfig::load(kjv);
  EXPECT_NE(TextEncoder::for_model(kjv, kc).fingerprint.find("tokenizer.json:"), std::string::npos);
}

std::string text_of(const TextEncoder & enc, const TokenDataset::Doc & d, int want_loss) {
  std::vector<int64_t> ids;
  for (size_t i = 0; i < d.size; ++i) {
    if (want_loss < 0 || d.loss[i] == want_loss) ids.push_back(d.ids[i]);
  }
  return enc.tokenizer->decode(ids, false);
}

// the tiny model's byte tokenizer knows printable ASCII only: a newline reads back as '?'
std::string q(std::string s) {
  for (auto & c : s) c = c == '\n' ? '?' : c;
  return s;
}

void write(const std::string & path, const std::string & text) { std::ofstream(path, std::ios::binary) << text; }

TEST(Dataset, TextParagraphsEndWithEosAndCountInTheLoss) {
  const std::string dir = temp_dir("data-txt");
  const auto enc = encoder(golden_model("tiny-llama"));
  write(dir + "/a.txt", "First line\nsecond line\n\n\n  \nNext doc\r\n\nlast");
  TokenDataset d = read_dataset(dir + "/a.txt", enc);
  ASSERT_EQ(d.size(), 3u);
  // BOS as the tokenizer adds it, the paragraph, EOS
  EXPECT_EQ(text_of(enc, d.doc(0), -1), q("<s>First line\nsecond line</s>"));
  EXPECT_EQ(text_of(enc, d.doc(1), -1), "<s>Next doc</s>");
  EXPECT_EQ(text_of(enc, d.doc(2), 1), "<s>last</s>");  // every token counts
  EXPECT_EQ(d.doc(0).ids[d.doc(0).size - 1], enc.eos_id);
  EXPECT_EQ(d.tokens(), static_cast<int64_t>(d.doc(0).size + d.doc(1).size + d.doc(2).size));
}

TEST(Dataset, PromptCompletionLearnsTheCompletionOnly) {
  const std::string dir = temp_dir("data-pc");
  const auto enc = encoder(golden_model("tiny-llama"));
  write(dir + "/pc.jsonl", R"({"prompt": "Q: 2+2?\nA:", "completion": " 4"})" "\n\n"
                           R"({"text": "plain"})" "\n");
  TokenDataset d = read_dataset(dir + "/pc.jsonl", enc);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(text_of(enc, d.doc(0), 0), q("<s>Q: 2+2?\nA:"));
  EXPECT_EQ(text_of(enc, d.doc(0), 1), " 4</s>");
  EXPECT_EQ(text_of(enc, d.doc(1), 1), "<s>plain</s>");
}

TEST(Dataset, ConversationsLearnTheAssistantTurnsOnly) {
  const std::string dir = temp_dir("data-chat");
  const std::string model = model_with_template(dir);
  const auto enc = encoder(model);
  ASSERT_NE(enc.chat, nullptr) << enc.chat_error;
  nlohmann::json rec = {{"messages",
                         {{{"role", "system"}, {"content", "be brief"}},
                          {{"role", "user"}, {"content", "hi"}},
                          {{"role", "assistant"}, {"content", "hello"}},
                          {{"role", "user"}, {"content", "bye"}},
                          {{"role", "assistant"}, {"content", "see you"}}}}};
  write(dir + "/chat.jsonl", rec.dump() + "\n");
  TokenDataset d = read_dataset(dir + "/chat.jsonl", enc);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(text_of(enc, d.doc(0), -1), q(enc.chat->render(rec["messages"], false)));
  EXPECT_EQ(text_of(enc, d.doc(0), 1), q("hello<|end|>\nsee you<|end|>\n"));
  EXPECT_EQ(text_of(enc, d.doc(0), 0), q("<|system|>\nbe brief<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n"
                                         "<|user|>\nbye<|end|>\n<|assistant|>\n"));
}

TEST(Dataset, BadRecordsNameTheFileTheLineAndTheField) {
  const std::string dir = temp_dir("data-bad");
  const auto enc = encoder(golden_model("tiny-llama"));
  auto err = [&](const std::string & content) {
    write(dir + "/x.jsonl", content);
    return error_of([&] { read_dataset(dir + "/x.jsonl", enc); });
  };
  EXPECT_NE(err("{\"text\": \"ok\"}\n{\"prompt\": 5, \"completion\": \"x\"}\n").find("x.jsonl:2: field 'prompt' must be a string"),
            std::string::npos);
  EXPECT_NE(err("{\"text\": \"ok\"}\n\n{\"prompt\": \"p\"}\n").find("x.jsonl:3: missing field 'completion'"),
            std::string::npos);
  EXPECT_NE(err("{\"txt\": 1}\n").find("x.jsonl:1: a record needs 'text'"), std::string::npos);
  EXPECT_NE(err("[1, 2]\n").find("x.jsonl:1: a record must be a JSON object"), std::string::npos);
  EXPECT_NE(err("{\"text\": \"a\"\n").find("x.jsonl:1"), std::string::npos);
  EXPECT_NE(err("{\"messages\": [{\"role\": \"user\"}]}\n").find("x.jsonl:1: messages[0]: missing field 'content'"),
            std::string::npos);
  EXPECT_NE(err("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n").find("needs the model's chat template"),
            std::string::npos);
  EXPECT_NE(err("").find("no documents"), std::string::npos);
  EXPECT_NE(error_of([&] { read_dataset(dir + "/x.csv", enc); }).find("cannot tell the data format"), std::string::npos);
  EXPECT_NE(error_of([&] { read_dataset(dir + "/missing.txt", enc); }).find("cannot read the data file"),
            std::string::npos);
}

TEST(Dataset, TheTokenCacheIsReusedKeyedAndRebuiltWhenDamaged) {
  const std::string dir = temp_dir("data-cache");
  const auto enc = encoder(golden_model("tiny-llama"));
  std::string text;
  for (int i = 0; i < 200; ++i) text += "paragraph " + std::to_string(i) + " of some text\n\n";
  write(dir + "/a.txt", text);
  TokenDataset first = read_dataset(dir + "/a.txt", enc);
  EXPECT_FALSE(first.from_cache());
  ASSERT_FALSE(first.cache_file().empty());
  TokenDataset again = read_dataset(dir + "/a.txt", enc);
  EXPECT_TRUE(again.from_cache());
  EXPECT_EQ(again.cache_file(), first.cache_file());
  ASSERT_EQ(again.size(), 200u);
  for (size_t i = 0; i < again.size(); ++i) {
    ASSERT_EQ(text_of(enc, again.doc(i), -1), "<s>paragraph " + std::to_string(i) + " of some text</s>");
  }
  // a damaged cache (cut short, or bytes flipped in its index) is not used: the data are read again
  const std::string cache = first.cache_file();
  const std::string bytes = read_file(cache);
  write(cache, bytes.substr(0, bytes.size() - 9));
  TokenDataset cut = read_dataset(dir + "/a.txt", enc);
  EXPECT_FALSE(cut.from_cache());
  EXPECT_EQ(cut.tokens(), first.tokens());
  std::string flipped = read_file(cache);
  flipped[flipped.size() - 12] ^= 0x7f;
  write(cache, flipped);
  EXPECT_FALSE(read_dataset(dir + "/a.txt", enc).from_cache());
  // changing the data changes the key: a new cache file
  write(dir + "/a.txt", text + "one more\n");
  TokenDataset changed = read_dataset(dir + "/a.txt", enc);
  EXPECT_FALSE(changed.from_cache());
  EXPECT_NE(changed.cache_file(), first.cache_file());
  EXPECT_EQ(changed.size(), 201u);
  // off: nothing written
  const std::string dir2 = temp_dir("data-nocache");
  write(dir2 + "/b.txt", "x\n");
  DataOptions no;
  no.cache = false;
  TokenDataset mem = read_dataset(dir2 + "/b.txt", enc, no);
  EXPECT_TRUE(mem.cache_file().empty());
  std::string ls;
  run_command("ls -A " + dir2, &ls);
  EXPECT_EQ(ls, "b.txt\n");
}

TEST(Dataset, ALargeFileStreamsThroughTheCache) {
  // 8 MB of text: tokenized once into the cache file, then mapped (not held in memory twice)
  const std::string dir = temp_dir("data-large");
  const auto enc = encoder(golden_model("tiny-llama"));
  {
    std::ofstream f(dir + "/big.txt");
    for (int i = 0; i < 100000; ++i) f << "line " << i << " of a long stream of text\n" << (i % 10 == 9 ? "\n" : "");
  }
  TokenDataset d = read_dataset(dir + "/big.txt", enc);
  EXPECT_EQ(d.size(), 10000u);
  EXPECT_GT(d.tokens(), 3000000);
  TokenDataset again = read_dataset(dir + "/big.txt", enc);
  EXPECT_TRUE(again.from_cache());
  EXPECT_EQ(again.tokens(), d.tokens());
  EXPECT_EQ(text_of(enc, again.doc(9999), -1).substr(0, 14), "<s>line 99990 ");
}

}  // namespace
