#include "token-cache.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft::data_detail {

namespace {
constexpr char kMagic[8] = {'P', 'E', 'F', 'T', 'T', 'O', 'K', '1'};
constexpr uint32_t kVersion = 2;  // 2: the checksum
uint64_t padded(uint64_t n) { return (n + 3) & ~uint64_t(3); }

// A cache file cut short while mapped (rewritten in place by another program) would end the process
// with SIGBUS at the next read past its new end. The mapped caches are registered here, and a SIGBUS
// handler turns a fault inside one into an error naming the file (exit 1); any other SIGBUS gets the
// previous disposition.
struct MappedCache {
  std::atomic<bool> used{false};
  std::atomic<const uint8_t *> base{nullptr};
  std::atomic<size_t> bytes{0};
  char path[1024] = {};
};
constexpr int kMappedCaches = 64;
MappedCache g_mapped[kMappedCaches];
struct sigaction g_previous_sigbus;
std::once_flag g_sigbus_installed;

void write_stderr(const char * s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    const ssize_t w = ::write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

extern "C" void on_sigbus(int, siginfo_t * info, void *) {
  const auto * addr = static_cast<const uint8_t *>(info->si_addr);
  for (auto & m : g_mapped) {
    const uint8_t * b = m.base.load(std::memory_order_acquire);
    if (b != nullptr && addr >= b && addr < b + m.bytes.load(std::memory_order_relaxed)) {
      write_stderr("error: the token cache '");
      write_stderr(m.path);
      write_stderr("' was cut short while this run read it (changed by another program?); delete it and run again\n");
      ::_exit(1);
    }
  }
  ::sigaction(SIGBUS, &g_previous_sigbus, nullptr);  // not a cache: the fault repeats under the old disposition
}

int register_mapping(const uint8_t * base, size_t bytes, const std::string & path) {
  std::call_once(g_sigbus_installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO;
    ::sigaction(SIGBUS, &sa, &g_previous_sigbus);
  });
  for (int k = 0; k < kMappedCaches; ++k) {
    bool expected = false;
    if (!g_mapped[k].used.compare_exchange_strong(expected, true)) continue;
    std::snprintf(g_mapped[k].path, sizeof g_mapped[k].path, "%s", path.c_str());
    g_mapped[k].bytes.store(bytes, std::memory_order_relaxed);
    g_mapped[k].base.store(base, std::memory_order_release);
    return k;
  }
  return -1;  // more caches mapped at once than slots: this one is not guarded
}

void unregister_mapping(int slot) {
  if (slot < 0) return;
  g_mapped[slot].base.store(nullptr, std::memory_order_release);
  g_mapped[slot].used.store(false);
}

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
  hash_ = XXH3_createState();
  PEFT_CHECK(hash_ != nullptr && XXH3_64bits_reset(static_cast<XXH3_state_t *>(hash_)) == XXH_OK,
             "cannot start the token cache's checksum");
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
  if (hash_ != nullptr) XXH3_freeState(static_cast<XXH3_state_t *>(hash_));
}

void CacheWriter::write(const void * p, size_t n) {
  if (n == 0) return;
  PEFT_CHECK(std::fwrite(p, 1, n, f_) == n, "cannot write the token cache '", tmp_, "': ", std::strerror(errno));
  XXH3_64bits_update(static_cast<XXH3_state_t *>(hash_), p, n);
}

void CacheWriter::add(const std::vector<int32_t> & ids, const std::vector<uint8_t> & loss) {
  const uint64_t n = ids.size();
  index_.push_back(pos_);
  index_.push_back(n);
  static const uint8_t zeros[4] = {0, 0, 0, 0};
  write(ids.data(), n * sizeof(int32_t));
  write(loss.data(), n);
  write(zeros, padded(n) - n);
  pos_ += n * sizeof(int32_t) + padded(n);
  for (int32_t id : ids) h_.max_id = std::max<int64_t>(h_.max_id, id);
  h_.docs += 1;
  h_.tokens += n;
}

void CacheWriter::commit() {
  static const uint8_t zeros[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const uint64_t align = (8 - pos_ % 8) % 8;  // the index is read as uint64: 8-byte aligned
  write(zeros, align);
  pos_ += align;
  h_.index_offset = pos_;
  write(index_.data(), index_.size() * sizeof(uint64_t));
  h_.checksum = XXH3_64bits_digest(static_cast<XXH3_state_t *>(hash_));
  bool ok = std::fseek(f_, 0, SEEK_SET) == 0 && std::fwrite(&h_, sizeof h_, 1, f_) == 1;
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
  slot = register_mapping(base, bytes, path);
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
  // the size matches the header (checked above, before any byte past the header was read); the
  // checksum finds damage inside it (ids still in the vocabulary would otherwise train silently)
  ok = ok && XXH3_64bits(base + sizeof(CacheHeader), bytes - sizeof(CacheHeader)) == h.checksum;
  if (!ok) close();
  return ok;
}

void CacheMap::close() {
  unregister_mapping(slot);
  slot = -1;
  if (base != nullptr) ::munmap(const_cast<uint8_t *>(base), bytes);
  base = nullptr;
  bytes = 0;
  header = nullptr;
  index = nullptr;
}

}  // namespace peft::data_detail
