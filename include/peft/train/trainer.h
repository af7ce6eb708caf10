// Training adapters with a custom loop: the causal-LM loss, AdamW over the trainable tensors, an
// optional learning-rate schedule and gradient clipping. The forward is a function, so the same loop
// trains the eager model and the compiled one.
// B = batch, S = sequence, V = vocab.
#pragma once
#include "peft/error.h"
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "peft/model/causal-lm.h"

namespace peft {

/// Mean token cross-entropy of logits[:, :-1] (B, S, V) against ids[:, 1:]; positions whose target is
/// padding (attention_mask 0) are ignored when a mask is given.
at::Tensor causal_lm_loss(const at::Tensor & logits, const at::Tensor & ids, const at::Tensor & attention_mask = {});

struct TrainOptions {
  int64_t batch_size = 8;
  int64_t steps = 100;
  double lr = 1e-3;
  double weight_decay = 1e-2;  // LibTorch's AdamW default
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::string lr_scheduler = "constant";  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double max_grad_norm = 0;  // 0 = no clipping
  bool shuffle = true;
  uint64_t seed = 42;
};

/// One line of the training log.
/// Training stopped because a step's loss or gradient norm was NaN or Inf. That step's update was not
/// applied: the parameters are those after step `step - 1`, the last good state.
class NonFiniteError : public Error {
 public:
  NonFiniteError(int64_t step, const std::string & what) : Error(what), step(step) {}
  int64_t step;
};

struct StepLog {
  int64_t step;  // 1-based
  double loss;   // computed in this step, before its update
  double lr;
  double grad_norm;
};

/// AdamW training of `params` on rows of token ids (equal length; shorter rows are right-padded and
/// masked). `on_step` is called after every optimizer step.
class Trainer {
 public:
  Trainer(LogitsFn forward, std::vector<at::Tensor> params, TrainOptions opts);
  ~Trainer();
  /// One optimizer step on `ids` (B, S) with optional mask; returns the step's log line.
  StepLog step(const at::Tensor & ids, const at::Tensor & attention_mask = {});
  /// Run opts.steps steps over `rows`, batching (and shuffling) as configured.
  std::vector<StepLog> fit(const std::vector<std::vector<int64_t>> & rows, const std::function<void(const StepLog &)> & on_step = {});
  double lr_at(int64_t step) const;  // 1-based step

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft
