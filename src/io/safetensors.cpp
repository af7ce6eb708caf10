#include "peft/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/io/files.h"
#include "io/checkpoint-map.h"

namespace peft {

namespace {

struct DtypeName {
  const char * name;
  at::ScalarType type;
};
const DtypeName kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
    {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},    {"BOOL", at::kBool},
};

// Header lengths above this are rejected before allocating (the format's own limit is 100 MB).
constexpr uint64_t kMaxHeader = 100u * 1024u * 1024u;

}  // namespace

at::ScalarType safetensors_dtype(const std::string & name) {
  for (const auto & d : kDtypes) {
    if (name == d.name) return d.type;
  }
  fail(str("unknown safetensors dtype '", name, "'"));
}

std::string safetensors_dtype_name(at::ScalarType t) {
  for (const auto & d : kDtypes) {
    if (t == d.type) return d.name;
  }
  fail(str("dtype ", c10::toString(t), " cannot be stored in safetensors"));
}

SafeTensorsFile::SafeTensorsFile(const std::string & path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  PEFT_CHECK(fd >= 0, "cannot open safetensors file '", path, "'");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(str("cannot stat '", path, "'"));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map_ == MAP_FAILED) map_ = nullptr;
  }
  ::close(fd);
  try {
    PEFT_CHECK(size_ >= 8, path, ": truncated safetensors file (", size_, " bytes, no header length)");
    PEFT_CHECK(map_ != nullptr, path, ": cannot memory-map the file");
    const auto * bytes = static_cast<const unsigned char *>(map_);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    // (the value is not shown: an error never echoes a file's bytes, which may not be a safetensors file's)
    PEFT_CHECK(n <= kMaxHeader, path, ": not a safetensors file (its header length is implausibly large)");
    PEFT_CHECK(n <= size_ - 8, path, ": not a safetensors file, or truncated (its header length runs past the end of the file, ",
               size_, " bytes)");
    data_start_ = 8 + static_cast<size_t>(n);
    const size_t data_size = size_ - data_start_;
    // (parse_json: depth limit, and a tensor named twice is an error, not "the last one wins")
    nlohmann::json header = parse_json(reinterpret_cast<const char *>(bytes + 8),
                                       reinterpret_cast<const char *>(bytes + 8 + n), path + " (header)");
    PEFT_CHECK(header.is_object(), path, ": header is not a JSON object");
    std::vector<std::pair<size_t, size_t>> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string & key = it.key();
      const auto & v = it.value();
      if (key == "__metadata__") {
        PEFT_CHECK(v.is_object(), path, ": __metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          PEFT_CHECK(m.value().is_string(), path, ": __metadata__ value '", m.key(), "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      PEFT_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"), path,
                 ": tensor '", key, "' needs dtype, shape and data_offsets");
      PEFT_CHECK(v["dtype"].is_string(), path, ": tensor '", key, "': dtype is not a string");
      Entry e;
      try {
        e.dtype = safetensors_dtype(v["dtype"].get<std::string>());
      } catch (const Error & err) {
        fail(str(path, ": tensor '", key, "': ", err.what()));
      }
      PEFT_CHECK(v["shape"].is_array(), path, ": tensor '", key, "': shape is not an array");
      uint64_t numel = 1;
      for (const auto & d : v["shape"]) {
        PEFT_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), path, ": tensor '",
                   key, "': shape entries must be non-negative integers");
        uint64_t dim = d.get<uint64_t>();
        PEFT_CHECK(dim == 0 || numel <= UINT64_MAX / dim, path, ": tensor '", key, "': shape overflows");
        numel *= dim;
        e.shape.push_back(static_cast<int64_t>(dim));
      }
      const auto & off = v["data_offsets"];
      PEFT_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                 path, ": tensor '", key, "': data_offsets must be two non-negative integers");
      uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
      PEFT_CHECK(b <= en, path, ": tensor '", key, "': data_offsets [", b, ", ", en, "] are reversed");
      PEFT_CHECK(en <= data_size, path, ": tensor '", key, "': data_offsets [", b, ", ", en,
                 "] lie outside the data section (", data_size, " bytes; file truncated?)");
      const uint64_t esize = c10::elementSize(e.dtype);
      PEFT_CHECK(numel <= UINT64_MAX / esize && numel * esize == en - b, path, ": tensor '", key, "': ",
                 v["dtype"].get<std::string>(), " x ", v["shape"].dump(), " needs ", numel * esize,
                 " bytes but data_offsets give ", en - b);
      e.begin = static_cast<size_t>(b);
      e.end = static_cast<size_t>(en);
      ranges.emplace_back(e.begin, e.end);
      entries_.emplace(key, std::move(e));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      PEFT_CHECK(ranges[i].first >= ranges[i - 1].second, path, ": tensors overlap in the data section (bytes ",
                 ranges[i].first, " .. ", ranges[i - 1].second, ")");
    }
    // as the safetensors format requires: the tensors fill the data section, nothing unaccounted for
    size_t covered = 0;
    for (const auto & r : ranges) {
      PEFT_CHECK(r.first == covered, path, ": bytes ", covered, " .. ", r.first,
                 " of the data section belong to no tensor");
      covered = r.second;
    }
    PEFT_CHECK(covered == data_size, path, ": ", data_size - covered, " bytes after the last tensor (",
               "the file is not what its header describes)");
  } catch (...) {
    if (map_) ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafeTensorsFile::~SafeTensorsFile() {
  if (map_) ::munmap(map_, size_);
}

std::vector<std::string> SafeTensorsFile::keys() const {
  std::vector<std::string> out;
  for (const auto & kv : entries_) out.push_back(kv.first);
  return out;
}

const SafeTensorsFile::Entry & SafeTensorsFile::entry(const std::string & name) const {
  auto it = entries_.find(name);
  PEFT_CHECK(it != entries_.end(), path_, ": no tensor named '", name, "'");
  return it->second;
}

at::Tensor SafeTensorsFile::get(const std::string & name) const {
  const Entry & e = entry(name);
  at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
  if (e.end > e.begin) {
    std::memcpy(t.data_ptr(), static_cast<const char *>(map_) + data_start_ + e.begin, e.end - e.begin);
  }
  return t;
}

std::map<std::string, at::Tensor> safetensors_load(const std::string & path) {
  SafeTensorsFile f(path);
  std::map<std::string, at::Tensor> out;
  for (const auto & k : f.keys()) out[k] = f.get(k);
  return out;
}

void safetensors_save(const std::string & path, const std::map<std::string, at::Tensor> & tensors,
                      const std::map<std::string, std::string> & metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  size_t offset = 0;
  for (const auto & kv : tensors) {
    at::Tensor t = kv.second.detach().to(at::kCPU).contiguous();
    const size_t nbytes = static_cast<size_t>(t.numel()) * t.element_size();
    header[kv.first] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                        {"shape", t.sizes().vec()},
                        {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(t);
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  std::string bytes;
  bytes.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  bytes += h;
  for (const auto & t : data) bytes.append(static_cast<const char *>(t.data_ptr()), t.numel() * t.element_size());
  write_file_atomic(path, bytes);
}

namespace {

// The files of a checkpoint folder and the keys each holds (empty: all of its keys); `source` gets the file
// errors name. The shard names and the weight_map are checked here, each key's presence when it is read.
std::vector<std::pair<std::string, std::vector<std::string>>> checkpoint_files(
    const std::string & dir, std::string & source, const std::function<bool(const std::string &)> & wanted) {
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  struct stat st;
  if (::stat(single.c_str(), &st) == 0) {
    source = single;
    return {{single, {}}};
  }
  PEFT_CHECK(::stat(index.c_str(), &st) == 0, dir, ": no model.safetensors or model.safetensors.index.json");
  source = index;
  nlohmann::json j = read_json_file(index);
  PEFT_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index, ": missing 'weight_map'");
  std::map<std::string, std::vector<std::string>> by_file;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    PEFT_CHECK(it.value().is_string(), index, ": weight_map entry '", it.key(), "' is not a file name");
    const std::string f = it.value().get<std::string>();
    PEFT_CHECK(f.find('/') == std::string::npos && f.find("..") == std::string::npos, index, ": shard name '", f,
               "' must be a plain file name");
    if (!wanted || wanted(it.key())) by_file[f].push_back(it.key());
  }
  std::vector<std::pair<std::string, std::vector<std::string>>> out;
  for (auto & kv : by_file) out.emplace_back(dir + "/" + kv.first, std::move(kv.second));
  return out;
}

// The keys of `file` to read: all of them for a single file, else those the index maps to it (checked)
std::vector<std::string> keys_in(const SafeTensorsFile & f, const std::vector<std::string> & listed,
                                 const std::string & source) {
  if (listed.empty()) return f.keys();
  for (const auto & key : listed) {
    PEFT_CHECK(f.contains(key), source, ": key '", key, "' is mapped to '", f.path().substr(f.path().rfind('/') + 1),
               "' which lacks it");
  }
  return listed;
}

// A read-only mapping of a whole file, unmapped when the last view into it goes
struct FileMapping {
  void * base = nullptr;
  size_t size = 0;
  ~FileMapping() {
    if (base) ::munmap(base, size);
  }
};

// MADV_DONTNEED on the pages of [p, p + n) of a read-only private file mapping: they leave the resident set
// and are read again from the page cache if touched (rounded out to whole pages: a neighbour's page may go too)
void drop_pages(const void * p, size_t n) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n + page - 1) & ~(page - 1);
  if (hi > lo) ::madvise(reinterpret_cast<void *>(lo), hi - lo, MADV_DONTNEED);
}

std::shared_ptr<FileMapping> map_file(const std::string & path) {
  auto m = std::make_shared<FileMapping>();
  int fd = ::open(path.c_str(), O_RDONLY);
  PEFT_CHECK(fd >= 0, "cannot open safetensors file '", path, "'");
  struct stat st;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    m->size = static_cast<size_t>(st.st_size);
    m->base = ::mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m->base == MAP_FAILED) m->base = nullptr;
  }
  ::close(fd);
  PEFT_CHECK(m->base != nullptr, path, ": cannot memory-map the file");
  // read front to back, each page once: read ahead (pages used are dropped: drop_pages)
  ::madvise(m->base, m->size, MADV_SEQUENTIAL);
  return m;
}

}  // namespace

std::map<std::string, at::Tensor> checkpoint_load(const std::string & dir, std::string * source,
                                                  const std::function<bool(const std::string &)> & wanted) {
  std::string src;
  std::map<std::string, at::Tensor> tensors;
  for (const auto & [path, listed] : checkpoint_files(dir, src, wanted)) {
    SafeTensorsFile f(path);
    for (const auto & k : keys_in(f, listed, src)) {
      if (!wanted || wanted(k)) tensors[k] = f.get(k);
    }
  }
  if (source) *source = src;
  return tensors;
}

MappedCheckpoint checkpoint_map(const std::string & dir) {
  MappedCheckpoint ck;
  for (const auto & [path, listed] : checkpoint_files(dir, ck.source, {})) {
    std::vector<std::pair<std::string, SafeTensorsFile::Entry>> entries;
    {
      SafeTensorsFile f(path);  // (the header checked in full; its own mapping goes with it)
      for (const auto & k : keys_in(f, listed, ck.source)) entries.emplace_back(k, f.entry(k));
    }
    std::shared_ptr<FileMapping> m = map_file(path);
    ck.mapped.emplace_back(reinterpret_cast<uintptr_t>(m->base), reinterpret_cast<uintptr_t>(m->base) + m->size);
    PEFT_CHECK(m->size >= 8, path, ": truncated safetensors file");  // (changed since it was checked?)
    const auto * bytes = static_cast<const unsigned char *>(m->base);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    const size_t data_start = 8 + static_cast<size_t>(n);
    for (auto & [key, e] : entries) {
      PEFT_CHECK(data_start + e.end <= m->size, path, ": tensor '", key, "' lies past the end of the file (changed while loading?)");
      char * p = static_cast<char *>(m->base) + data_start + e.begin;
      // the view's last reference gone: its pages leave the resident set
      const size_t nbytes = e.end - e.begin;
      auto release = [m, p, nbytes](void *) { drop_pages(p, nbytes); };
      ck.tensors[key] = at::from_blob(p, e.shape, release, at::TensorOptions().dtype(e.dtype));
    }
  }
  return ck;
}

void MappedCheckpoint::release(const at::Tensor & part) const {
  const auto lo = reinterpret_cast<uintptr_t>(part.data_ptr()), hi = lo + part.nbytes();
  for (const auto & r : mapped) {
    if (lo >= r.first && hi <= r.second && part.is_contiguous()) drop_pages(part.data_ptr(), part.nbytes());
  }
}

}  // namespace peft
