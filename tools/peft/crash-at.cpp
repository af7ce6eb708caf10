// A testing hook of the CLI: PEFT_CRASH_AT=<step> kills the process with SIGKILL when a folder write reaches
// that step (io's FolderCommitObserver), so tests can check what a reader finds after a crash there (see
// tests/reliability/test-crash-consistency.cpp). "<step>:N" kills the N-th time the step is reached (e.g.
// the third checkpoint of a run). Installed before main() when the variable is set; the library's own
// I/O knows nothing of it.
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "peft/io/files.h"

namespace {

const char * g_crash_at = nullptr;

void crash_at(const char * step) {
  static int seen = 0;
  const char * colon = std::strchr(g_crash_at, ':');
  const size_t n = colon ? static_cast<size_t>(colon - g_crash_at) : std::strlen(g_crash_at);
  if (std::strlen(step) != n || std::strncmp(g_crash_at, step, n) != 0) return;
  if (++seen >= (colon ? std::atoi(colon + 1) : 1)) std::raise(SIGKILL);
}

const bool g_installed = [] {
  g_crash_at = std::getenv("PEFT_CRASH_AT");
  if (g_crash_at != nullptr) peft::set_folder_commit_observer(&crash_at);
  return true;
}();

}  // namespace
