#include "peft/train/progress.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

// ---- the JSONL log ----

TrainLog::TrainLog(const std::string & path, int64_t resume_step) : path_(path) {
  std::string kept;
  if (resume_step >= 0) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      try {
        const auto j = parse_json(line, path);
        if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= resume_step) {
          kept += line + "\n";
        }
      } catch (const Error &) {
        // a line cut by a kill: dropped
      }
    }
  }
  write_file_atomic(path, kept);
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  PEFT_CHECK(fd_ >= 0, "cannot write the log file '", path, "': ", std::strerror(errno));
}

TrainLog::~TrainLog() {
  if (fd_ >= 0) ::close(fd_);
}

void TrainLog::write_line(const std::string & line) {
  // one write per line, checked: a full disk or a file size limit is an error, not a log cut short
  const std::string text = line + "\n";
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    PEFT_CHECK(n > 0, "cannot write the log file '", path_, "': ", n < 0 ? std::strerror(errno) : "nothing written",
               " (", done, " of ", text.size(), " bytes of a line written)");
    done += static_cast<size_t>(n);
  }
}

void TrainLog::step(const StepLog & s, const nlohmann::json & extra) {
  nlohmann::json j = {{"step", s.step},        {"epoch", s.epoch},         {"loss", s.loss},
                      {"lr", s.lr},            {"grad_norm", s.grad_norm}, {"tokens_per_second", s.tokens_per_second()},
                      {"peak_rss_mb", s.peak_rss_mb}};
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  write_line(j.dump());
}

void TrainLog::eval(const EvalLog & e) {
  nlohmann::json j = {{"step", e.step}, {"eval_loss", e.loss}, {"eval_perplexity", e.perplexity}};
  write_line(j.dump());
}

// ---- the console ----

bool stderr_is_terminal() { return ::isatty(2) == 1; }

namespace {

std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  }
  return buf;
}

}  // namespace

ProgressReport::ProgressReport(int64_t total_steps, int64_t first_step, std::ostream & out, bool terminal)
    : total_(total_steps), first_(first_step), out_(out), terminal_(terminal), start_(std::chrono::steady_clock::now()) {}

void ProgressReport::clear_line() {
  if (terminal_ && drawn_) out_ << "\r\033[K";
  drawn_ = false;
}

void ProgressReport::step(const StepLog & s) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double done = static_cast<double>(s.step - first_);
  const double eta = done > 0 ? elapsed / done * (total_ - s.step) : NAN;
  char stats[160];
  std::snprintf(stats, sizeof stats, "loss %.4f lr %.2e %.0f tok/s", s.loss, s.lr, s.tokens_per_second());
  if (!terminal_) {
    out_ << "step " << s.step << "/" << total_ << " " << stats << " elapsed " << clock_text(elapsed) << "\n";
    return;
  }
  constexpr int kWidth = 24;
  const int filled = total_ > 0 ? static_cast<int>(kWidth * s.step / total_) : kWidth;
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  clear_line();
  out_ << "[" << bar << "] " << s.step << "/" << total_ << " " << clock_text(elapsed) << "<" << clock_text(eta) << " "
       << stats << std::flush;
  drawn_ = true;
}

void ProgressReport::eval(const EvalLog & e) {
  clear_line();
  char buf[128];
  std::snprintf(buf, sizeof buf, "eval at step %lld: loss %.4f perplexity %.2f", static_cast<long long>(e.step), e.loss,
                e.perplexity);
  out_ << buf << "\n" << std::flush;
}

void ProgressReport::saved(const std::string & dir) {
  clear_line();
  out_ << "saved " << dir << "\n" << std::flush;
}

void ProgressReport::finish() {
  if (terminal_ && drawn_) out_ << "\n" << std::flush;
  drawn_ = false;
}

}  // namespace peft
