// The Trainer's state, shared by the loop (trainer.cpp) and its checkpoints (checkpoint.cpp).
#pragma once
#include <torch/optim/optimizer.h>

#include <memory>
#include <vector>

#include "peft/train/trainer.h"

namespace peft {

struct Trainer::Impl {
  LogitsFn forward;
  std::vector<at::Tensor> params;
  TrainOptions opts;
  TrainCallbacks cb;
  FieldNamer namer;  // how errors name the options' fields
  std::unique_ptr<torch::optim::Optimizer> optim;
  int64_t step = 0;          // optimizer steps done
  int64_t total = 0;         // steps of the whole run (lr schedule); opts.steps until train() knows the data
  bool stopped = false;      // the last train() was stopped by should_stop
  std::string checkpoint;    // the newest checkpoint written or resumed from, at step checkpoint_step
  int64_t checkpoint_step = -1;
  // the sampler: micro-batch m of the run is batch (m % per_epoch) of epoch (m / per_epoch)
  int64_t cached_epoch = -1;
  std::vector<size_t> order;
  int64_t batches_per_epoch(const SequenceSet & data) const;
  std::vector<size_t> micro_batch(const SequenceSet & data, int64_t m);
  /// What must match between a run and a checkpoint it resumes from.
  nlohmann::json fingerprint(const SequenceSet & data) const;
};

}  // namespace peft
