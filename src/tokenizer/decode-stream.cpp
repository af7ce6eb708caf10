#include "peft/tokenizer/decode-stream.h"

#include "peft/util/utf8.h"

namespace peft {

std::string DecodeStream::step(int64_t id) {
  ids_.push_back(id);
  const std::vector<int64_t> context(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_), ids_.begin() + static_cast<std::ptrdiff_t>(read_));
  const std::vector<int64_t> window(ids_.begin() + static_cast<std::ptrdiff_t>(prefix_), ids_.end());
  const std::string before = tok_.decode(context, skip_special_);
  const std::string after = tok_.decode(window, skip_special_);
  // the new token's bytes: what the window adds to its context (decoders only ever change a window's
  // first token, which is the context's too)
  size_t common = 0;
  while (common < before.size() && common < after.size() && before[common] == after[common]) ++common;
  pending_.append(after, common, std::string::npos);
  prefix_ = read_;
  read_ = ids_.size();
  std::string out;
  const size_t used = utf8_append_lossy(pending_, /*final=*/false, out);
  pending_.erase(0, used);
  return out;
}

std::string DecodeStream::flush() {
  std::string out;
  utf8_append_lossy(pending_, /*final=*/true, out);
  pending_.clear();
  return out;
}

}  // namespace peft
