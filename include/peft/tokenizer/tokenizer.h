// Tokenizers: Hugging Face tokenizer.json with a BPE model in its two common families -- byte-level
// BPE (GPT-2, Llama 3, Qwen: regex pre-tokenizer through PCRE2, byte-to-unicode mapping) and
// SentencePiece-style BPE with byte fallback (Llama 2, Mistral: "▁" for spaces, <0xNN> byte tokens) --
// with added/special tokens; and a plain byte tokenizer for small test models, when asked for.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace peft {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// Token ids of `text`; add_special adds what the post-processor adds (e.g. BOS).
  virtual std::vector<int64_t> encode(const std::string & text, bool add_special = false) const = 0;
  /// Text of `ids`; skip_special drops special added tokens.
  virtual std::string decode(const std::vector<int64_t> & ids, bool skip_special = true) const = 0;
  virtual int64_t vocab_size() const = 0;
  /// Id of a token string, or -1.
  virtual int64_t token_id(const std::string & token) const = 0;
};

/// Read a Hugging Face tokenizer.json (file path). Errors name the file and the unsupported field.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string & path);

/// Bytes as tokens for tiny models: ids 0..2 are <pad>, <s>, </s>; then one id per byte (vocab >= 259)
/// or, for smaller vocabularies, printable ASCII from ' ' upward ('?' for anything else).
std::unique_ptr<Tokenizer> make_byte_tokenizer(int64_t vocab_size);

/// DIR/tokenizer.json; a folder without one is an error naming it (text tokenized bytewise by a model
/// trained on another tokenizer is garbage, silently). `byte_tokenizer`: the byte tokenizer for
/// `vocab_size` instead, asked for explicitly (tiny test models; `--byte-tokenizer` on the command line).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string & model_dir, int64_t vocab_size, bool byte_tokenizer = false);

}  // namespace peft
