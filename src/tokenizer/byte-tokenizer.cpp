// The plain byte tokenizer for small bundled models (no tokenizer.json).
#include "peft/error.h"
#include "peft/tokenizer/tokenizer.h"

namespace peft {

namespace {

constexpr int64_t kSpecials = 3;  // <pad>, <s>, </s>

class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(int64_t vocab) : vocab_(vocab) {
    PEFT_CHECK(vocab > kSpecials + 1, "byte tokenizer needs a vocabulary of more than ", kSpecials + 1, " tokens");
  }
  std::vector<int64_t> encode(const std::string & text, bool add_special) const override {
    std::vector<int64_t> out;
    if (add_special) out.push_back(1);
    for (unsigned char c : text) out.push_back(byte_id(c));
    return out;
  }
  std::string decode(const std::vector<int64_t> & ids, bool skip_special) const override {
    std::string s;
    for (int64_t id : ids) {
      if (id < kSpecials) {
        if (!skip_special) s += id == 0 ? "<pad>" : id == 1 ? "<s>" : "</s>";
        continue;
      }
      if (id < vocab_) s.push_back(static_cast<char>(full() ? id - kSpecials : id - kSpecials + ' '));
    }
    return s;
  }
  int64_t vocab_size() const override { return vocab_; }
  int64_t token_id(const std::string & t) const override {
    if (t == "<pad>") return 0;
    if (t == "<s>") return 1;
    if (t == "</s>") return 2;
    return t.size() == 1 ? byte_id(static_cast<unsigned char>(t[0])) : -1;
  }

 private:
  bool full() const { return vocab_ >= kSpecials + 256; }
  int64_t byte_id(unsigned char c) const {
    if (full()) return kSpecials + c;
    int64_t id = kSpecials + (static_cast<int64_t>(c) - ' ');
    if (c < ' ' || id >= vocab_) id = kSpecials + ('?' - ' ');
    return id;
  }
  int64_t vocab_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer(int64_t vocab_size) { return std::make_unique<ByteTokenizer>(vocab_size); }

}  // namespace peft
