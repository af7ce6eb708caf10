#include "peft/io/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "peft/error.h"

namespace peft {

namespace {

std::string strip_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

void fsync_path(const std::string & path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// fsync every file below `dir`, then the folders themselves
void fsync_tree(const std::string & dir) {
  DIR * d = ::opendir(dir.c_str());
  if (!d) return;
  while (dirent * e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string p = dir + "/" + name;
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) fsync_tree(p);
    else if (S_ISREG(st.st_mode)) fsync_path(p, O_RDONLY);
  }
  ::closedir(d);
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

// Hard-link into `to` every entry of `from` that `to` lacks (folders recursively): the new folder
// keeps what the old one had and this write does not replace; the old folder is left as it is.
void link_missing(const std::string & from, const std::string & to) {
  DIR * d = ::opendir(from.c_str());
  if (!d) return;
  while (dirent * e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string src = from + "/" + name, dst = to + "/" + name;
    struct stat ss, ds;
    if (::lstat(src.c_str(), &ss) != 0) continue;
    const bool exists = ::lstat(dst.c_str(), &ds) == 0;
    if (S_ISDIR(ss.st_mode)) {
      if (!exists) ::mkdir(dst.c_str(), ss.st_mode & 07777);
      if (!exists || S_ISDIR(ds.st_mode)) link_missing(src, dst);
    } else if (!exists) {
      PEFT_CHECK(::link(src.c_str(), dst.c_str()) == 0, "cannot keep '", src, "' in the new folder: ", std::strerror(errno));
    }
  }
  ::closedir(d);
}

FolderCommitObserver g_commit_observer = nullptr;

void crash_point(const char * step) {
  if (g_commit_observer != nullptr) g_commit_observer(step);
}

}  // namespace

void write_file_atomic(const std::string & path, const std::string & bytes) {
  // an exclusive temp file with an unpredictable name: a planted file or symlink cannot redirect the write
  std::string tmpl = parent_of(path) + "/." + base_of(path) + ".tmp-XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  PEFT_CHECK(fd >= 0, "cannot create a temp file beside '", path, "': ", std::strerror(errno));
  const std::string tmp(name.data());
  ::fchmod(fd, 0644);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(str("cannot write '", path, "': ", std::strerror(e)));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail(str("cannot write '", path, "': ", std::strerror(e)));
  }
  ::close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail(str("cannot rename a temp file to '", path, "': ", std::strerror(e)));
  }
}

std::string read_file(const std::string & path) {
  struct stat st;
  PEFT_CHECK(::stat(path.c_str(), &st) == 0, "cannot open '", path, "': ", std::strerror(errno));
  PEFT_CHECK(!S_ISDIR(st.st_mode), "'", path, "' is a folder, not a file");
  std::ifstream in(path, std::ios::binary);
  PEFT_CHECK(in.good(), "cannot open '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json parse_json(const char * begin, const char * end, const std::string & source) {
  // the parser callback sees every nesting step: refuse depth beyond the limit (a deeply nested file
  // would otherwise exhaust the stack when the value is destroyed) and a key given twice in one object
  std::vector<std::set<std::string>> keys;
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json & parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start || ev == E::array_start) {
      PEFT_CHECK(static_cast<size_t>(depth) < kMaxJsonDepth, source, ": JSON nested deeper than ", kMaxJsonDepth,
                 " levels");
      if (ev == E::object_start) keys.emplace_back();
    } else if (ev == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == E::key && !keys.empty()) {
      const std::string k = parsed.get<std::string>();
      PEFT_CHECK(keys.back().insert(k).second, source, ": key '", k, "' appears twice in one JSON object");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(begin, end, cb);
  } catch (const nlohmann::json::exception & e) {
    // nlohmann's message ends with the bytes it last read: left out (an error never echoes a file's bytes)
    std::string what = e.what();
    const size_t cut = what.find("; last read");
    if (cut != std::string::npos) what.resize(cut);
    fail(str(source, ": not valid JSON (", what, ")"));
  }
}

nlohmann::json parse_json(const std::string & text, const std::string & source) {
  return parse_json(text.data(), text.data() + text.size(), source);
}

nlohmann::json read_json_file(const std::string & path) {
  struct stat st;
  PEFT_CHECK(::stat(path.c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) <= kMaxJsonBytes, path, ": ",
             st.st_size, " bytes, more than the ", kMaxJsonBytes >> 20, " MiB a JSON file may have here");
  std::string text = read_file(path);
  return parse_json(text, path);
}

std::string parent_of(const std::string & path_in) {
  const std::string path = strip_slashes(path_in);
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string & path_in) {
  const std::string path = strip_slashes(path_in);
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string real_path(const std::string & path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

std::string confined_folder(const std::string & root_dir, const std::string & path) {
  const std::string root = real_path(root_dir);
  const std::string joined = !path.empty() && path[0] == '/' ? path : root_dir + "/" + path;
  const std::string real = real_path(joined);
  auto inside = [&](const std::string & p) {
    return !root.empty() && p.size() > root.size() && p.compare(0, root.size(), root) == 0 && (p[root.size()] == '/' || root == "/");
  };
  struct stat st;
  if (real.empty() || !inside(real) || ::stat(real.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return "";
  // every entry, a few levels down (an adapter folder is flat; saved multi-adapter folders nest one)
  std::vector<std::pair<std::string, int>> todo = {{real, 0}};
  size_t seen = 0;
  while (!todo.empty()) {
    auto [dir, depth] = todo.back();
    todo.pop_back();
    DIR * d = ::opendir(dir.c_str());
    if (!d) return "";
    bool ok = true;
    while (dirent * e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      const std::string r = real_path(dir + "/" + n);
      if (r.empty() || !inside(r) || ++seen > 10000) {
        ok = false;
        break;
      }
      if (::stat(r.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        if (depth >= 3) {
          ok = false;
          break;
        }
        todo.emplace_back(r, depth + 1);
      }
    }
    ::closedir(d);
    if (!ok) return "";
  }
  return real;
}

void remove_tree(const std::string & path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR * d = ::opendir(path.c_str())) {
      while (dirent * e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != "..") remove_tree(path + "/" + name);
      }
      ::closedir(d);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

// ---- FolderWriter ----

FolderWriter::FolderWriter(const std::string & target_in)
    : target_(strip_slashes(target_in)) {
  PEFT_CHECK(!target_.empty(), "output folder: an empty path is not a folder");
  const std::string parent = parent_of(target_), name = base_of(target_);
  PEFT_CHECK(name != "." && name != ".." && target_ != "/", "output folder '", target_in, "' is not a folder name");
  struct stat st;
  PEFT_CHECK(::stat(parent.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "output folder '", target_,
             "': its parent folder '", parent, "' does not exist");
  PEFT_CHECK(::access(parent.c_str(), W_OK) == 0, "output folder '", target_, "': cannot write in '", parent, "'");
  if (::lstat(target_.c_str(), &st) == 0) {
    PEFT_CHECK(S_ISDIR(st.st_mode), "output folder '", target_, "' exists and is not a folder");
  }
  // one writer at a time
  lock_path_ = parent + "/." + name + ".lock";
  lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  PEFT_CHECK(lock_fd_ >= 0, "cannot create the lock file '", lock_path_, "': ", std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    fail(str("output folder '", target_, "' is being written by another process (lock '", lock_path_, "')"));
  }
  // temp folders of killed writers of this target: nobody holds the lock, they are stale
  if (DIR * d = ::opendir(parent.c_str())) {
    const std::string tmp_prefix = "." + name + ".tmp-", old_prefix = "." + name + ".old-";
    std::vector<std::string> stale;
    while (dirent * e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.rfind(tmp_prefix, 0) == 0 || n.rfind(old_prefix, 0) == 0) stale.push_back(parent + "/" + n);
    }
    ::closedir(d);
    for (const auto & s : stale) remove_tree(s);
  }
  std::string tmpl = parent + "/." + name + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  PEFT_CHECK(::mkdtemp(buf.data()) != nullptr, "cannot create a temp folder beside '", target_, "': ",
             std::strerror(errno));
  tmp_ = buf.data();
  ::chmod(tmp_.c_str(), 0755);
}

FolderWriter::~FolderWriter() {
  if (!committed_ && !tmp_.empty()) remove_tree(tmp_);
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock (the lock file stays: removing it would race)
}

std::string FolderWriter::file(const std::string & rel) const {
  size_t pos = 0;
  while ((pos = rel.find('/', pos)) != std::string::npos) {
    ::mkdir((tmp_ + "/" + rel.substr(0, pos)).c_str(), 0755);
    ++pos;
  }
  return tmp_ + "/" + rel;
}

void set_folder_commit_observer(FolderCommitObserver observer) { g_commit_observer = observer; }

void FolderWriter::commit() {
  PEFT_CHECK(!committed_, "folder '", target_, "' committed twice");
  crash_point("folder-files-written");
  struct stat st;
  if (::lstat(target_.c_str(), &st) == 0) link_missing(target_, tmp_);
  fsync_tree(tmp_);
  crash_point("folder-before-swap");
  if (::lstat(target_.c_str(), &st) == 0) {
    // swap atomically when the kernel can (renameat2 RENAME_EXCHANGE), else move the old one aside first
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
      crash_point("folder-swapped");
      remove_tree(tmp_);  // now the old folder
    } else {
      const std::string aside = parent_of(target_) + "/." + base_of(target_) + ".old-" + base_of(tmp_).substr(base_of(tmp_).size() - 6);
      PEFT_CHECK(std::rename(target_.c_str(), aside.c_str()) == 0, "cannot move '", target_, "' aside: ",
                 std::strerror(errno));
      if (std::rename(tmp_.c_str(), target_.c_str()) != 0) {
        int e = errno;
        std::rename(aside.c_str(), target_.c_str());
        fail(str("cannot rename the new folder to '", target_, "': ", std::strerror(e)));
      }
      remove_tree(aside);
    }
  } else {
    PEFT_CHECK(std::rename(tmp_.c_str(), target_.c_str()) == 0, "cannot rename the new folder to '", target_, "': ",
               std::strerror(errno));
  }
  fsync_path(parent_of(target_), O_RDONLY | O_DIRECTORY);
  committed_ = true;
}

}  // namespace peft
