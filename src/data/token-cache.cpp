#include "token-cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft::data_detail {

namespace {
constexpr char kMagic[8] = {'P', 'E', 'F', 'T', 'T', 'O', 'K', '1'};
constexpr uint32_t kVersion = 1;
uint64_t padded(uint64_t n) { return (n + 3) & ~uint64_t(3); }
}  // namespace

CacheWriter::CacheWriter(const std::string & path, uint64_t key) : path_(path) {
  tmp_ = path + ".tmp-XXXXXX";
  std::vector<char> name(tmp_.begin(), tmp_.end());
  name.push_back('\0');
  const int fd = ::mkostemp(name.data(), O_CLOEXEC);
  PEFT_CHECK(fd >= 0, "cannot create the token cache '", tmp_, "': ", std::strerror(errno));
  tmp_ = name.data();
  ::fchmod(fd, 0644);  // a cache, readable like the data beside it
  f_ = ::fdopen(fd, "wb");
  PEFT_CHECK(f_ != nullptr, "cannot open the token cache '", tmp_, "'");
  std::memcpy(h_.magic, kMagic, 8);
  h_.version = kVersion;
  h_.key = key;
  h_.max_id = -1;
  PEFT_CHECK(std::fwrite(&h_, sizeof h_, 1, f_) == 1, "cannot write the token cache '", tmp_, "'");
}

CacheWriter::~CacheWriter() {
  if (f_ != nullptr) {
    std::fclose(f_);
    ::unlink(tmp_.c_str());
  }
}

void CacheWriter::add(const std::vector<int32_t> & ids, const std::vector<uint8_t> & loss) {
  const uint64_t n = ids.size();
  index_.push_back(pos_);
  index_.push_back(n);
  bool ok = std::fwrite(ids.data(), sizeof(int32_t), n, f_) == n && std::fwrite(loss.data(), 1, n, f_) == n;
  static const uint8_t zeros[4] = {0, 0, 0, 0};
  ok = ok && std::fwrite(zeros, 1, padded(n) - n, f_) == padded(n) - n;
  PEFT_CHECK(ok, "cannot write the token cache '", tmp_, "' (disk full?)");
  pos_ += n * sizeof(int32_t) + padded(n);
  for (int32_t id : ids) h_.max_id = std::max<int64_t>(h_.max_id, id);
  h_.docs += 1;
  h_.tokens += n;
}

void CacheWriter::commit() {
  static const uint8_t zeros[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const uint64_t align = (8 - pos_ % 8) % 8;  // the index is read as uint64: 8-byte aligned
  bool ok = std::fwrite(zeros, 1, align, f_) == align;
  pos_ += align;
  h_.index_offset = pos_;
  ok = ok && std::fwrite(index_.data(), sizeof(uint64_t), index_.size(), f_) == index_.size();
  ok = ok && std::fseek(f_, 0, SEEK_SET) == 0 && std::fwrite(&h_, sizeof h_, 1, f_) == 1;
  ok = ok && std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  ok = (std::fclose(f_) == 0) && ok;
  f_ = nullptr;
  if (!ok || ::rename(tmp_.c_str(), path_.c_str()) != 0) {
    ::unlink(tmp_.c_str());
    fail(str("cannot write the token cache '", path_, "': ", std::strerror(errno)));
  }
}

bool CacheMap::open(const std::string & path, uint64_t key) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  if (::fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(CacheHeader))) {
    ::close(fd);
    return false;
  }
  void * p = ::mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return false;
  base = static_cast<const uint8_t *>(p);
  bytes = st.st_size;
  header = reinterpret_cast<const CacheHeader *>(base);
  const CacheHeader & h = *header;
  // every offset is checked, so a damaged file is rebuilt rather than read out of bounds
  bool ok = std::memcmp(h.magic, kMagic, 8) == 0 && h.version == kVersion && h.key == key &&
            h.index_offset >= sizeof(CacheHeader) && h.index_offset <= bytes && h.index_offset % 8 == 0 &&
            h.docs <= (bytes - h.index_offset) / 16 && h.index_offset + h.docs * 16 == bytes;
  if (ok) {
    index = reinterpret_cast<const uint64_t *>(base + h.index_offset);
    uint64_t tokens = 0;
    for (uint64_t d = 0; ok && d < h.docs; ++d) {
      const uint64_t off = index[2 * d], n = index[2 * d + 1];
      ok = off >= sizeof(CacheHeader) && off % 4 == 0 && n <= h.index_offset && off <= h.index_offset &&
           n * 4 + padded(n) <= h.index_offset - off;
      tokens += n;
    }
    ok = ok && tokens == h.tokens;
  }
  if (!ok) close();
  return ok;
}

void CacheMap::close() {
  if (base != nullptr) ::munmap(const_cast<uint8_t *>(base), bytes);
  base = nullptr;
  bytes = 0;
  header = nullptr;
  index = nullptr;
}

}  // namespace peft::data_detail
