#include "common.h"

#include <ATen/Parallel.h>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>

#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/util/runtime.h"
#include "peft/io/files.h"

namespace peft::cli {

void add_common_options(CLI::App & cmd, CommonOptions & o) {
  cmd.add_option("--threads", o.threads, "BLAS threads for matrix products (0 = all cores, at most 1024)")
      ->check(CLI::Range(0, 1024));
  cmd.add_option("--intra-op-threads", o.intra_op_threads, "LibTorch threads for element-wise ops (default 1, at most 1024)")
      ->check(CLI::Range(1, 1024));  // (100000 threads hang the process)
}

void apply_common_options(const CommonOptions & o) {
  RuntimeOptions r;
  r.blas_threads = o.threads;
  r.intra_op_threads = o.intra_op_threads;
  configure_runtime(r);
}

std::vector<std::vector<int64_t>> read_ragged_ids_json(const std::string & path) {
  nlohmann::json j = read_json_file(path);
  PEFT_CHECK(j.is_array() && !j.empty(), path, ": expected a non-empty JSON array of arrays of token ids");
  std::vector<std::vector<int64_t>> rows;
  for (size_t i = 0; i < j.size(); ++i) {
    PEFT_CHECK(j[i].is_array() && !j[i].empty(), path, ": row ", i, " is not a non-empty array of token ids");
    std::vector<int64_t> row;
    for (const auto & x : j[i]) {
      PEFT_CHECK(x.is_number_integer(), path, ": row ", i, " holds a non-integer token id ", x.dump());
      row.push_back(x.get<int64_t>());
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

at::Tensor read_ids_json(const std::string & path) { return ids_tensor(read_ragged_ids_json(path), path); }

at::Tensor ids_tensor(const std::vector<std::vector<int64_t>> & rows, const std::string & path) {
  const size_t S = rows[0].size();
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(S)}, at::kLong);
  for (size_t i = 0; i < rows.size(); ++i) {
    PEFT_CHECK(rows[i].size() == S, path, ": row ", i, " has ", rows[i].size(), " ids, row 0 has ", S,
               " (rows must have equal length)");
    for (size_t k = 0; k < S; ++k) t[i][k] = rows[i][k];
  }
  return t;
}

std::function<at::Tensor(const ForwardInput &)> make_logits_fn(PeftModel & m, bool compile) {
  if (!compile) return [&m](const ForwardInput & in) { return m.forward(in); };
  auto compiled = std::make_shared<CompiledModel>(peft::compile(m));
  return [compiled](const ForwardInput & in) { return compiled->forward(in); };
}

std::string dtype_name(at::ScalarType t) { return t == at::kBFloat16 ? "bfloat16" : "float32"; }

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

void check_ids(const std::string & path, const std::vector<std::vector<int64_t>> & rows, const ModelConfig & cfg,
               int64_t extra, bool positions_only_if_learned) {
  const bool limit = cfg.learned_positions || !positions_only_if_learned;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t len = static_cast<int64_t>(rows[i].size());
    PEFT_CHECK(!limit || len + extra <= cfg.max_position_embeddings, path, ": row ", i, " has ", len, " tokens",
               extra ? str(" (+", extra, ")") : "", ", more than the model's ", cfg.max_position_embeddings,
               " positions (max_position_embeddings)");
    for (size_t k = 0; k < rows[i].size(); ++k) {
      PEFT_CHECK(rows[i][k] >= 0 && rows[i][k] < cfg.vocab_size, path, ": row ", i, ", position ", k, ": token id ",
                 rows[i][k], " is outside the model's vocabulary [0, ", cfg.vocab_size, ")");
    }
  }
}

std::vector<std::string> given(const CLI::App & cmd, const std::vector<std::string> & flags) {
  std::vector<std::string> out;
  for (const auto & f : flags) {
    if (cmd.count(f) > 0) out.push_back(f);
  }
  return out;
}

at::ScalarType parse_dtype(const std::string & s) {
  if (s == "float32" || s == "f32") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  fail(str("--dtype must be float32 or bfloat16, got '", s, "'"));
}

}  // namespace peft::cli
