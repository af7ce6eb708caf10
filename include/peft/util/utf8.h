// UTF-8 for text that leaves the process (HTTP responses, JSON): invalid bytes become U+FFFD as Hugging Face
// tokenizers decode them (Rust's String::from_utf8_lossy: one replacement per maximal invalid subpart), and
// a sequence cut at the end of a chunk can be held back until its remaining bytes arrive.
#pragma once
#include <cstddef>
#include <string>

namespace peft {

/// Append `bytes` to `out` as valid UTF-8. With `final` false, a trailing proper prefix of a valid
/// sequence (e.g. the first two bytes of a three-byte character) is not consumed. Returns the number of
/// bytes consumed (bytes.size() when final).
size_t utf8_append_lossy(const std::string & bytes, bool final, std::string & out);

/// `bytes` as valid UTF-8 (invalid subparts replaced by U+FFFD).
std::string utf8_lossy(const std::string & bytes);

/// True if `s` is valid UTF-8.
bool utf8_valid(const std::string & s);

}  // namespace peft
