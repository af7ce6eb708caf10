#include "peft/data/dataset.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <cstdio>
#include <fstream>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/model/config.h"
#include "records.h"
#include "token-cache.h"

namespace peft {

using data_detail::CacheMap;
using data_detail::CacheWriter;
using data_detail::DocSink;

namespace {

constexpr const char * kReaderVersion = "peft-data-1";  // bump when tokenization of records changes

bool file_exists(const std::string & p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

uint64_t hash_bytes(const std::string & s) { return XXH3_64bits(s.data(), s.size()); }

}  // namespace

TextEncoder TextEncoder::for_model(const std::string & model_dir, const ModelConfig & cfg, bool byte_tokenizer) {
  TextEncoder e;
  e.tokenizer = std::shared_ptr<const Tokenizer>(load_tokenizer(model_dir, cfg.vocab_size, byte_tokenizer));
  const std::string tok_file = model_dir + "/tokenizer.json";
  std::string print = byte_tokenizer ? str("byte-tokenizer:", cfg.vocab_size)
                                     : str("tokenizer.json:", hash_bytes(read_file(tok_file)));
  const std::string tc_file = model_dir + "/tokenizer_config.json";
  nlohmann::json tc;
  if (file_exists(tc_file)) tc = read_json_file(tc_file);
  if (tc.is_object() && tc.contains("chat_template")) {
    try {
      e.chat = std::make_shared<const ChatTemplate>(ChatTemplate::from_model(model_dir));
      print += str(";chat:", hash_bytes(e.chat->source()));
    } catch (const std::exception & err) {
      e.chat_error = err.what();  // only an error if the data has conversations
    }
  }
  if (!cfg.eos_token_ids.empty()) {
    e.eos_id = cfg.eos_token_ids.front();
  } else if (tc.is_object() && tc.contains("eos_token")) {
    const auto & t = tc["eos_token"];
    const std::string s = t.is_string() ? t.get<std::string>() : (t.is_object() ? t.value("content", "") : "");
    e.eos_id = s.empty() ? -1 : e.tokenizer->token_id(s);
  }
  e.fingerprint = print + str(";eos:", e.eos_id);
  return e;
}

DataFormat data_format_of(const std::string & path, Choice<DataFormat> format, const std::string & field) {
  if (format != DataFormat::auto_detect) return format;
  auto ends = [&](const char * e) {
    const std::string x(e);
    return path.size() >= x.size() && path.compare(path.size() - x.size(), x.size(), x) == 0;
  };
  if (ends(".txt") || ends(".text") || ends(".md")) return DataFormat::txt;
  if (ends(".jsonl")) return DataFormat::jsonl;
  if (ends(".json")) return DataFormat::ids;
  fail(str(path, ": cannot tell the data format from the extension (.txt, .jsonl, or .json for token ids); ",
           "give ", field, " txt|jsonl|ids"));
}

// ---- TokenDataset ----

struct TokenDataset::Impl {
  std::string source, cache_file;
  uint64_t key = 0;
  bool from_cache = false;
  CacheMap map;  // mapped cache, or else the vectors below
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss;
  std::vector<uint64_t> starts{0};
  ~Impl() { map.close(); }
};

namespace {
struct MemorySink : DocSink {
  explicit MemorySink(TokenDataset::Impl & i) : impl(i) {}
  void add(const std::vector<int32_t> & ids, const std::vector<uint8_t> & loss) override {
    impl.ids.insert(impl.ids.end(), ids.begin(), ids.end());
    impl.loss.insert(impl.loss.end(), loss.begin(), loss.end());
    impl.starts.push_back(impl.ids.size());
  }
  TokenDataset::Impl & impl;
};
}  // namespace

TokenDataset::TokenDataset() : impl_(new Impl) {}
TokenDataset::~TokenDataset() = default;
TokenDataset::TokenDataset(TokenDataset &&) noexcept = default;
TokenDataset & TokenDataset::operator=(TokenDataset &&) noexcept = default;

size_t TokenDataset::size() const {
  return impl_->map.base ? impl_->map.header->docs : impl_->starts.size() - 1;
}

int64_t TokenDataset::tokens() const {
  return impl_->map.base ? static_cast<int64_t>(impl_->map.header->tokens) : static_cast<int64_t>(impl_->ids.size());
}

TokenDataset::Doc TokenDataset::doc(size_t i) const {
  const Impl & I = *impl_;
  if (I.map.base) {
    const uint64_t off = I.map.index[2 * i], n = I.map.index[2 * i + 1];
    return {reinterpret_cast<const int32_t *>(I.map.base + off), I.map.base + off + 4 * n, n};
  }
  const uint64_t s = I.starts[i];
  return {I.ids.data() + s, I.loss.data() + s, I.starts[i + 1] - s};
}

int64_t TokenDataset::max_id() const {
  if (impl_->map.base) return impl_->map.header->max_id;
  int64_t m = -1;
  for (int32_t id : impl_->ids) m = std::max<int64_t>(m, id);
  return m;
}

const std::string & TokenDataset::source() const { return impl_->source; }
uint64_t TokenDataset::key() const { return impl_->key; }
const std::string & TokenDataset::cache_file() const { return impl_->cache_file; }
bool TokenDataset::from_cache() const { return impl_->from_cache; }

TokenDataset TokenDataset::from_rows(const std::vector<std::vector<int64_t>> & rows, const std::string & source) {
  TokenDataset d;
  d.impl_->source = source;
  XXH3_state_t * st = XXH3_createState();
  XXH3_64bits_reset(st);
  for (const auto & r : rows) {
    for (int64_t id : r) {
      d.impl_->ids.push_back(static_cast<int32_t>(id));
      d.impl_->loss.push_back(1);
    }
    d.impl_->starts.push_back(d.impl_->ids.size());
    const uint64_t n = r.size();
    XXH3_64bits_update(st, &n, sizeof n);
    XXH3_64bits_update(st, r.data(), r.size() * sizeof(int64_t));
  }
  d.impl_->key = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return d;
}

TokenDataset TokenDataset::subset(const std::vector<size_t> & indices) const {
  TokenDataset d;
  d.impl_->source = impl_->source;
  MemorySink sink(*d.impl_);
  XXH3_state_t * st = XXH3_createState();
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, &impl_->key, sizeof impl_->key);
  for (size_t i : indices) {
    PEFT_CHECK(i < size(), "document ", i, " out of range");
    const Doc doc = this->doc(i);
    sink.add(std::vector<int32_t>(doc.ids, doc.ids + doc.size), std::vector<uint8_t>(doc.loss, doc.loss + doc.size));
    XXH3_64bits_update(st, &i, sizeof i);
  }
  d.impl_->key = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return d;
}

TokenDataset read_dataset(const std::string & path, const TextEncoder & enc, const DataOptions & opts) {
  const DataFormat format = data_format_of(path, opts.format);
  // the key: this reader's version, the format, the encoder, and the file's bytes
  uint64_t key = 0;
  {
    std::ifstream in(path, std::ios::binary);
    PEFT_CHECK(in.good(), "cannot read the data file '", path, "'");
    XXH3_state_t * st = XXH3_createState();
    XXH3_64bits_reset(st);
    const std::string head = str(kReaderVersion, ";", choice_name(format), ";", enc.fingerprint, ";");
    XXH3_64bits_update(st, head.data(), head.size());
    std::vector<char> buf(1 << 20);
    while (in.read(buf.data(), buf.size()) || in.gcount() > 0) XXH3_64bits_update(st, buf.data(), in.gcount());
    key = XXH3_64bits_digest(st);
    XXH3_freeState(st);
  }
  TokenDataset d;
  TokenDataset::Impl & I = *d.impl_;
  I.source = path;
  I.key = key;
  auto read_into = [&](DocSink & sink) {
    switch (format) {
      case DataFormat::txt: data_detail::read_txt(path, enc, sink); break;
      case DataFormat::jsonl: data_detail::read_jsonl(path, enc, sink); break;
      default: data_detail::read_ids(path, enc, sink); break;
    }
  };
  bool cached = false;
  if (opts.cache) {
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(key));
    const std::string cache = parent_of(path) + "/." + base_of(path) + ".peft-tokens-" + hex;
    if (I.map.open(cache, key)) {
      I.from_cache = cached = true;
    } else {
      std::unique_ptr<CacheWriter> w;
      try {
        w = std::make_unique<CacheWriter>(cache, key);
      } catch (const Error &) {
        w.reset();  // the data's folder is not writable: tokenize in memory
      }
      if (w) {
        read_into(*w);
        w->commit();
        cached = I.map.open(cache, key);
        PEFT_CHECK(cached, "the token cache '", cache, "' just written cannot be read back");
      }
    }
    if (cached) I.cache_file = cache;
  }
  if (!cached) {
    MemorySink sink(I);
    read_into(sink);
  }
  PEFT_CHECK(d.size() > 0, path, ": no documents (an empty file?)");
  return d;
}

}  // namespace peft
