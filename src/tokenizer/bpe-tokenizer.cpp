// Hugging Face tokenizer.json with a BPE model: normalizer, pre-tokenizer, BPE merges, post-processor
// and decoder, for the byte-level and the SentencePiece (byte-fallback) families.
#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/tokenizer/tokenizer.h"
#include "peft/util/regex.h"

namespace peft {

namespace {

using json = nlohmann::json;

// ---- UTF-8 helpers ----

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

std::vector<std::string> utf8_chars(const std::string & s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    n = std::min(n, s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// (builds a new string: replacing in place shifts the tail at every hit, quadratic on a long text)
void replace_all(std::string & s, const std::string & from, const std::string & to) {
  if (from.empty()) return;
  size_t pos = s.find(from);
  if (pos == std::string::npos) return;
  std::string out;
  out.reserve(s.size());
  size_t last = 0;
  for (; pos != std::string::npos; pos = s.find(from, last)) {
    out.append(s, last, pos - last);
    out += to;
    last = pos + from.size();
  }
  out.append(s, last, std::string::npos);
  s.swap(out);
}

// GPT-2's reversible byte -> printable unicode character mapping.
struct ByteMap {
  std::string to_char[256];
  std::unordered_map<std::string, unsigned char> to_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_char[b] = utf8(keep ? b : 256 + n++);
      to_byte[to_char[b]] = static_cast<unsigned char>(b);
    }
  }
};
const ByteMap & byte_map() {
  static const ByteMap m;
  return m;
}

const char * kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- pipeline stages ----

struct PreTok {
  enum Kind { kSplit, kByteLevel, kMetaspace, kDigits } kind;
  std::shared_ptr<Regex> regex;  // split pattern
  bool add_prefix_space = false;
  std::string replacement = "\xE2\x96\x81";  // ▁
  std::string prepend_scheme = "always";
  bool split = true;
  std::string behavior = "Isolated";  // Split: what becomes of a match (HF's SplitDelimiterBehavior)
};

// A literal as a regular expression (a Split pattern given as {"String": ...}).
std::string regex_escape(const std::string & s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}", c) != nullptr) out += '\\';
    out += c;
  }
  return out;
}

struct Normalizer {
  enum Kind { kPrepend, kReplace } kind;
  std::string a, b;
};

struct DecodeStep {
  enum Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string a, b;
  int start = 0, stop = 0;
  bool prefix_space = true;
};

struct AddedToken {
  std::string content;
  int64_t id;
  bool special;
};

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(const json & j, const std::string & path) : path_(path) {
    const json & model = j.at("model");
    PEFT_CHECK(model.value("type", "BPE") == "BPE", path, ": model type '", model.value("type", ""),
               "' is not supported (BPE only)");
    for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
      const int64_t id = id_value(it.value(), "vocab['" + it.key() + "']");
      vocab_[it.key()] = id;
      max_id_ = std::max(max_id_, id);
    }
    int64_t rank = 0;
    for (const auto & m : model.at("merges")) {
      std::string a, b;
      if (m.is_array()) {
        a = m.at(0).get<std::string>();
        b = m.at(1).get<std::string>();
      } else {
        std::string s = m.get<std::string>();
        size_t sp = s.find(' ', 1);
        PEFT_CHECK(sp != std::string::npos, path, ": malformed merge '", s, "'");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      }
      ranks_[a + '\x01' + b] = rank++;
    }
    byte_fallback_ = model.value("byte_fallback", false);
    ignore_merges_ = model.value("ignore_merges", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) unk_ = id_of(model["unk_token"].get<std::string>());
    if (j.contains("added_tokens")) {
      for (const auto & t : j["added_tokens"]) {
        const std::string content = t.at("content").get<std::string>();
        added_.push_back({content, id_value(t.at("id"), "added token '" + content + "'"), t.value("special", false)});
        vocab_[added_.back().content] = added_.back().id;
        max_id_ = std::max(max_id_, added_.back().id);
      }
      std::sort(added_.begin(), added_.end(), [](const auto & x, const auto & y) { return x.content.size() > y.content.size(); });
      for (const auto & t : added_) {
        if (!t.content.empty()) added_first_[static_cast<unsigned char>(t.content[0])] = true;
      }
    }
    id_to_token_.assign(max_id_ + 1, "");
    for (const auto & kv : vocab_) id_to_token_[kv.second] = kv.first;
    parse_normalizer(j.value("normalizer", json()));
    parse_pre_tokenizer(j.value("pre_tokenizer", json()));
    parse_post_processor(j.value("post_processor", json()));
    parse_decoder(j.value("decoder", json()));
  }

  // token ids index a table: negative or absurdly large ones are errors, not memory corruption
  // a token id: an integer (a number like 1e100 or 99999999999999999999 is not), in range
  int64_t id_value(const json & v, const std::string & what) const {
    PEFT_CHECK(v.is_number_integer(), path_, ": the id of ", what, " must be an integer, got ", v.dump());
    const int64_t id = v.get<int64_t>();
    check_id(id, what);
    return id;
  }

  void check_id(int64_t id, const std::string & what) const {
    PEFT_CHECK(id >= 0 && id < (int64_t(1) << 24), path_, ": ", what, " has id ", id, ", outside [0, 2^24)");
  }

  std::vector<int64_t> encode(const std::string & text, bool add_special) const override {
    std::vector<int64_t> ids;
    if (add_special) ids.insert(ids.end(), prefix_.begin(), prefix_.end());
    size_t section = 0;
    size_t start = 0;
    std::string pending;
    auto flush = [&]() {
      if (!pending.empty()) encode_section(pending, section++, ids);
      pending.clear();
    };
    while (start < text.size()) {
      const AddedToken * hit = nullptr;
      if (added_first_[static_cast<unsigned char>(text[start])]) {  // (most bytes start no added token)
        for (const auto & t : added_) {
          if (!t.content.empty() && text.compare(start, t.content.size(), t.content) == 0) {
            hit = &t;
            break;
          }
        }
      }
      if (hit) {
        flush();
        ids.push_back(hit->id);
        start += hit->content.size();
      } else {
        pending.push_back(text[start++]);
      }
    }
    flush();
    if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    return ids;
  }

  std::string decode(const std::vector<int64_t> & ids, bool skip_special) const override {
    // every token, added ones too (special ones unless skipped), goes through the decoder chain, as in HF
    // tokenizers and transformers.js (Gemma's added whitespace tokens "▁▁" decode to spaces)
    std::vector<std::string> toks;
    for (int64_t id : ids) {
      PEFT_CHECK(id >= 0 && id <= max_id_, "token id ", id, " is out of range for ", path_);
      const AddedToken * added = nullptr;
      for (const auto & t : added_) added = (t.id == id) ? &t : added;
      if (added && skip_special && added->special) continue;
      toks.push_back(id_to_token_[id]);
    }
    return decode_run(std::move(toks));
  }

  int64_t vocab_size() const override { return max_id_ + 1; }
  int64_t token_id(const std::string & t) const override { return id_of(t); }

 private:
  int64_t id_of(const std::string & t) const {
    auto it = vocab_.find(t);
    return it == vocab_.end() ? -1 : it->second;
  }

  void parse_normalizer(const json & n) {
    if (n.is_null()) return;
    const std::string type = n.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const auto & x : n.at("normalizers")) parse_normalizer(x);
    } else if (type == "Prepend") {
      normalizers_.push_back({Normalizer::kPrepend, n.at("prepend").get<std::string>(), ""});
    } else if (type == "Replace") {
      PEFT_CHECK(n.at("pattern").contains("String"), path_, ": Replace normalizer with a regex is not supported");
      normalizers_.push_back({Normalizer::kReplace, n["pattern"]["String"].get<std::string>(), n.at("content").get<std::string>()});
    } else if (type == "NFC" || type == "NFKC") {
      // input is taken as already normalized
    } else {
      fail(str(path_, ": normalizer type '", type, "' is not supported"));
    }
  }

  void parse_pre_tokenizer(const json & p) {
    if (p.is_null()) return;
    const std::string type = p.at("type").get<std::string>();
    PreTok t;
    if (type == "Sequence") {
      for (const auto & x : p.at("pretokenizers")) parse_pre_tokenizer(x);
      return;
    } else if (type == "Split") {
      PEFT_CHECK(!p.value("invert", false), path_, ": inverted Split pre-tokenizer is not supported");
      t.behavior = p.value("behavior", "Isolated");
      PEFT_CHECK(t.behavior == "Isolated" || t.behavior == "Removed" || t.behavior == "MergedWithPrevious" ||
                     t.behavior == "MergedWithNext" || t.behavior == "Contiguous",
                 path_, ": Split behavior '", t.behavior, "' is not supported");
      const json & pat = p.at("pattern");
      t.kind = PreTok::kSplit;
      t.regex = std::make_shared<Regex>(pat.contains("Regex") ? pat["Regex"].get<std::string>()
                                                             : regex_escape(pat["String"].get<std::string>()));
    } else if (type == "ByteLevel") {
      t.kind = PreTok::kByteLevel;
      t.add_prefix_space = p.value("add_prefix_space", false);
      if (p.value("use_regex", true)) t.regex = std::make_shared<Regex>(kGpt2Pattern);
      byte_level_ = true;
    } else if (type == "Metaspace") {
      t.kind = PreTok::kMetaspace;
      t.replacement = p.value("replacement", t.replacement);
      t.prepend_scheme = p.value("prepend_scheme", p.value("add_prefix_space", true) ? "always" : "never");
      t.split = p.value("split", true);
    } else if (type == "Digits") {
      t.kind = PreTok::kDigits;
      t.regex = std::make_shared<Regex>(p.value("individual_digits", false) ? R"(\d|[^\d]+)" : R"(\d+|[^\d]+)");
    } else {
      fail(str(path_, ": pre_tokenizer type '", type, "' is not supported"));
    }
    pre_.push_back(t);
  }

  void parse_post_processor(const json & p) {
    if (p.is_null()) return;
    const std::string type = p.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const auto & x : p.at("processors")) parse_post_processor(x);
    } else if (type == "TemplateProcessing") {
      bool seen_seq = false;
      for (const auto & piece : p.at("single")) {
        if (piece.contains("Sequence")) {
          seen_seq = true;
        } else if (piece.contains("SpecialToken")) {
          int64_t id = id_of(piece["SpecialToken"].at("id").get<std::string>());
          PEFT_CHECK(id >= 0, path_, ": post_processor names an unknown special token");
          (seen_seq ? suffix_ : prefix_).push_back(id);
        }
      }
    } else if (type != "ByteLevel") {
      fail(str(path_, ": post_processor type '", type, "' is not supported"));
    }
  }

  void parse_decoder(const json & d) {
    if (d.is_null()) return;
    const std::string type = d.at("type").get<std::string>();
    DecodeStep s;
    if (type == "Sequence") {
      for (const auto & x : d.at("decoders")) parse_decoder(x);
      return;
    } else if (type == "ByteLevel") {
      s.kind = DecodeStep::kByteLevel;
    } else if (type == "Replace") {
      s.kind = DecodeStep::kReplace;
      PEFT_CHECK(d.at("pattern").contains("String"), path_, ": Replace decoder with a regex is not supported");
      s.a = d["pattern"]["String"].get<std::string>();
      s.b = d.at("content").get<std::string>();
    } else if (type == "ByteFallback") {
      s.kind = DecodeStep::kByteFallback;
    } else if (type == "Fuse") {
      s.kind = DecodeStep::kFuse;
    } else if (type == "Strip") {
      s.kind = DecodeStep::kStrip;
      s.a = d.at("content").get<std::string>();
      // counts of characters: integers in a sane range (a float such as 1e100 would not convert)
      for (const char * k : {"start", "stop"}) {
        const json & v = d.value(k, json(0));
        PEFT_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < (int64_t(1) << 20), path_,
                   ": decoder Strip's '", k, "' must be a small non-negative integer, got ", v.dump());
      }
      s.start = d.value("start", 0);
      s.stop = d.value("stop", 0);
    } else if (type == "Metaspace") {
      s.kind = DecodeStep::kMetaspace;
      s.a = d.value("replacement", "\xE2\x96\x81");
      s.prefix_space = d.value("prepend_scheme", d.value("add_prefix_space", true) ? "always" : "never") != "never";
    } else {
      fail(str(path_, ": decoder type '", type, "' is not supported"));
    }
    decoders_.push_back(s);
  }

  // Pre-tokenize one section (text between added tokens) and BPE each piece.
  void encode_section(std::string text, size_t section, std::vector<int64_t> & ids) const {
    for (const auto & n : normalizers_) {
      if (n.kind == Normalizer::kPrepend) text = n.a + text;
      else replace_all(text, n.a, n.b);
    }
    std::vector<std::string> pieces = {text};
    for (const auto & p : pre_) {
      std::vector<std::string> next;
      for (auto & piece : pieces) apply_pre(p, piece, section, next);
      pieces.swap(next);
    }
    for (const auto & piece : pieces) bpe(piece, ids);
  }

  void apply_pre(const PreTok & p, std::string piece, size_t section, std::vector<std::string> & out) const {
    if (p.kind == PreTok::kSplit) {
      split_by(*p.regex, p.behavior, piece, out);
    } else if (p.kind == PreTok::kDigits) {
      split_isolated(*p.regex, piece, out);
    } else if (p.kind == PreTok::kByteLevel) {
      if (p.add_prefix_space && !piece.empty() && piece[0] != ' ') piece = " " + piece;
      std::vector<std::string> parts;
      if (p.regex) split_isolated(*p.regex, piece, parts);
      else parts.push_back(piece);
      for (const auto & part : parts) {
        std::string mapped;
        for (unsigned char c : part) mapped += byte_map().to_char[c];
        out.push_back(mapped);
      }
    } else {  // Metaspace
      replace_all(piece, " ", p.replacement);
      bool prepend = p.prepend_scheme == "always" || (p.prepend_scheme == "first" && section == 0);
      if (prepend && piece.compare(0, p.replacement.size(), p.replacement) != 0) piece = p.replacement + piece;
      if (!p.split) {
        out.push_back(piece);
        return;
      }
      size_t start = 0;
      for (size_t pos = piece.find(p.replacement, 1); pos != std::string::npos; pos = piece.find(p.replacement, pos + 1)) {
        out.push_back(piece.substr(start, pos - start));
        start = pos;
      }
      out.push_back(piece.substr(start));
    }
  }

  // HF tokenizers' Split behaviours: a match is its own piece (Isolated), dropped (Removed), joined to the
  // piece before it (MergedWithPrevious) or after it (MergedWithNext); Contiguous: adjacent matches are one piece
  static void split_by(const Regex & re, const std::string & behavior, const std::string & s, std::vector<std::string> & out) {
    if (behavior == "Isolated") return split_isolated(re, s, out);
    std::vector<std::pair<std::string, bool>> parts;  // (text, is a match)
    size_t pos = 0;
    for (const auto & [at, len] : re.find_spans(s)) {
      if (at > pos) parts.emplace_back(s.substr(pos, at - pos), false);
      parts.emplace_back(s.substr(at, len), true);
      pos = at + len;
    }
    if (pos < s.size()) parts.emplace_back(s.substr(pos), false);
    std::vector<std::string> pieces;
    bool pending_next = false;  // MergedWithNext: the last piece waits for the text after it
    bool last_match = false;
    for (const auto & [text, match] : parts) {
      if (behavior == "Removed") {
        if (!match) pieces.push_back(text);
      } else if (behavior == "MergedWithPrevious") {
        if (match && !pieces.empty()) pieces.back() += text;
        else pieces.push_back(text);
      } else if (behavior == "MergedWithNext") {
        if (pending_next) pieces.back() += text;
        else pieces.push_back(text);
        pending_next = match;
      } else {  // Contiguous
        if (match && last_match) pieces.back() += text;
        else pieces.push_back(text);
      }
      last_match = match;
    }
    out.insert(out.end(), pieces.begin(), pieces.end());
  }

  static void split_isolated(const Regex & re, const std::string & s, std::vector<std::string> & out) {
    // matches become pieces; text between matches too
    size_t pos = 0;
    for (const auto & [at, len] : re.find_spans(s)) {
      if (at > pos) out.push_back(s.substr(pos, at - pos));
      out.push_back(s.substr(at, len));
      pos = at + len;
    }
    if (pos < s.size()) out.push_back(s.substr(pos));
  }

  // BPE merges of one word: repeatedly the pair of lowest rank, the leftmost of equal ones (HF tokenizers'
  // order). Symbols are a linked list over the word and candidate pairs a heap whose stale entries are
  // skipped, so a long word costs O(n log n), not O(n^2).
  std::vector<std::string> merge(const std::string & word) const {
    struct Sym {
      size_t at, len;
      int64_t prev, next;  // -1: none
    };
    std::vector<Sym> sym;
    for (size_t i = 0; i < word.size();) {
      const unsigned char c = static_cast<unsigned char>(word[i]);
      size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
      n = std::min(n, word.size() - i);
      const int64_t k = static_cast<int64_t>(sym.size());
      sym.push_back({i, n, k - 1, -1});
      if (k > 0) sym[k - 1].next = k;
      i += n;
    }
    struct Cand {
      int64_t rank;
      size_t at;            // the left symbol's byte offset (its position in the word)
      int64_t left;
      size_t left_len, right_len;
      bool operator>(const Cand & o) const { return rank != o.rank ? rank > o.rank : at > o.at; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    std::string key;
    auto push = [&](int64_t l) {
      if (l < 0 || sym[l].next < 0) return;
      const Sym & a = sym[l];
      const Sym & b = sym[a.next];
      key.assign(word, a.at, a.len);
      key += '\x01';
      key.append(word, b.at, b.len);
      auto it = ranks_.find(key);
      if (it != ranks_.end()) heap.push({it->second, a.at, l, a.len, b.len});
    };
    for (int64_t i = 0; i + 1 < static_cast<int64_t>(sym.size()); ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym & a = sym[c.left];
      // stale: the left symbol was merged away or grew, or its right neighbour changed
      if (a.len != c.left_len || a.next < 0 || sym[a.next].len != c.right_len) continue;
      const int64_t r = a.next;
      a.len += sym[r].len;
      a.next = sym[r].next;
      if (a.next >= 0) sym[a.next].prev = c.left;
      sym[r].len = 0;  // gone (a zero length never matches a candidate)
      push(a.prev);
      push(c.left);
    }
    std::vector<std::string> out;
    for (int64_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) out.push_back(word.substr(sym[i].at, sym[i].len));
    return out;
  }

  void bpe(const std::string & word, std::vector<int64_t> & ids) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      int64_t id = id_of(word);
      if (id >= 0) {
        ids.push_back(id);
        return;
      }
    }
    for (const auto & s : merge(word)) {
      int64_t id = id_of(s);
      if (id >= 0) {
        ids.push_back(id);
      } else if (byte_fallback_) {
        for (unsigned char c : s) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "<0x%02X>", c);
          int64_t b = id_of(buf);
          PEFT_CHECK(b >= 0, path_, ": byte-fallback token ", buf, " is missing from the vocabulary");
          ids.push_back(b);
        }
      } else {
        PEFT_CHECK(unk_ >= 0, path_, ": text piece '", s, "' has no token and the model has no unk_token");
        ids.push_back(unk_);
      }
    }
  }

  std::string decode_run(std::vector<std::string> toks) const {
    if (toks.empty()) return "";
    for (const auto & d : decoders_) {
      switch (d.kind) {
        case DecodeStep::kByteLevel: {
          std::string joined, bytes;
          for (const auto & t : toks) joined += t;
          for (const auto & ch : utf8_chars(joined)) {
            auto it = byte_map().to_byte.find(ch);
            if (it != byte_map().to_byte.end()) bytes.push_back(static_cast<char>(it->second));
            else bytes += ch;
          }
          toks = {bytes};
          break;
        }
        case DecodeStep::kReplace:
          for (auto & t : toks) replace_all(t, d.a, d.b);
          break;
        case DecodeStep::kByteFallback: {
          std::vector<std::string> next;
          std::string bytes;
          for (const auto & t : toks) {
            // "<0xHH>" with two hex digits is a byte; anything else ("<0xZZ>" in a vocabulary) is a token
            const auto hex = [](char c) {
              return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            };
            if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && hex(t[3]) >= 0 && hex(t[4]) >= 0) {
              bytes.push_back(static_cast<char>(hex(t[3]) * 16 + hex(t[4])));
              continue;
            }
            if (!bytes.empty()) next.push_back(bytes), bytes.clear();
            next.push_back(t);
          }
          if (!bytes.empty()) next.push_back(bytes);
          toks.swap(next);
          break;
        }
        case DecodeStep::kFuse: {
          std::string joined;
          for (const auto & t : toks) joined += t;
          toks = {joined};
          break;
        }
        case DecodeStep::kStrip:
          for (auto & t : toks) {
            int s = 0;
            while (s < d.start && t.compare(0, d.a.size(), d.a) == 0) t.erase(0, d.a.size()), ++s;
            int e = 0;
            while (e < d.stop && t.size() >= d.a.size() && t.compare(t.size() - d.a.size(), d.a.size(), d.a) == 0) {
              t.erase(t.size() - d.a.size());
              ++e;
            }
          }
          break;
        case DecodeStep::kMetaspace:
          for (size_t i = 0; i < toks.size(); ++i) {
            replace_all(toks[i], d.a, " ");
            if (i == 0 && d.prefix_space && !toks[i].empty() && toks[i][0] == ' ') toks[i].erase(0, 1);
          }
          break;
      }
    }
    std::string out;
    for (const auto & t : toks) out += t;
    return out;
  }

  std::string path_;
  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int64_t> ranks_;
  std::vector<AddedToken> added_;
  bool added_first_[256] = {};  // first bytes of the added tokens
  std::vector<Normalizer> normalizers_;
  std::vector<PreTok> pre_;
  std::vector<DecodeStep> decoders_;
  std::vector<int64_t> prefix_, suffix_;
  int64_t max_id_ = -1;
  int64_t unk_ = -1;
  bool byte_fallback_ = false, ignore_merges_ = false, byte_level_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string & path) {
  json j = read_json_file(path);
  try {
    return std::make_unique<BpeTokenizer>(j, path);
  } catch (const json::exception & e) {
    fail(str(path, ": unexpected tokenizer.json layout (", e.what(), ")"));
  }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string & model_dir, int64_t vocab_size, bool byte_tokenizer) {
  if (byte_tokenizer) return make_byte_tokenizer(vocab_size);
  const std::string path = model_dir + "/tokenizer.json";
  struct stat st;
  PEFT_CHECK(::stat(path.c_str(), &st) == 0, path, ": no such file: the model folder has no tokenizer (text cannot be ",
             "tokenized; token-id inputs need none; --byte-tokenizer tokenizes bytes, for tiny test models only)");
  return load_tokenizer_json(path);
}

}  // namespace peft
