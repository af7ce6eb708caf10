// Training adapters: the causal-LM loss, AdamW or SGD over the trainable tensors, learning-rate
// schedules with warm-up, gradient clipping and accumulation, evaluation, checkpoints that resume
// exactly, and callbacks. The forward is a function, so the same loop trains the eager model and the
// compiled one. B = batch, S = sequence, V = vocab.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "peft/data/batches.h"
#include "peft/error.h"
#include "peft/model/causal-lm.h"
#include "peft/train/loss.h"
#include "peft/util/options.h"

namespace peft {

class FolderWriter;

enum class OptimizerKind { adamw, sgd };
enum class LrScheduler { constant, linear, cosine };
inline const std::vector<std::string> & choice_names(OptimizerKind) {
  static const std::vector<std::string> names = {"adamw", "sgd"};
  return names;
}
inline const std::vector<std::string> & choice_names(LrScheduler) {
  static const std::vector<std::string> names = {"constant", "linear", "cosine"};
  return names;
}

struct TrainOptions {
  int64_t batch_size = 8;                   // sequences per micro-batch
  bool virtual_tokens = false;  // the forward puts virtual tokens first (PeftModel::virtual_token_logits() > 0):
                                // each row's first token is a target too (causal_lm_loss)
  int64_t gradient_accumulation_steps = 1;  // micro-batches per optimizer step
  int64_t steps = 100;                      // optimizer steps; 0 = from `epochs` (train())
  double epochs = 0;
  Choice<OptimizerKind> optimizer = OptimizerKind::adamw;  // adamw | sgd
  double lr = 1e-3;
  double weight_decay = 1e-2;  // LibTorch's AdamW default
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double momentum = 0;                    // sgd
  Choice<LrScheduler> lr_scheduler = LrScheduler::constant;  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double max_grad_norm = 0;  // 0 = no clipping
  // the loss from the final hidden states, this many target tokens at a time (TrainCallbacks::head makes
  // each chunk's logits; no (tokens, vocab) matrix at once): 0 = the plain loss over whole logits,
  // -1 = sized from the vocabulary (loss_chunk_tokens: about 64 MiB). Same loss and gradients.
  int64_t loss_chunk = 0;
  bool shuffle = true;
  uint64_t seed = 42;
  int64_t eval_steps = 0;      // evaluate every N steps (0: only at the end); needs eval data
  bool eval_on_start = false;  // also before the first step (logged as step 0)
  int64_t save_steps = 0;      // write a checkpoint every N steps (0: none)
  int64_t save_total_limit = 0;  // keep only the newest K checkpoints (0: all)
  std::string checkpoint_dir;    // where checkpoint-<step>/ folders go
  // data parallelism: this process is `rank` of `world_size`; each takes its slice of every global batch
  // of batch_size * world_size sequences (the last one of an epoch filled from the epoch's start)
  int rank = 0, world_size = 1;
  // resume(): fields of the run allowed to differ from the checkpoint's (resume_changeable_fields(): the
  // schedule, as transformers' Trainer lets a resumed run have more steps or another learning rate)
  std::vector<std::string> allow_changed;
};

/// The fields TrainOptions::allow_changed may name: "lr", "steps", "epochs", "lr_scheduler", "warmup_steps"
/// (the rest, batch, data, seed, optimizer, ..., decide which batches and state the run continues with).
const std::vector<std::string> & resume_changeable_fields();

/// A field in which a resumed run differs from its checkpoint, allowed by TrainOptions::allow_changed
/// (values as JSON text: "0.001", "6").
struct ResumeChange {
  std::string field, checkpoint, now;
};

/// Every check of TrainOptions on its own (OptionError naming the field as `namer` names it: "lr", or
/// the caller's words for it): positive lr, batch sizes and a step count, weight decay, betas, eps,
/// momentum, clipping and warm-up in range, a checkpoint folder for save_steps, a rank of the world.
/// The Trainer's constructor runs it; a caller may run it before any work.
void check_train_options(const TrainOptions & o, const FieldNamer & namer = {});

/// Training stopped because a step's loss or gradient norm was NaN or Inf. That step's update was not
/// applied: the parameters are those after step `step - 1`, the last good state.
class NonFiniteError : public Error {
 public:
  NonFiniteError(int64_t step, const std::string & what) : Error(what), step(step) {}
  int64_t step;
};

/// One optimizer step.
struct StepLog {
  int64_t step = 0;  // 1-based
  double loss = 0;   // computed in this step, before its update (mean over the step's counted tokens)
  double lr = 0;
  double grad_norm = 0;
  double epoch = 0;   // epochs completed after this step (fractional)
  int64_t tokens = 0;  // real tokens processed (by all ranks)
  double seconds = 0;
  double peak_rss_mb = 0;  // the process's peak resident memory (VmHWM; TrainJob starts it over when training
                           // starts, so loading's peak is not in it; 0 where unknown)
  double tokens_per_second() const { return seconds > 0 ? tokens / seconds : 0; }
};

/// One evaluation: mean token loss over the evaluation set and its exponential.
struct EvalLog {
  int64_t step = 0;
  double loss = 0;
  double perplexity = 0;
  int64_t tokens = 0;
};

struct TrainCallbacks {
  std::function<void(bool training)> set_training;          // around evaluations (dropout off)
  std::function<void(FolderWriter & folder)> save_model;     // the model's files in a checkpoint (an adapter)
  std::function<at::Tensor()> extra_loss;                    // added to the loss (AdaLoRA's orthogonal term)
  // the model's head on final hidden states (CausalLM::logits), for TrainOptions::loss_chunk: the
  // forward is then asked for hidden states (ForwardInput::hidden_states). With several ranks the head must
  // have no trainable tensor (its gradients would come before the bucketed all-reduce is prepared).
  HeadFn head;
  std::function<void(int64_t step)> after_update;            // after the update, gradients still set (AdaLoRA)
  std::function<void(const StepLog &)> on_step_end;
  std::function<void(const EvalLog &)> on_evaluate;
  std::function<void(const std::string & dir, int64_t step)> on_save;
  // data parallelism: the sum of a number over all ranks; around each backward (sync: the last
  // micro-batch of the step, whose gradients are then summed across ranks by after_backward)
  std::function<double(double)> sum_across_ranks;
  std::function<void(bool sync)> before_backward;
  std::function<void()> after_backward;
  // asked before each step of train(): true stops the run there (a signal, a time limit). With a
  // checkpoint folder, rank 0 first saves the steps done since the last checkpoint (checkpoint-<step>/),
  // so the run can be resumed. With several ranks it must answer the same on every rank.
  std::function<bool()> should_stop;
};

class Trainer {
 public:
  /// `namer`: how errors name the options' fields (check_train_options, total_steps).
  Trainer(LogitsFn forward, std::vector<at::Tensor> params, TrainOptions opts, TrainCallbacks callbacks = {},
          FieldNamer namer = {});
  ~Trainer();
  /// One optimizer step on `ids` (B, S) with optional mask (loss on every non-padding token).
  StepLog step(const at::Tensor & ids, const at::Tensor & attention_mask = {});
  /// One optimizer step over micro-batches (gradient accumulation): the loss is the mean over all
  /// their counted tokens, as if they were one batch.
  StepLog step(const std::vector<Batch> & micro_batches);
  /// Mean token loss over `data` (no gradients, training mode off through the callback).
  EvalLog evaluate(const SequenceSet & data);
  /// Train to the configured number of steps (or epochs) from the current step: evaluations,
  /// checkpoints and callbacks as configured. Call resume() first to continue from a checkpoint.
  /// Returns early (stopped() true, no final evaluation) when the should_stop callback says so.
  void train(const SequenceSet & data, const SequenceSet * eval = nullptr);
  /// The last train() ended early because should_stop answered true.
  bool stopped() const;
  /// The newest checkpoint folder this trainer wrote or resumed from ("" if none), and its step.
  const std::string & last_checkpoint() const;
  int64_t last_checkpoint_step() const;

  /// Optimizer steps of the whole run on `data` (opts.steps, or from opts.epochs). Throws an Error
  /// naming the field for a schedule that cannot run: more steps than an int64 counts exactly (a huge
  /// epochs), or more micro-batches per step than an epoch has (gradient_accumulation_steps).
  int64_t total_steps(const SequenceSet & data) const;
  int64_t global_step() const;
  double lr_at(int64_t step) const;  // 1-based step
  const TrainOptions & options() const;

  /// Write DIR/checkpoint-<step>/ whole: the model's files (callback save_model), optimizer state,
  /// RNG state and the run's position (trainer_state.json); then drop checkpoints beyond the limit.
  std::string save_checkpoint(const SequenceSet & data);
  /// Continue from a checkpoint folder written by save_checkpoint for the same run (options and data
  /// are checked against it; fields in opts.allow_changed may differ: those are returned). The model's
  /// weights are the caller's to load (it is a PEFT adapter folder).
  std::vector<ResumeChange> resume(const std::string & checkpoint, const SequenceSet & data);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// DIR's newest complete checkpoint-<step> folder ("" if none).
std::string latest_checkpoint(const std::string & dir);

}  // namespace peft
