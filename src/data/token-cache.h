// The token cache file: tokenized documents written once, streaming, and read back memory-mapped.
// Layout (little-endian): a 64-byte header {magic "PEFTTOK1", version, key, documents, tokens, max id,
// index offset, checksum}, then per document its ids (int32 x n) and loss flags (uint8 x n, padded to 4
// bytes), then the index: per document (byte offset, length) as two uint64. The checksum is XXH3-64 of
// every byte after the header. Written to a temp file and renamed, so a cache file is complete or
// absent; a file that fails any check (its size against the header's offsets before any byte past the
// header is read, then the checksum) is ignored and rebuilt: a truncated or corrupted cache never
// reaches training.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace peft::data_detail {

struct CacheHeader {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t key, docs, tokens;
  int64_t max_id;
  uint64_t index_offset;
  uint64_t checksum;  // XXH3-64 of the bytes after the header (version 2)
};
static_assert(sizeof(CacheHeader) == 64, "cache header is 64 bytes");

/// Where documents go while a file is read: the cache file being written, or memory.
class DocSink {
 public:
  virtual ~DocSink() = default;
  virtual void add(const std::vector<int32_t> & ids, const std::vector<uint8_t> & loss) = 0;
};

/// Streams documents into a temp file beside `path`; commit() completes it and renames it to `path`.
class CacheWriter : public DocSink {
 public:
  CacheWriter(const std::string & path, uint64_t key);
  ~CacheWriter() override;
  void add(const std::vector<int32_t> & ids, const std::vector<uint8_t> & loss) override;
  void commit();

 private:
  std::string path_, tmp_;
  void write(const void * p, size_t n);
  FILE * f_ = nullptr;
  void * hash_ = nullptr;  // XXH3 state over the bytes after the header
  CacheHeader h_{};
  uint64_t pos_ = sizeof(CacheHeader);
  std::vector<uint64_t> index_;
};

/// A read-only memory map of a complete cache file. While mapped, a SIGBUS from reading it (the file
/// was cut short by another program) ends the process with an error naming the file, not a crash.
struct CacheMap {
  const uint8_t * base = nullptr;
  size_t bytes = 0;
  int slot = -1;  // its entry among the guarded mappings
  const CacheHeader * header = nullptr;
  const uint64_t * index = nullptr;  // 2 x docs
  /// Map `path` if it exists and is a valid cache for `key`; false otherwise (nothing mapped).
  bool open(const std::string & path, uint64_t key);
  void close();
};

}  // namespace peft::data_detail
