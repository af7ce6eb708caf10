// A compiled PCRE2 regular expression (UTF-8). Used for PEFT's target-module patterns (full match) and
// the byte-level BPE pre-tokenizer (iterate matches).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace peft {

class Regex {
 public:
  /// Throws peft::Error naming the pattern and the position if it does not compile.
  explicit Regex(const std::string & pattern, bool utf = true);
  ~Regex();
  Regex(Regex && o) noexcept;
  Regex(const Regex &) = delete;
  Regex & operator=(const Regex &) = delete;

  /// True if the whole subject matches (Python's re.fullmatch).
  bool full_match(const std::string & subject) const;
  /// The first capture group of a search (Python's re.search(...).group(1)), or "" if none.
  bool search_group(const std::string & subject, int group, std::string * out) const;
  /// Every non-overlapping match, left to right (Python's re.findall of group 0).
  std::vector<std::string> find_all(const std::string & subject) const;
  /// The same matches as (byte offset, length); linear in the subject's length.
  std::vector<std::pair<size_t, size_t>> find_spans(const std::string & subject) const;
  const std::string & pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void * code_ = nullptr;      // pcre2_code *
  void * anchored_ = nullptr;  // pcre2_code * of ^(?:pattern)$
};

}  // namespace peft
