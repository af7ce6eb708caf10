// Reporting a training run: the JSONL log (one object per optimizer step, one per evaluation) and the
// console (a progress bar redrawn in place on a terminal, plain lines otherwise).
#pragma once
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <ostream>
#include <string>

#include "peft/train/trainer.h"

namespace peft {

/// The run's log: {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_second"} per step and
/// {"step", "eval_loss", "eval_perplexity"} per evaluation, written line by line. A line that cannot be
/// written whole (a full disk, a file size limit) throws an Error naming the file: a log is never cut
/// silently.
class TrainLog {
 public:
  /// resume_step < 0: a new log (the file is replaced). Otherwise the existing log keeps its lines up
  /// to that step and continues after them (a resumed run).
  explicit TrainLog(const std::string & path, int64_t resume_step = -1);
  ~TrainLog();
  TrainLog(const TrainLog &) = delete;
  TrainLog & operator=(const TrainLog &) = delete;
  /// `extra`: more fields for this step's line (the all-reduce wait of a data-parallel run).
  void step(const StepLog & s, const nlohmann::json & extra = nlohmann::json::object());
  void eval(const EvalLog & e);

 private:
  void write_line(const std::string & line);
  std::string path_;
  int fd_ = -1;
};

/// The console: on a terminal `[#####.....] 120/300 00:42<01:03 loss 2.31 lr 1.2e-04 5120 tok/s`
/// redrawn in place; otherwise one line per step. Evaluations and checkpoints print a line each.
class ProgressReport {
 public:
  ProgressReport(int64_t total_steps, int64_t first_step, std::ostream & out, bool terminal);
  void step(const StepLog & s);
  void eval(const EvalLog & e);
  void saved(const std::string & dir);
  void finish();

 private:
  void clear_line();
  int64_t total_, first_;
  std::ostream & out_;
  bool terminal_, drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

/// Whether stderr is a terminal.
bool stderr_is_terminal();

}  // namespace peft
