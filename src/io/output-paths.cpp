// Output paths checked before any work: the one rule every command's outputs follow (an output is
// never an input, nor a folder containing one), and a writable place for each output folder and file.
#include "peft/io/output-paths.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

namespace {

std::string join(const std::string & dir, const std::string & name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

// The names one path goes by: where it sits (its real folder plus its own name: a symlink itself), what
// it resolves to (a symlink's target), and the file itself (device and inode: a hard link is the same file).
struct PathIds {
  std::string where, real;
  bool file = false;
  dev_t dev = 0;
  ino_t ino = 0;
};

PathIds ids_of(const std::string & path) {
  PathIds p;
  const std::string parent = real_path(parent_of(path));
  if (!parent.empty()) p.where = join(parent, base_of(path));
  p.real = real_path(path);
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) p.file = true, p.dev = st.st_dev, p.ino = st.st_ino;
  return p;
}

bool within(const std::string & inner, const std::string & folder) {
  return !inner.empty() && !folder.empty() && inner.rfind(join(folder, ""), 0) == 0;
}

// The inputs as named, each file directly inside an input model folder (one holding config.json: its
// weights, config, tokenizer, whatever else), and the files a loader reads from an input adapter folder
// (one holding adapter_config.json), each with the input it came from. (Other files beside an adapter
// are not: train's --out folder, listed for its other outputs, may hold its own log.)
std::vector<std::pair<std::string, std::string>> expand_inputs(const std::vector<std::string> & inputs) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto & in : inputs) {
    if (in.empty()) continue;
    out.emplace_back(in, in);
    struct stat st;
    if (::stat(in.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    if (::stat(join(in, "config.json").c_str(), &st) != 0) {
      for (const char * f : {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}) {
        if (::stat(join(in, f).c_str(), &st) == 0) out.emplace_back(join(in, f), in);
      }
      continue;
    }
    std::vector<std::string> names;
    if (DIR * d = ::opendir(in.c_str())) {
      while (dirent * e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      ::closedir(d);
    }
    for (const auto & n : names) {
      const std::string f = join(in, n);
      if (::stat(f.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) out.emplace_back(f, in);
    }
  }
  return out;
}

}  // namespace

void check_output_not_input(const std::string & flag, const std::string & out, const std::vector<std::string> & inputs) {
  const PathIds o = ids_of(out);
  for (const auto & [file, from] : expand_inputs(inputs)) {
    const PathIds i = ids_of(file);
    if (i.where.empty() && i.real.empty()) continue;  // not there: nothing to lose
    const bool same = (!o.where.empty() && (o.where == i.where || o.where == i.real)) ||
                      (!o.real.empty() && (o.real == i.where || o.real == i.real)) ||
                      (o.file && i.file && o.dev == i.dev && o.ino == i.ino);
    const std::string what = file == from ? str("'", from, "'") : str("'", file, "', in '", from, "'");
    PEFT_CHECK(!same, flag, " '", out, "' is an input of this command (", what, "): it would be overwritten");
    const bool contains = within(i.where, o.where) || within(i.real, o.where) || within(i.where, o.real) ||
                          within(i.real, o.real);
    PEFT_CHECK(!contains, flag, " '", out, "' contains an input of this command (", what,
               "): replacing it could lose that input");
  }
}

namespace {

void check_output(const std::string & flag, const std::string & out, const std::vector<std::string> & inputs,
                  bool folder) {
  PEFT_CHECK(!out.empty(), flag, ": an empty path");
  const std::string parent = parent_of(out), name = base_of(out);
  PEFT_CHECK(out != "/" && name != "." && name != "..", flag, " '", out, "' is not a ", folder ? "folder" : "file",
             " name");
  struct stat st;
  PEFT_CHECK(::stat(parent.c_str(), &st) == 0 && S_ISDIR(st.st_mode), flag, " '", out, "': the folder '", parent,
             "' does not exist");
  PEFT_CHECK(::access(parent.c_str(), W_OK) == 0, flag, " '", out, "': cannot write in '", parent, "'");
  if (::stat(out.c_str(), &st) == 0) {
    if (folder) PEFT_CHECK(S_ISDIR(st.st_mode), flag, " '", out, "' exists and is a file, not a folder");
    else PEFT_CHECK(!S_ISDIR(st.st_mode), flag, " '", out, "' is a folder, not a file");
  }
  check_output_not_input(flag, out, inputs);
}

}  // namespace

void check_output_folder(const std::string & flag, const std::string & out, const std::vector<std::string> & inputs) {
  check_output(flag, out, inputs, true);
}

void check_output_file(const std::string & flag, const std::string & out, const std::vector<std::string> & inputs) {
  check_output(flag, out, inputs, false);
}

}  // namespace peft
