// A file written piece by piece and made visible only whole: the pieces go to an exclusive temp file
// beside the target (mkostemp, unpredictable name); commit() fsyncs it and renames it over the target.
// Destroyed without commit() (an error on the way), the temp file is removed and the target untouched.
// For outputs too large to hold in memory (write_file_atomic in files.h takes the bytes at once).
#pragma once
#include <cstddef>
#include <string>

namespace peft {

class AtomicFile {
 public:
  /// Creates the temp file; an error names `path` when its folder is missing or not writable.
  explicit AtomicFile(const std::string & path);
  ~AtomicFile();
  AtomicFile(const AtomicFile &) = delete;
  AtomicFile & operator=(const AtomicFile &) = delete;
  void write(const char * data, size_t n);
  void write(const std::string & bytes) { write(bytes.data(), bytes.size()); }
  /// Bytes written so far.
  size_t size() const { return size_; }
  /// fsync, close, rename over the target.
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  size_t size_ = 0;
};

}  // namespace peft
