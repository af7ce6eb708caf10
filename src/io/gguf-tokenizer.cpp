// tokenizer.json -> llama.cpp's tokenizer.* GGUF keys: see include/peft/io/gguf-tokenizer.h.
// llama.cpp's side (src/llama-vocab.cpp): "gpt2" is byte-level BPE with the merges and a pre-tokenizer
// chosen by tokenizer.ggml.pre; "llama" is SentencePiece, which merges the adjacent pair whose joined
// token has the highest score. A tokenizer.json converted from SentencePiece keeps the merge order as
// merges, so a token's score here is minus the rank of the first merge that makes it: the highest score
// is the earliest merge, as Hugging Face's BPE applies them.
#include "peft/io/gguf-tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <map>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/util/text.h"

namespace peft {

namespace {

using json = nlohmann::json;

// llama.cpp's llama_token_type
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// the split regexes of byte-level BPE tokenizers and llama.cpp's pre-tokenizer for each (a
// Sequence [Split(Regex, Isolated), ByteLevel(use_regex: false)] in tokenizer.json)
struct PreTokenizer {
  const char * regex;
  const char * pre;
};
const PreTokenizer kPreTokenizers[] = {
    {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     "llama-bpe"},  // Llama 3
    {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     "qwen2"},  // Qwen 2 / 2.5 / 3
};

bool is_file(const std::string & path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string type_of(const json & j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : ""; }

// The byte-level pre-tokenizer's llama.cpp name, or "" when it is not one llama.cpp has.
std::string byte_level_pre(const json & pre) {
  if (type_of(pre) == "ByteLevel") {
    return pre.value("use_regex", true) && !pre.value("add_prefix_space", false) ? "gpt-2" : "";
  }
  if (type_of(pre) != "Sequence" || !pre.contains("pretokenizers") || pre["pretokenizers"].size() != 2) return "";
  const json & split = pre["pretokenizers"][0];
  const json & bl = pre["pretokenizers"][1];
  if (type_of(split) != "Split" || type_of(bl) != "ByteLevel" || bl.value("use_regex", true) ||
      bl.value("add_prefix_space", false) || split.value("behavior", "") != "Isolated" || split.value("invert", false)) {
    return "";
  }
  if (!split.contains("pattern") || !split["pattern"].is_object() || !split["pattern"].contains("Regex")) return "";
  const std::string regex = split["pattern"]["Regex"].get<std::string>();
  for (const auto & p : kPreTokenizers) {
    if (regex == p.regex) return p.pre;
  }
  return "";
}

// SentencePiece as BPE: spaces become "▁" (normalizer Replace, or a Metaspace pre-tokenizer); whether a
// "▁" is put before the text (tokenizer.ggml.add_space_prefix). false when the layout is another.
bool sentencepiece_layout(const json & tj, bool * add_space_prefix) {
  const std::string space = "\xE2\x96\x81";  // ▁
  const json & norm = tj.contains("normalizer") ? tj["normalizer"] : json();
  const json & pre = tj.contains("pre_tokenizer") ? tj["pre_tokenizer"] : json();
  *add_space_prefix = false;
  bool replaces = false;
  json steps = type_of(norm) == "Sequence" ? norm.value("normalizers", json::array()) : json::array({norm});
  for (const auto & s : steps) {
    if (s.is_null()) continue;
    if (type_of(s) == "Prepend" && s.value("prepend", "") == space) {
      *add_space_prefix = true;
    } else if (type_of(s) == "Replace" && s.contains("pattern") && s["pattern"].value("String", "") == " " &&
               s.value("content", "") == space) {
      replaces = true;
    } else {
      return false;
    }
  }
  if (type_of(pre) == "Metaspace" && !replaces) {
    const std::string scheme = pre.value("prepend_scheme", pre.value("add_prefix_space", true) ? "always" : "never");
    *add_space_prefix = scheme != "never";
    return pre.value("replacement", space) == space;
  }
  // Gemma: Split(" ", MergedWithPrevious) after the normalizer is a no-op on "▁" text
  const bool pre_ok = pre.is_null() || (type_of(pre) == "Split" && pre.contains("pattern") &&
                                        pre["pattern"].value("String", "") == " ");
  return replaces && pre_ok;
}

bool is_byte_token(const std::string & t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

// a special token's text in tokenizer_config.json (a string or {"content": ...}); "" when absent
std::string config_token(const json & tc, const char * field) {
  if (!tc.contains(field)) return "";
  const json & v = tc[field];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

// The chat template's text (chat_template.jinja, or tokenizer_config.json's chat_template: a string or
// the "default" entry of a list); "" when the model has none.
std::string chat_template_text(const std::string & model_dir, const json & tc) {
  if (is_file(model_dir + "/chat_template.jinja")) return read_file(model_dir + "/chat_template.jinja");
  if (!tc.contains("chat_template")) return "";
  const json & t = tc["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    for (const auto & e : t) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string()) {
        return e["template"].get<std::string>();
      }
    }
  }
  return "";
}

GgufTokenizerInfo add_tokenizer(GgufWriter & w, const std::string & model_dir, const ModelConfig & mc);

}  // namespace

GgufTokenizerInfo gguf_add_tokenizer(GgufWriter & w, const std::string & model_dir, const ModelConfig & mc) {
  // a field of another JSON type than the tokenizers library writes: an error naming the files
  try {
    return add_tokenizer(w, model_dir, mc);
  } catch (const nlohmann::json::exception & e) {
    fail(str(model_dir, "/tokenizer.json (or tokenizer_config.json): a field of an unexpected type: ", e.what()));
  }
}

namespace {

GgufTokenizerInfo add_tokenizer(GgufWriter & w, const std::string & model_dir, const ModelConfig & mc) {
  const std::string tj_path = model_dir + "/tokenizer.json";
  PEFT_CHECK(is_file(tj_path), tj_path, ": not found: llama.cpp needs the tokenizer in the GGUF file");
  const json tj = read_json_file(tj_path);
  const std::string tc_path = model_dir + "/tokenizer_config.json";
  const json tc = is_file(tc_path) ? read_json_file(tc_path) : json::object();
  PEFT_CHECK(tj.is_object() && tj.contains("model") && tj["model"].is_object(), tj_path, ": no \"model\" object");
  const json & m = tj["model"];
  PEFT_CHECK(type_of(m) == "BPE", tj_path, ": model.type '", type_of(m),
             "': only BPE tokenizers (byte-level, or SentencePiece with byte fallback) map to llama.cpp's");

  GgufTokenizerInfo info;
  bool add_space_prefix = false;
  const json & pre = tj.contains("pre_tokenizer") ? tj["pre_tokenizer"] : json();
  if (m.value("byte_fallback", false)) {
    PEFT_CHECK(sentencepiece_layout(tj, &add_space_prefix), tj_path, ": byte_fallback BPE with normalizer ",
               tj.value("normalizer", json()).dump(), " and pre_tokenizer ", pre.dump(),
               ": not the SentencePiece layout (\"\xE2\x96\x81\" for spaces) that llama.cpp's \"llama\" tokenizer reads");
    info.model = "llama";
    info.pre = "default";
  } else {
    info.model = "gpt2";
    info.pre = byte_level_pre(pre);
    PEFT_CHECK(!info.pre.empty(), tj_path, ": pre_tokenizer ", pre.dump().substr(0, 300),
               " is not a byte-level split that llama.cpp has a pre-tokenizer for (GPT-2, Llama 3, Qwen 2)");
    const json & norm = tj.contains("normalizer") ? tj["normalizer"] : json();
    // Qwen's NFC normalizer: llama.cpp does not normalize (convert_hf_to_gguf.py keeps "qwen2" as well)
    PEFT_CHECK(norm.is_null() || (type_of(norm) == "NFC" && info.pre == "qwen2"), tj_path, ": normalizer ",
               norm.dump(), " has no llama.cpp equivalent");
  }

  // the vocabulary: model.vocab, then added_tokens (which may add ids or mark existing ones special)
  std::map<int64_t, std::string> by_id;
  std::map<std::string, int64_t> ids;
  PEFT_CHECK(m.contains("vocab") && m["vocab"].is_object(), tj_path, ": model.vocab is not an object");
  for (const auto & kv : m["vocab"].items()) {
    PEFT_CHECK(kv.value().is_number_integer() && kv.value().get<int64_t>() >= 0, tj_path, ": model.vocab['", kv.key(),
               "'] is not a token id");
    by_id[kv.value().get<int64_t>()] = kv.key();
    ids[kv.key()] = kv.value().get<int64_t>();
  }
  std::map<int64_t, bool> added;  // id -> special
  for (const auto & t : tj.value("added_tokens", json::array())) {
    PEFT_CHECK(t.is_object() && t.contains("id") && t["id"].is_number_integer() && t.contains("content") &&
                   t["content"].is_string(), tj_path, ": an added_tokens entry without an integer id and a content");
    const int64_t id = t["id"].get<int64_t>();
    by_id[id] = t["content"].get<std::string>();
    ids[t["content"].get<std::string>()] = id;
    added[id] = t.value("special", false);
  }
  PEFT_CHECK(!by_id.empty(), tj_path, ": empty vocabulary");
  const int64_t n = std::max<int64_t>(mc.vocab_size, by_id.rbegin()->first + 1);
  PEFT_CHECK(n == mc.vocab_size, tj_path, ": token id ", by_id.rbegin()->first, " is past config.json's vocab_size ",
             mc.vocab_size);
  info.n_tokens = n;

  std::vector<std::string> merges;
  std::map<std::string, int64_t> merge_rank;  // the token a merge makes -> its first rank
  for (const auto & mg : m.value("merges", json::array())) {
    std::string a, b;
    if (mg.is_string()) {
      const std::string s = mg.get<std::string>();
      const size_t sp = s.find(' ', 1);
      PEFT_CHECK(sp != std::string::npos, tj_path, ": merge '", s, "' is not two tokens");
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else {
      PEFT_CHECK(mg.is_array() && mg.size() == 2, tj_path, ": a merge is not two tokens");
      a = mg[0].get<std::string>(), b = mg[1].get<std::string>();
    }
    PEFT_CHECK(a.find(' ') == std::string::npos && b.find(' ') == std::string::npos, tj_path, ": merge ['", a, "', '", b,
               "'] holds a space, which llama.cpp's merges cannot");
    merge_rank.emplace(a + b, static_cast<int64_t>(merges.size()));
    merges.push_back(a + " " + b);
  }

  const std::string unk = m.contains("unk_token") && m["unk_token"].is_string() ? m["unk_token"].get<std::string>() : "";
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;
  for (int64_t i = 0; i < n; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end()) {
      tokens.push_back("[PAD" + std::to_string(i) + "]");
      types.push_back(kUnused);
      scores.push_back(-1e9f);
      continue;
    }
    const std::string & t = it->second;
    tokens.push_back(t);
    int32_t type = kNormal;
    if (added.count(i)) type = added[i] ? kControl : kUserDefined;
    if (info.model == "llama" && t == unk) type = kUnknown;
    if (info.model == "llama" && is_byte_token(t) && !added.count(i)) type = kByte;
    types.push_back(type);
    auto r = merge_rank.find(t);
    scores.push_back(r != merge_rank.end() ? -static_cast<float>(r->second) : 0.0f);
  }

  w.add_string("tokenizer.ggml.model", info.model);
  w.add_string("tokenizer.ggml.pre", info.pre);
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_int32_array("tokenizer.ggml.token_type", types);
  if (info.model == "llama") {
    w.add_float32_array("tokenizer.ggml.scores", scores);
    w.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
  } else {
    w.add_string_array("tokenizer.ggml.merges", merges);
  }

  // special ids: config.json's, else tokenizer_config.json's token texts
  auto id_of = [&](int64_t from_config, const char * field) -> int64_t {
    if (from_config >= 0) return from_config;
    const std::string t = config_token(tc, field);
    auto it = ids.find(t);
    return t.empty() || it == ids.end() ? -1 : it->second;
  };
  const int64_t bos = id_of(mc.bos_token_id, "bos_token");
  const int64_t eos = id_of(mc.eos_token_ids.empty() ? -1 : mc.eos_token_ids.front(), "eos_token");
  const int64_t pad = id_of(mc.pad_token_id, "pad_token");
  const int64_t unk_id = id_of(-1, "unk_token") >= 0 ? id_of(-1, "unk_token") : (ids.count(unk) ? ids[unk] : -1);
  for (auto p : {std::make_pair("tokenizer.ggml.bos_token_id", bos), std::make_pair("tokenizer.ggml.eos_token_id", eos),
                 std::make_pair("tokenizer.ggml.padding_token_id", pad),
                 std::make_pair("tokenizer.ggml.unknown_token_id", unk_id)}) {
    if (p.second < 0) continue;
    PEFT_CHECK(p.second < n, model_dir, "/config.json: ", p.first, " ", p.second, " is past the vocabulary");
    w.add_uint32(p.first, static_cast<uint32_t>(p.second));
  }
  // a second end-of-generation id (Llama 3's <|eot_id|>, a chat model's <|end|>): llama.cpp's eot id, so it
  // stops there as peft generate does
  if (mc.eos_token_ids.size() >= 2 && mc.eos_token_ids[1] != eos && mc.eos_token_ids[1] < n) {
    w.add_uint32("tokenizer.ggml.eot_token_id", static_cast<uint32_t>(mc.eos_token_ids[1]));
  }

  // add_bos / add_eos: what the post_processor puts around a single text (peft's tokenizer follows it)
  bool add_bos = false, add_eos = false;
  const json & post = tj.contains("post_processor") ? tj["post_processor"] : json();
  json procs = type_of(post) == "Sequence" ? post.value("processors", json::array()) : json::array({post});
  for (const auto & p : procs) {
    if (type_of(p) != "TemplateProcessing") continue;
    bool seen_seq = false;
    for (const auto & piece : p.value("single", json::array())) {
      if (piece.contains("Sequence")) seen_seq = true;
      if (piece.contains("SpecialToken")) {
        const std::string t = piece["SpecialToken"].value("id", "");
        const int64_t id = ids.count(t) ? ids[t] : -1;
        PEFT_CHECK(seen_seq ? id == eos : id == bos, tj_path, ": post_processor adds '", t, "' ",
                   seen_seq ? "after" : "before", " the text, which is not the ", seen_seq ? "eos" : "bos",
                   " token: llama.cpp adds only bos / eos");
        (seen_seq ? add_eos : add_bos) = true;
      }
    }
  }
  w.add_bool("tokenizer.ggml.add_bos_token", add_bos);
  w.add_bool("tokenizer.ggml.add_eos_token", add_eos);

  const std::string tpl = chat_template_text(model_dir, tc);
  if (!tpl.empty()) w.add_string("tokenizer.chat_template", tpl);
  return info;
}

}  // namespace

}  // namespace peft
