// The loss curve of a run: a training log (TrainLog's JSONL) drawn as a PNG by gnuplot (Debian's
// gnuplot-nox; run as a separate program): training loss and evaluation loss against the step, and
// the learning rate on a second axis.
#pragma once
#include <string>

namespace peft {

/// Draw `log_file` into `png_file` (written whole: a temp file renamed). Throws peft::Error when the
/// log has no step, or gnuplot is missing or fails.
void plot_train_log(const std::string & log_file, const std::string & png_file);

}  // namespace peft
