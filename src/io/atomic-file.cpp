// AtomicFile: see include/peft/io/atomic-file.h.
#include "peft/io/atomic-file.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

AtomicFile::AtomicFile(const std::string & path) : path_(path) {
  std::string tmpl = parent_of(path) + "/." + base_of(path) + ".tmp-XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  fd_ = ::mkostemp(name.data(), O_CLOEXEC);
  PEFT_CHECK(fd_ >= 0, "cannot create a temp file beside '", path, "': ", std::strerror(errno));
  tmp_ = name.data();
  ::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const char * data, size_t n) {
  PEFT_CHECK(fd_ >= 0, "'", path_, "': written after commit");
  size_t done = 0;
  while (done < n) {
    const ssize_t w = ::write(fd_, data + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    PEFT_CHECK(w >= 0, "cannot write '", path_, "': ", std::strerror(errno));
    done += static_cast<size_t>(w);
  }
  size_ += n;
}

void AtomicFile::commit() {
  PEFT_CHECK(fd_ >= 0, "'", path_, "': committed twice");
  PEFT_CHECK(::fsync(fd_) == 0, "cannot write '", path_, "': ", std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  PEFT_CHECK(::close(fd) == 0, "cannot write '", path_, "': ", std::strerror(errno));
  PEFT_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename a temp file to '", path_, "': ",
             std::strerror(errno));
  tmp_.clear();
}

}  // namespace peft
