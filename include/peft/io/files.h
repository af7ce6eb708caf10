// Reading files with limits, and writing them so that a crash never leaves a half-written one.
//  - a single file: written to an exclusive temp file beside the target (O_EXCL, unpredictable name),
//    fsynced, renamed over the target;
//  - a folder (an adapter, a checkpoint, a merged model): FolderWriter writes it whole in a fresh temp
//    folder beside the target and swaps it into place, so a reader sees the old folder or the new one.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace peft {

/// Nesting limit of every JSON file read (configs, tokenizers, headers, data): deeper is an error.
constexpr size_t kMaxJsonDepth = 256;
/// Size limit of a JSON file read with read_json_file (tokenizer.json files are tens of MB).
constexpr uint64_t kMaxJsonBytes = 512ull << 20;

/// Write `bytes` to `path` atomically. Throws peft::Error naming the path on failure.
void write_file_atomic(const std::string & path, const std::string & bytes);

/// Read a whole file; throws peft::Error naming the path if it cannot be read.
std::string read_file(const std::string & path);

/// Parse JSON from `source` (named in errors): at most kMaxJsonDepth levels, no key twice in an object.
nlohmann::json parse_json(const char * begin, const char * end, const std::string & source);
nlohmann::json parse_json(const std::string & text, const std::string & source);

/// Read and parse a JSON file (parse_json); errors name the path.
nlohmann::json read_json_file(const std::string & path);

/// The folder part of a path ("." for a bare name) and its last component (trailing '/' ignored).
std::string parent_of(const std::string & path);
std::string base_of(const std::string & path);

/// The canonical absolute path of an existing file or folder ("" if it does not exist).
std::string real_path(const std::string & path);

/// The real path of the folder `path` (relative to `root`, or absolute) if it lies inside `root` and so
/// does every entry below it (a few levels deep) after following symlinks; "" otherwise -- whether it is
/// outside, missing or not a folder (one answer: no oracle of what exists elsewhere).
std::string confined_folder(const std::string & root, const std::string & path);

/// Called with the name of each step of FolderWriter::commit as it is reached ("folder-files-written",
/// "folder-before-swap", "folder-swapped"); null (the default): nothing. Tests use it to kill a writer at a
/// chosen step (the CLI's PEFT_CRASH_AT, tools/peft/crash-at.cpp). Set it before any writer runs.
using FolderCommitObserver = void (*)(const char * step);
void set_folder_commit_observer(FolderCommitObserver observer);

/// Writes the folder `target` as a whole. Files go into path(), a fresh folder beside the target
/// (mkdtemp, ".<name>.tmp-XXXXXX"); commit() fsyncs them and swaps the folder into place (the previous
/// folder is moved aside and removed only after), so readers see the old or the new folder, never a
/// mix. Entries of an existing target that the new folder does not write are kept (hard-linked into
/// the new one), so saving one adapter never deletes another's files. An advisory lock (".<name>.lock" beside the target) is held from construction to the end: a
/// second writer of the same target fails at once with a clear message. Temp folders left by a killed
/// writer are removed by the next one. Destroyed without commit(): the temp folder is removed and the
/// target is untouched.
class FolderWriter {
 public:
  /// Refuses an empty path, "/", a missing or unwritable parent, a target that is not a folder.
  explicit FolderWriter(const std::string & target);
  ~FolderWriter();
  FolderWriter(const FolderWriter &) = delete;
  FolderWriter & operator=(const FolderWriter &) = delete;

  /// The temp folder to write into.
  const std::string & path() const { return tmp_; }
  /// path()/rel, creating the sub-folders of `rel`.
  std::string file(const std::string & rel) const;
  /// Make the new folder the target.
  void commit();

 private:
  std::string target_, tmp_, lock_path_;
  int lock_fd_ = -1;
  bool committed_ = false;
};

/// Remove a file or a folder tree (no error if it does not exist).
void remove_tree(const std::string & path);

}  // namespace peft
