// Incremental detokenization (Hugging Face tokenizers' DecodeStream): the text of a growing list of token
// ids, each id decoded once within a short window (the previous token gives the context that decoders such
// as Metaspace's leading-space rule need), so a completion of n tokens costs O(n), not O(n^2).
// The text it returns is valid UTF-8: bytes of a character split across tokens are held back until the
// character is complete, invalid bytes become U+FFFD (as HF tokenizers decode).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "peft/tokenizer/tokenizer.h"

namespace peft {

class DecodeStream {
 public:
  /// `tok` must outlive the stream.
  explicit DecodeStream(const Tokenizer & tok, bool skip_special = true) : tok_(tok), skip_special_(skip_special) {}
  /// Add one token; returns the text it completes (may be empty while a character is incomplete).
  std::string step(int64_t id);
  /// The rest: held-back bytes of an unfinished character, as U+FFFD.
  std::string flush();
  /// Tokens added so far.
  size_t size() const { return ids_.size(); }

 private:
  const Tokenizer & tok_;
  bool skip_special_;
  std::vector<int64_t> ids_;
  size_t prefix_ = 0, read_ = 0;  // ids_[prefix_, read_) is the context window already emitted
  std::string pending_;           // decoded bytes not yet valid UTF-8 on their own
};

}  // namespace peft
