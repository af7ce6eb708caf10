#include "peft/train/trainer.h"

#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "peft/error.h"
#include "trainer-impl.h"

namespace peft {

namespace {

// Predictions (B, T, V) and the T targets they predict: logits[:, :-1] for ids[:, 1:], or with n virtual
// tokens in front (logits (B, n + S, V)) logits[:, n-1 : n+S-1] for all S ids.
std::pair<at::Tensor, at::Tensor> aligned(const at::Tensor & logits, const at::Tensor & targets) {
  const int64_t V = logits.size(-1), S = targets.size(1), extra = logits.size(1) - S;
  PEFT_CHECK(extra >= 0, "logits cover ", logits.size(1), " positions, the labels ", S);
  if (extra > 0) return {logits.narrow(1, extra - 1, S).reshape({-1, V}).to(at::kFloat), targets.reshape({-1})};
  PEFT_CHECK(S >= 2, "the loss needs sequences of at least 2 tokens");
  return {logits.narrow(1, 0, S - 1).reshape({-1, V}).to(at::kFloat), targets.narrow(1, 1, S - 1).reshape({-1})};
}

}  // namespace

at::Tensor causal_lm_loss(const at::Tensor & logits, const at::Tensor & ids, const at::Tensor & attention_mask) {
  at::Tensor target = ids;
  if (attention_mask.defined()) target = ids.masked_fill(attention_mask.to(at::kBool).logical_not(), -100);
  auto pt = aligned(logits, target);
  return at::cross_entropy_loss(pt.first, pt.second, {}, at::Reduction::Mean, -100);
}

at::Tensor causal_lm_loss_sum(const at::Tensor & logits, const at::Tensor & labels) {
  auto pt = aligned(logits, labels);
  return at::cross_entropy_loss(pt.first, pt.second, {}, at::Reduction::Sum, -100);
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

ForwardInput input_of(const Batch & b) {
  ForwardInput in;
  in.input_ids = b.input_ids;
  in.attention_mask = b.attention_mask;
  in.position_ids = b.position_ids;
  in.segment_ids = b.segment_ids;
  return in;
}

Batch batch_of(const at::Tensor & ids, const at::Tensor & mask) {
  Batch b;
  b.input_ids = ids;
  b.attention_mask = mask;
  b.labels = mask.defined() ? ids.masked_fill(mask.to(at::kBool).logical_not(), -100) : ids;
  b.loss_tokens = (b.labels.narrow(1, 1, ids.size(1) - 1) != -100).sum().item<int64_t>();
  b.tokens = mask.defined() ? mask.sum().item<int64_t>() : ids.numel();
  return b;
}

}  // namespace

// ---- the sampler ----

int64_t Trainer::Impl::batches_per_epoch(const SequenceSet & data) const {
  const int64_t global = opts.batch_size * opts.world_size;
  return (static_cast<int64_t>(data.size()) + global - 1) / global;
}

std::vector<size_t> Trainer::Impl::micro_batch(const SequenceSet & data, int64_t m) {
  // every epoch's order follows from the seed and the epoch alone, so a resumed run needs no RNG state
  const int64_t per_epoch = batches_per_epoch(data), epoch = m / per_epoch, b = m % per_epoch;
  if (epoch != cached_epoch) {
    order.resize(data.size());
    std::iota(order.begin(), order.end(), 0);
    if (opts.shuffle) {
      std::mt19937_64 rng(opts.seed * 1000003ull + static_cast<uint64_t>(epoch));
      std::shuffle(order.begin(), order.end(), rng);
    }
    cached_epoch = epoch;
  }
  if (opts.world_size == 1) {
    const size_t begin = b * opts.batch_size, end = std::min<size_t>(order.size(), begin + opts.batch_size);
    return std::vector<size_t>(order.begin() + begin, order.begin() + end);
  }
  // this rank's slice of the global batch; every rank gets batch_size sequences (wrapping to the
  // epoch's start at its end, as accelerate's even batches), so all ranks take the same steps
  std::vector<size_t> out;
  const size_t begin = (b * opts.world_size + opts.rank) * opts.batch_size;
  for (int64_t j = 0; j < opts.batch_size; ++j) out.push_back(order[(begin + j) % order.size()]);
  return out;
}

// ---- the trainer ----

Trainer::Trainer(LogitsFn forward, std::vector<at::Tensor> params, TrainOptions opts, TrainCallbacks callbacks)
    : impl_(new Impl) {
  PEFT_CHECK(!params.empty(), "nothing to train: the model has no trainable tensors");
  PEFT_CHECK(std::isfinite(opts.lr) && opts.lr > 0, "--lr must be > 0, got ", opts.lr);
  PEFT_CHECK(opts.batch_size > 0, "--batch-size must be > 0, got ", opts.batch_size);
  PEFT_CHECK(opts.gradient_accumulation_steps > 0, "--gradient-accumulation-steps must be > 0");
  PEFT_CHECK(opts.steps > 0 || opts.epochs > 0, "--steps or --epochs must be > 0");
  PEFT_CHECK(opts.steps >= 0 && opts.epochs >= 0, "--steps and --epochs must be >= 0");
  PEFT_CHECK(opts.weight_decay >= 0, "--weight-decay must be >= 0");
  PEFT_CHECK(opts.beta1 >= 0 && opts.beta1 < 1 && opts.beta2 >= 0 && opts.beta2 < 1, "--betas must be in [0, 1)");
  PEFT_CHECK(opts.eps > 0, "--eps must be > 0");
  PEFT_CHECK(opts.momentum >= 0 && opts.momentum < 1, "--momentum must be in [0, 1)");
  PEFT_CHECK(opts.max_grad_norm >= 0, "--max-grad-norm must be >= 0");
  PEFT_CHECK(opts.warmup_steps >= 0, "--warmup-steps must be >= 0");
  PEFT_CHECK(opts.eval_steps >= 0 && opts.save_steps >= 0 && opts.save_total_limit >= 0,
             "--eval-steps, --save-steps and --save-total-limit must be >= 0");
  PEFT_CHECK(opts.save_steps == 0 || !opts.checkpoint_dir.empty(), "--save-steps needs a checkpoint folder");
  PEFT_CHECK(opts.world_size >= 1 && opts.rank >= 0 && opts.rank < opts.world_size, "rank ", opts.rank,
             " outside a world of ", opts.world_size);
  PEFT_CHECK(opts.lr_scheduler == "constant" || opts.lr_scheduler == "linear" || opts.lr_scheduler == "cosine",
             "--lr-scheduler must be constant, linear or cosine, got '", opts.lr_scheduler, "'");
  auto & I = *impl_;
  I.forward = std::move(forward);
  I.params = std::move(params);
  I.opts = opts;
  I.cb = std::move(callbacks);
  I.total = opts.steps;
  if (opts.optimizer == "adamw") {
    I.optim = std::make_unique<torch::optim::AdamW>(I.params, torch::optim::AdamWOptions(opts.lr)
                                                                  .betas(std::make_tuple(opts.beta1, opts.beta2))
                                                                  .eps(opts.eps)
                                                                  .weight_decay(opts.weight_decay));
  } else if (opts.optimizer == "sgd") {
    I.optim = std::make_unique<torch::optim::SGD>(
        I.params, torch::optim::SGDOptions(opts.lr).momentum(opts.momentum).weight_decay(opts.weight_decay));
  } else {
    fail(str("--optimizer must be adamw or sgd, got '", opts.optimizer, "'"));
  }
}

Trainer::~Trainer() = default;

const TrainOptions & Trainer::options() const { return impl_->opts; }
int64_t Trainer::global_step() const { return impl_->step; }

int64_t Trainer::total_steps(const SequenceSet & data) const {
  const auto & o = impl_->opts;
  PEFT_CHECK(data.size() > 0, "no training data");
  const int64_t per_epoch = impl_->batches_per_epoch(data), accum = o.gradient_accumulation_steps;
  // every micro-batch of a step is built before its forward: more than an epoch's would take the same
  // sequences twice in one step (and a huge value would exhaust memory before the first step)
  PEFT_CHECK(accum <= per_epoch, "--gradient-accumulation-steps ", accum, " is more than the ", per_epoch,
             " micro-batch(es) of an epoch (", data.size(), " sequences in batches of --batch-size ", o.batch_size,
             o.world_size > 1 ? str(" x ", o.world_size, " ranks") : std::string(),
             "): one optimizer step cannot take more than the whole training set");
  constexpr double kMaxMicro = 9007199254740992.0;  // 2^53: micro-batches are counted exactly
  if (o.steps > 0) {
    PEFT_CHECK(static_cast<double>(o.steps) * accum <= kMaxMicro, "--steps ", o.steps,
               " x --gradient-accumulation-steps ", accum, " micro-batches are more than this trainer can count (2^53)");
    return o.steps;
  }
  const double micro = o.epochs * per_epoch;
  PEFT_CHECK(std::isfinite(micro) && micro <= kMaxMicro, "--epochs ", o.epochs, " is too large: ", micro,
             " micro-batches of ", per_epoch, " per epoch are more than this trainer can count (2^53)");
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(micro / accum - 1e-9)));
}

bool Trainer::stopped() const { return impl_->stopped; }
const std::string & Trainer::last_checkpoint() const { return impl_->checkpoint; }
int64_t Trainer::last_checkpoint_step() const { return impl_->checkpoint_step; }

double Trainer::lr_at(int64_t step) const {
  const auto & o = impl_->opts;
  if (o.warmup_steps > 0 && step <= o.warmup_steps) return o.lr * static_cast<double>(step) / o.warmup_steps;
  if (o.lr_scheduler == "constant") return o.lr;
  const double span = std::max<int64_t>(1, impl_->total - o.warmup_steps);
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  if (o.lr_scheduler == "linear") return o.lr * (1.0 - t);
  return o.lr * 0.5 * (1.0 + std::cos(M_PI * t));  // cosine
}

StepLog Trainer::step(const at::Tensor & ids, const at::Tensor & attention_mask) {
  return step(std::vector<Batch>{batch_of(ids, attention_mask)});
}

StepLog Trainer::step(const std::vector<Batch> & micro) {
  auto & I = *impl_;
  PEFT_CHECK(!micro.empty(), "a step needs at least one batch");
  const auto t0 = Clock::now();
  ++I.step;
  const double lr = lr_at(I.step);
  for (auto & g : I.optim->param_groups()) g.options().set_lr(lr);
  I.optim->zero_grad();
  // each micro-batch's summed loss over the step's counted tokens: the gradient is that of one batch
  // (with several ranks: over the counted tokens of the global batch, gradients summed across ranks)
  double counted = 0;
  int64_t tokens = 0;
  for (const Batch & b : micro) {
    counted += b.loss_tokens;
    // virtual tokens in front: each row's first token is predicted too
    if (I.opts.virtual_tokens) counted += (b.labels.select(1, 0) != -100).sum().item<int64_t>();
    tokens += b.tokens;
  }
  if (I.cb.sum_across_ranks) {
    counted = I.cb.sum_across_ranks(counted);
    tokens = static_cast<int64_t>(I.cb.sum_across_ranks(static_cast<double>(tokens)));
  }
  const double denom = std::max(1.0, counted);
  double loss_value = 0;
  for (size_t k = 0; k < micro.size(); ++k) {
    const Batch & b = micro[k];
    at::Tensor loss = causal_lm_loss_sum(I.forward(input_of(b)), b.labels) / denom;
    if (I.cb.extra_loss) loss = loss + I.cb.extra_loss() / static_cast<double>(micro.size() * I.opts.world_size);
    if (I.cb.before_backward) I.cb.before_backward(k + 1 == micro.size());
    loss.backward();
    loss_value += loss.item<double>();
  }
  if (I.cb.after_backward) I.cb.after_backward();
  if (I.cb.sum_across_ranks) loss_value = I.cb.sum_across_ranks(loss_value);
  double gnorm = 0;
  if (I.opts.max_grad_norm > 0) {
    gnorm = torch::nn::utils::clip_grad_norm_(I.params, I.opts.max_grad_norm);
  } else {
    at::NoGradGuard g;
    for (const auto & p : I.params) {
      if (p.grad().defined()) gnorm += p.grad().pow(2).sum().item<double>();
    }
    gnorm = std::sqrt(gnorm);
  }
  if (!std::isfinite(loss_value) || !std::isfinite(gnorm)) {
    // stop before the update: the parameters stay those of the last good step
    I.optim->zero_grad();
    const int64_t failed = I.step--;
    throw NonFiniteError(failed, str("step ", failed, ": the ", std::isfinite(loss_value) ? "gradient norm" : "loss",
                                     " is ", std::isfinite(loss_value) ? gnorm : loss_value,
                                     "; training stopped before this step's update (learning rate ", lr,
                                     " too high? bad data?)"));
  }
  I.optim->step();
  if (I.cb.after_update) I.cb.after_update(I.step);
  StepLog log;
  log.step = I.step;
  log.loss = loss_value;
  log.lr = lr;
  log.grad_norm = gnorm;
  log.tokens = tokens;
  log.seconds = seconds_since(t0);
  return log;
}

EvalLog Trainer::evaluate(const SequenceSet & data) {
  auto & I = *impl_;
  if (I.cb.set_training) I.cb.set_training(false);
  double sum = 0;
  int64_t counted = 0;
  {
    at::NoGradGuard no_grad;
    // each rank evaluates every world_size-th sequence
    std::vector<size_t> mine;
    for (size_t i = I.opts.rank; i < data.size(); i += I.opts.world_size) mine.push_back(i);
    for (size_t begin = 0; begin < mine.size(); begin += I.opts.batch_size) {
      std::vector<size_t> seqs(mine.begin() + begin, mine.begin() + std::min<size_t>(mine.size(), begin + I.opts.batch_size));
      const Batch b = data.batch(seqs);
      sum += causal_lm_loss_sum(I.forward(input_of(b)), b.labels).item<double>();
      counted += b.loss_tokens;
      if (I.opts.virtual_tokens) counted += (b.labels.select(1, 0) != -100).sum().item<int64_t>();
    }
  }
  if (I.cb.sum_across_ranks) {
    sum = I.cb.sum_across_ranks(sum);
    counted = static_cast<int64_t>(I.cb.sum_across_ranks(static_cast<double>(counted)));
  }
  if (I.cb.set_training) I.cb.set_training(true);
  PEFT_CHECK(counted > 0, "the evaluation data has no token to predict");
  EvalLog e;
  e.step = I.step;
  e.loss = sum / counted;
  e.perplexity = std::exp(e.loss);
  e.tokens = counted;
  return e;
}

void Trainer::train(const SequenceSet & data, const SequenceSet * eval) {
  auto & I = *impl_;
  PEFT_CHECK(data.size() > 0, "no training data");
  I.total = total_steps(data);
  const int64_t accum = I.opts.gradient_accumulation_steps, per_epoch = I.batches_per_epoch(data);
  auto run_eval = [&] {
    if (eval == nullptr) return;
    EvalLog e = evaluate(*eval);
    if (I.cb.on_evaluate) I.cb.on_evaluate(e);
  };
  if (I.opts.eval_on_start && I.step == 0) run_eval();
  I.stopped = false;
  while (I.step < I.total) {
    if (I.cb.should_stop && I.cb.should_stop()) {
      // asked to stop (a signal): the steps since the last checkpoint are saved as one, so that
      // --resume-from-checkpoint continues exactly from here
      I.stopped = true;
      if (I.step > 0 && I.checkpoint_step != I.step && !I.opts.checkpoint_dir.empty() && I.cb.save_model &&
          I.opts.rank == 0) {
        save_checkpoint(data);
      }
      return;
    }
    std::vector<Batch> micro;
    for (int64_t k = 0; k < accum; ++k) micro.push_back(data.batch(I.micro_batch(data, I.step * accum + k)));
    StepLog log = step(micro);
    log.epoch = static_cast<double>(I.step * accum) / per_epoch;
    if (I.cb.on_step_end) I.cb.on_step_end(log);
    const bool last = I.step == I.total;
    if (I.opts.eval_steps > 0 && I.step % I.opts.eval_steps == 0 && !last) run_eval();
    if (I.opts.save_steps > 0 && I.step % I.opts.save_steps == 0 && !last && I.opts.rank == 0) save_checkpoint(data);
  }
  run_eval();
}

}  // namespace peft
