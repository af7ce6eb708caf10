#include "peft/util/utf8.h"

namespace peft {

namespace {

// The length of a sequence that starts with `lead` (0: the byte cannot start one) and the range its
// second byte must be in (Unicode's table 3-7: no overlong forms, no surrogates, nothing past U+10FFFF).
int sequence(unsigned char lead, unsigned char & lo, unsigned char & hi) {
  lo = 0x80;
  hi = 0xBF;
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
    return 4;
  }
  return 0;
}

const char kReplacement[] = "\xEF\xBF\xBD";

}  // namespace

size_t utf8_append_lossy(const std::string & s, bool final, std::string & out) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    unsigned char lo, hi;
    const int len = sequence(c, lo, hi);
    if (len == 1) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    if (len == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    // the longest valid prefix of a sequence starting at i
    size_t k = 1;
    while (k < static_cast<size_t>(len) && i + k < n) {
      const unsigned char b = static_cast<unsigned char>(s[i + k]);
      const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) break;
      ++k;
    }
    if (k == static_cast<size_t>(len)) {
      out.append(s, i, k);
      i += k;
    } else if (i + k == n && !final) {
      return i;  // a proper prefix at the end: its other bytes may still come
    } else {
      out += kReplacement;  // one replacement for the maximal subpart; the byte that broke it starts anew
      i += k;
    }
  }
  return n;
}

std::string utf8_lossy(const std::string & bytes) {
  std::string out;
  out.reserve(bytes.size());
  utf8_append_lossy(bytes, true, out);
  return out;
}

bool utf8_valid(const std::string & s) {
  std::string out;
  out.reserve(s.size());
  utf8_append_lossy(s, true, out);
  return out == s;
}

}  // namespace peft
