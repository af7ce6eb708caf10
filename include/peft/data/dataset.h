// Training data from a user's files: documents of token ids, each token with a flag saying whether the
// loss is computed when predicting it. Read from
//   .txt    plain text; documents separated by blank lines, each tokenized and ended with EOS;
//   .jsonl  one record per line: {"text"}, {"prompt", "completion"} (loss on the completion only) or
//           {"messages": [{"role", "content"}, ...]} (rendered with the model's chat template; loss on
//           the assistant turns only);
//   .json   pre-tokenized ids: an array of arrays of token ids (loss on every token).
// Tokenized documents go to a token cache beside the data file (".<file>.peft-tokens-<key>"), keyed by
// the file's content, the tokenizer, the chat template and the format, and are read back memory-mapped:
// a file larger than memory is tokenized once, streaming, and a second run starts at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "peft/data/chat-template.h"
#include "peft/tokenizer/tokenizer.h"
#include "peft/util/options.h"

namespace peft {

struct ModelConfig;

/// How a data file is read: auto (from the extension), txt, jsonl or ids (see the top of this file).
enum class DataFormat { auto_detect, txt, jsonl, ids };
inline const std::vector<std::string> & choice_names(DataFormat) {
  static const std::vector<std::string> names = {"auto", "txt", "jsonl", "ids"};
  return names;
}

/// What turns text into tokens for a model: its tokenizer, chat template (if any) and special tokens.
struct TextEncoder {
  std::shared_ptr<const Tokenizer> tokenizer;
  std::shared_ptr<const ChatTemplate> chat;  // null: the model has no usable chat template
  std::string chat_error;                     // why `chat` is null ("" when the model has none)
  int64_t eos_id = -1;
  std::string fingerprint;  // identifies tokenizer + template + special tokens (part of the cache key)
  /// MODEL_DIR's tokenizer.json (none: an error naming it; `byte_tokenizer`: the byte tokenizer instead),
  /// tokenizer_config.json's chat template, and the EOS id from config.json (eos_token_id) or
  /// tokenizer_config.json (eos_token).
  static TextEncoder for_model(const std::string & model_dir, const ModelConfig & cfg, bool byte_tokenizer = false);
};

struct DataOptions {
  Choice<DataFormat> format = DataFormat::auto_detect;  // auto (from the extension) | txt | jsonl | ids
  bool cache = true;            // keep a token cache beside the data file (off: tokenize in memory)
};

/// Tokenized documents (memory-mapped from the token cache, or in memory).
class TokenDataset {
 public:
  struct Doc {
    const int32_t * ids;
    const uint8_t * loss;  // 1 = the loss counts when predicting this token
    size_t size;
  };
  TokenDataset();
  ~TokenDataset();
  TokenDataset(TokenDataset &&) noexcept;
  TokenDataset & operator=(TokenDataset &&) noexcept;

  size_t size() const;   // documents
  int64_t tokens() const;
  Doc doc(size_t i) const;
  int64_t max_id() const;  // the largest token id (-1 when empty)
  /// The file it was read from ("" for an in-memory set) and a hash of its contents and encoding.
  const std::string & source() const;
  uint64_t key() const;
  /// The token cache file in use ("" when in memory) and whether this read found it already made.
  const std::string & cache_file() const;
  bool from_cache() const;

  /// An in-memory set: every token of every row counts in the loss.
  static TokenDataset from_rows(const std::vector<std::vector<int64_t>> & rows, const std::string & source);
  /// The documents whose indices are given (in that order), in memory (train/eval splits).
  TokenDataset subset(const std::vector<size_t> & indices) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend TokenDataset read_dataset(const std::string &, const TextEncoder &, const DataOptions &);
};

/// Read and tokenize `path` (see the top of this file). Bad records are errors naming the file, the
/// line and the field. Token ids are checked against the tokenizer's vocabulary.
TokenDataset read_dataset(const std::string & path, const TextEncoder & encoder, const DataOptions & opts = {});

/// The format `path` is read as: `format`, or from the extension (.txt, .jsonl, .json) for auto (an
/// unknown extension is an error that asks for the option `field`).
DataFormat data_format_of(const std::string & path, Choice<DataFormat> format = DataFormat::auto_detect,
                          const std::string & field = "format");

/// A token-id file: a non-empty JSON array of non-empty arrays of integer token ids in [0, 2^31), rows of
/// any lengths. Errors name the file, the row and the item. (read_dataset reads .json data with it.)
std::vector<std::vector<int64_t>> read_token_ids(const std::string & path);
/// Token-id rows (read from `path`, named in errors) against a model: ids in [0, vocab_size), lengths
/// (plus `extra` positions) within max_position_embeddings (with `positions_only_if_learned`, only for a
/// learned position table: a forward pass of a rotary model goes on past it, as in transformers). Errors
/// name the file, the row and the position.
void check_token_ids(const std::string & path, const std::vector<std::vector<int64_t>> & rows, const ModelConfig & cfg,
                     int64_t extra = 0, bool positions_only_if_learned = false);

}  // namespace peft
