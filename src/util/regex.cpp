#define PCRE2_CODE_UNIT_WIDTH 8
#include "peft/util/regex.h"

#include <pcre2.h>

#include "peft/error.h"

namespace peft {

static pcre2_code * compile(const std::string & pattern, bool utf) {
  int err = 0;
  PCRE2_SIZE off = 0;
  uint32_t flags = utf ? (PCRE2_UTF | PCRE2_UCP) : 0;
  pcre2_code * c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(), flags, &err, &off, nullptr);
  if (!c) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    fail(str("invalid regular expression '", pattern, "' at offset ", off, ": ", reinterpret_cast<char *>(buf)));
  }
  pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // best effort; falls back to the interpreter
  return c;
}

Regex::Regex(const std::string & pattern, bool utf) : pattern_(pattern) {
  code_ = compile(pattern, utf);
  anchored_ = compile("^(?:" + pattern + ")$", utf);
}

Regex::~Regex() {
  if (code_) pcre2_code_free(static_cast<pcre2_code *>(code_));
  if (anchored_) pcre2_code_free(static_cast<pcre2_code *>(anchored_));
}

Regex::Regex(Regex && o) noexcept : pattern_(std::move(o.pattern_)), code_(o.code_), anchored_(o.anchored_) {
  o.code_ = nullptr;
  o.anchored_ = nullptr;
}

bool Regex::full_match(const std::string & s) const {
  auto * code = static_cast<pcre2_code *>(anchored_);
  pcre2_match_data * md = pcre2_match_data_create_from_pattern(code, nullptr);
  int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.c_str()), s.size(), 0, 0, md, nullptr);
  pcre2_match_data_free(md);
  return rc >= 0;
}

bool Regex::search_group(const std::string & s, int group, std::string * out) const {
  auto * code = static_cast<pcre2_code *>(code_);
  pcre2_match_data * md = pcre2_match_data_create_from_pattern(code, nullptr);
  int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.c_str()), s.size(), 0, 0, md, nullptr);
  bool ok = false;
  if (rc > group) {
    PCRE2_SIZE * ov = pcre2_get_ovector_pointer(md);
    if (ov[2 * group] != PCRE2_UNSET) {
      *out = s.substr(ov[2 * group], ov[2 * group + 1] - ov[2 * group]);
      ok = true;
    }
  }
  pcre2_match_data_free(md);
  return ok;
}

std::vector<std::pair<size_t, size_t>> Regex::find_spans(const std::string & s) const {
  auto * code = static_cast<pcre2_code *>(code_);
  pcre2_match_data * md = pcre2_match_data_create_from_pattern(code, nullptr);
  std::vector<std::pair<size_t, size_t>> out;
  PCRE2_SIZE start = 0;
  // PCRE2 checks the subject's UTF-8 from the start offset to the end on every call: quadratic over a
  // long text. The first call checks it all (an invalid subject fails there, as it would on any call);
  // later calls skip the check.
  uint32_t options = 0;
  while (start <= s.size()) {
    int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.c_str()), s.size(), start, options, md, nullptr);
    if (rc < 0) break;
    options = PCRE2_NO_UTF_CHECK;
    PCRE2_SIZE * ov = pcre2_get_ovector_pointer(md);
    if (ov[1] == ov[0]) {  // empty match: step one UTF-8 character
      start = ov[1] + 1;
      while (start < s.size() && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) ++start;
      continue;
    }
    out.emplace_back(ov[0], ov[1] - ov[0]);
    start = ov[1];
  }
  pcre2_match_data_free(md);
  return out;
}

std::vector<std::string> Regex::find_all(const std::string & s) const {
  std::vector<std::string> out;
  for (const auto & [at, len] : find_spans(s)) out.push_back(s.substr(at, len));
  return out;
}

}  // namespace peft
