// Turning one record of a user's data into tokens with loss flags, and the readers of each file format
// (internal to src/data).
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "peft/data/dataset.h"
#include "token-cache.h"

namespace peft::data_detail {

struct Encoded {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss;
  /// Append the tokens of `text` (add_special: what the tokenizer's post-processor adds, e.g. BOS).
  void append(const TextEncoder & enc, const std::string & text, bool add_special, bool loss_on);
  void append_eos(const TextEncoder & enc, const std::string & where);
};

/// One JSONL record: {"text"}, {"prompt", "completion"} or {"messages"}. `where` is "FILE:LINE".
Encoded encode_record(const TextEncoder & enc, const nlohmann::json & record, const std::string & where);

/// The readers: each sends every document of `path` to `sink`, streaming.
void read_txt(const std::string & path, const TextEncoder & enc, DocSink & sink);
void read_jsonl(const std::string & path, const TextEncoder & enc, DocSink & sink);
void read_ids(const std::string & path, const TextEncoder & enc, DocSink & sink);

}  // namespace peft::data_detail
