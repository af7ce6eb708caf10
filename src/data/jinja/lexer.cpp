// Jinja lexer: template text, tags and the tokens inside them. Whitespace handling is transformers':
// trim_blocks (drop the newline right after a block or comment tag), lstrip_blocks (drop spaces and
// tabs before a block or comment tag that starts a line), `-` on a tag strips all whitespace on that
// side, `+` turns lstrip off; a single trailing newline of the template is dropped.
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "data/jinja/ast.h"

namespace peft::jinja {

namespace {

using Kind = Token::Kind;

// What the tag just closed asks of the text that follows it.
enum class After { Keep, TrimNewline, StripSpace };

bool starts(const std::string & s, size_t pos, const char * what) {
  return s.compare(pos, std::strlen(what), what) == 0;
}

bool ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
bool digit(char c) { return c >= '0' && c <= '9'; }

void strip_leading_space(std::string & text) {
  auto cps = utf8_decode(text);
  size_t k = 0;
  while (k < cps.size() && is_space(cps[k])) ++k;
  if (k) text = utf8_encode(std::vector<uint32_t>(cps.begin() + k, cps.end()));
}

void strip_trailing_space(std::string & text) {
  auto cps = utf8_decode(text);
  size_t k = cps.size();
  while (k > 0 && is_space(cps[k - 1])) --k;
  if (k < cps.size()) text = utf8_encode(std::vector<uint32_t>(cps.begin(), cps.begin() + k));
}

class Lexer {
 public:
  explicit Lexer(const std::string & source) : src_(source), n_(source.size()) {
    if (n_ > 0 && src_[n_ - 1] == '\n') --n_;  // keep_trailing_newline is off
  }

  std::vector<Token> run() {
    size_t pos = 0;
    After after = After::Keep;
    while (pos < n_) {
      const size_t tag = find_tag(pos);
      std::string text = src_.substr(pos, tag - pos);
      apply_after(text, after);
      after = After::Keep;
      if (tag < n_) {
        const char kind = src_[tag + 1];
        const char mod = tag + 2 < n_ ? src_[tag + 2] : '\0';
        if (mod == '-') {
          strip_trailing_space(text);
        } else if ((kind == '%' || kind == '#') && mod != '+') {
          lstrip_block(text, pos, tag);
        }
      }
      if (!text.empty()) push(Kind::Text, pos, std::move(text));
      if (tag >= n_) break;
      pos = lex_tag(tag, after);
    }
    push(Kind::End, n_, "");
    return std::move(tokens_);
  }

 private:
  const std::string & src_;
  size_t n_;
  std::vector<Token> tokens_;

  [[noreturn]] void fail(const std::string & msg, size_t at) const { throw TemplateError(msg, at); }

  void push(Kind kind, size_t at, std::string text) { tokens_.push_back(Token{kind, std::move(text), at}); }

  size_t find_tag(size_t pos) const {
    for (size_t i = pos; i + 1 < n_; ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return n_;
  }

  static void apply_after(std::string & text, After after) {
    if (after == After::StripSpace) strip_leading_space(text);
    if (after == After::TrimNewline && !text.empty() && text[0] == '\n') text.erase(0, 1);
  }

  // lstrip_blocks: the spaces and tabs between the start of the line and a block tag go, if nothing else
  // is there. The line start is judged on the source, so a newline trim_blocks removed still counts.
  void lstrip_block(std::string & text, size_t text_start, size_t tag) const {
    // (the newline is looked for in this text only: a search back to the start of the source would make
    // a template of many tags on one line quadratic)
    size_t nl = std::string::npos;
    for (size_t i = tag; i > text_start; --i) {
      if (src_[i - 1] == '\n') {
        nl = i - 1;
        break;
      }
    }
    size_t line_start;
    if (nl != std::string::npos) {
      line_start = nl + 1;
    } else if (text_start == 0) {
      line_start = 0;
    } else {
      return;
    }
    for (size_t i = line_start; i < tag; ++i) {
      if (src_[i] != ' ' && src_[i] != '\t') return;
    }
    size_t cut = std::min(tag - line_start, text.size());
    text.erase(text.size() - cut);
  }

  // A tag at `tag` ("{{", "{%" or "{#"): its tokens; returns the position after it.
  size_t lex_tag(size_t tag, After & after) {
    const char kind = src_[tag + 1];
    size_t pos = tag + 2;
    if (pos < n_ && (src_[pos] == '-' || src_[pos] == '+')) ++pos;
    if (kind == '#') {
      const size_t close = src_.find("#}", pos);
      if (close == std::string::npos || close + 2 > n_) fail("unclosed comment (no '#}')", tag);
      after = close > pos && src_[close - 1] == '-' ? After::StripSpace : After::TrimNewline;
      return close + 2;
    }
    if (kind == '%') {
      size_t raw_end = 0;
      if (raw_tag(pos, "raw", raw_end)) return lex_raw(tag, raw_end, after);
    }
    push(kind == '{' ? Kind::ExprOpen : Kind::StmtOpen, tag, "");
    return lex_inside(tag, pos, kind == '{', after);
  }

  // Whether `word` (raw / endraw) follows at pos as a whole tag: "  raw  -%}"; end is after the "%}".
  bool raw_tag(size_t pos, const char * word, size_t & end) const {
    while (pos < n_ && ascii_space(src_[pos])) ++pos;
    const size_t len = std::strlen(word);
    if (!starts(src_, pos, word) || (pos + len < n_ && name_char(src_[pos + len]))) return false;
    pos += len;
    while (pos < n_ && ascii_space(src_[pos])) ++pos;
    if (pos < n_ && (src_[pos] == '-' || src_[pos] == '+')) ++pos;
    if (pos + 2 > n_ || !starts(src_, pos, "%}")) return false;
    end = pos + 2;
    return true;
  }

  // {% raw %}...{% endraw %}: the body is text. As in Jinja, no trim_blocks after "raw %}", but a `-`
  // strips, lstrip_blocks applies before "{% endraw" and trim_blocks after its "%}".
  size_t lex_raw(size_t tag, size_t body_start, After & after) {
    size_t search = body_start;
    while (true) {
      const size_t open = src_.find("{%", search);
      if (open == std::string::npos || open >= n_) fail("unclosed {% raw %} (no {% endraw %})", tag);
      size_t pos = open + 2;
      const char mod = pos < n_ ? src_[pos] : '\0';
      if (mod == '-' || mod == '+') ++pos;
      size_t end = 0;
      if (!raw_tag(pos, "endraw", end)) {
        search = open + 2;
        continue;
      }
      std::string text = src_.substr(body_start, open - body_start);
      if (src_[body_start - 3] == '-') strip_leading_space(text);
      if (mod == '-') {
        strip_trailing_space(text);
      } else if (mod != '+') {
        lstrip_block(text, body_start, open);
      }
      if (!text.empty()) push(Kind::Text, body_start, std::move(text));
      after = src_[end - 3] == '-' ? After::StripSpace : After::TrimNewline;
      return end;
    }
  }

  size_t lex_inside(size_t tag, size_t pos, bool expr, After & after) {
    int braces = 0;
    while (true) {
      while (pos < n_ && ascii_space(src_[pos])) ++pos;
      if (pos >= n_) fail(expr ? "unclosed '{{' (no '}}')" : "unclosed '{%' (no '%}')", tag);
      if (expr && braces == 0 && (starts(src_, pos, "}}") || starts(src_, pos, "-}}"))) {
        after = src_[pos] == '-' ? After::StripSpace : After::Keep;
        push(Kind::ExprClose, pos, "");
        return pos + (src_[pos] == '-' ? 3 : 2);
      }
      if (!expr && (starts(src_, pos, "%}") || starts(src_, pos, "-%}") || starts(src_, pos, "+%}"))) {
        after = src_[pos] == '-' ? After::StripSpace : src_[pos] == '+' ? After::Keep : After::TrimNewline;
        push(Kind::StmtClose, pos, "");
        return pos + (src_[pos] == '%' ? 2 : 3);
      }
      const char c = src_[pos];
      if (c == '\'' || c == '"') {
        pos = lex_string(pos);
      } else if (digit(c)) {
        pos = lex_number(pos);
      } else if (name_start(c)) {
        size_t end = pos;
        while (end < n_ && name_char(src_[end])) ++end;
        push(Kind::Name, pos, src_.substr(pos, end - pos));
        pos = end;
      } else {
        static const char * const kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                            ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ",", ".", ":", "|"};
        const char * op = nullptr;
        for (const char * o : kOps) {
          if (starts(src_, pos, o)) {
            op = o;
            break;
          }
        }
        if (!op) {
          const auto cps = utf8_decode(src_.substr(pos, 4));
          std::string shown;
          utf8_append(shown, cps[0]);
          char code[16];
          std::snprintf(code, sizeof code, "U+%04X", static_cast<unsigned>(cps[0] >= 0xDC80 && cps[0] <= 0xDCFF ? cps[0] - 0xDC00 : cps[0]));
          fail(str("unexpected character ", cps[0] < 0x80 && cps[0] >= 0x20 ? "'" + shown + "'" : std::string(code),
                   " in a tag"),
               pos);
        }
        if (op[0] == '{') ++braces;
        if (op[0] == '}' && braces > 0) --braces;
        push(Kind::Op, pos, op);
        pos += std::strlen(op);
      }
    }
  }

  size_t lex_string(size_t start) {
    const char quote = src_[start];
    std::string out;
    size_t pos = start + 1;
    auto hex = [&](size_t at, int len) -> uint32_t {
      uint32_t v = 0;
      for (int k = 0; k < len; ++k) {
        const char h = at + k < n_ ? src_[at + k] : '\0';
        if (!std::isxdigit(static_cast<unsigned char>(h))) fail("bad \\x, \\u or \\U escape in a string", at - 2);
        v = v * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      return v;
    };
    while (true) {
      if (pos >= n_) fail("unclosed string literal", start);
      const char c = src_[pos];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++pos;
        continue;
      }
      if (pos + 1 >= n_) fail("unclosed string literal", start);
      const char e = src_[pos + 1];
      pos += 2;
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case 'a': out += '\a'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case '\n': break;  // a line continuation
        case 'x':
          utf8_append(out, hex(pos, 2));
          pos += 2;
          break;
        case 'u':
        case 'U': {
          uint32_t cp = hex(pos, e == 'u' ? 4 : 8);
          pos += e == 'u' ? 4 : 8;
          // a UTF-16 surrogate pair written as two \u escapes
          if (cp >= 0xD800 && cp <= 0xDBFF && starts(src_, pos, "\\u")) {
            const uint32_t lo = hex(pos + 2, 4);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              pos += 6;
            }
          }
          if (cp > 0x10FFFF) fail("\\U escape past U+10FFFF", pos - 10);
          utf8_append(out, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {  // octal, up to three digits
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && pos < n_ && src_[pos] >= '0' && src_[pos] <= '7'; ++k) {
              v = v * 8 + static_cast<uint32_t>(src_[pos++] - '0');
            }
            utf8_append(out, v);
          } else {  // Python keeps an unknown escape as written
            out += '\\';
            out += e;
          }
      }
    }
    push(Kind::String, start, std::move(out));
    return pos + 1;
  }

  // 12, 1_000, 1.5, 1e3, 2.5e-3 (a '.' right after a '.' token is attribute access: x.0.1)
  size_t lex_number(size_t start) {
    size_t pos = start;
    auto digits = [&] {
      while (pos < n_ && (digit(src_[pos]) || (src_[pos] == '_' && pos + 1 < n_ && digit(src_[pos + 1])))) ++pos;
    };
    digits();
    bool is_float = false;
    const bool after_dot = !tokens_.empty() && tokens_.back().kind == Kind::Op && tokens_.back().text == ".";
    if (!after_dot && pos + 1 < n_ && src_[pos] == '.' && digit(src_[pos + 1])) {
      ++pos;
      digits();
      is_float = true;
    }
    if (!after_dot && pos < n_ && (src_[pos] == 'e' || src_[pos] == 'E')) {
      size_t p = pos + 1;
      if (p < n_ && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < n_ && digit(src_[p])) {
        pos = p;
        digits();
        is_float = true;
      }
    }
    std::string text;
    for (size_t i = start; i < pos; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    Token t{is_float ? Kind::Float : Kind::Int, text, start};
    if (is_float) {
      t.f = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      t.i = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) fail("integer literal does not fit in 64 bits", start);
    }
    tokens_.push_back(std::move(t));
    return pos;
  }
};

}  // namespace

std::vector<Token> lex(const std::string & source) { return Lexer(source).run(); }

}  // namespace peft::jinja
