#include "peft/train/trainer.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "peft/error.h"
#include "peft/util/runtime.h"
#include "trainer-impl.h"

namespace peft {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

ForwardInput input_of(const Batch & b, bool hidden_states) {
  ForwardInput in;
  in.hidden_states = hidden_states;
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

void check_train_options(const TrainOptions & o, const FieldNamer & namer) {
  auto n = [&](const char * field) { return field_name(namer, field); };
  PEFT_CHECK_OPTION(std::isfinite(o.lr) && o.lr > 0, n("lr"), " must be a positive number, got ", o.lr);
  PEFT_CHECK_OPTION(o.batch_size >= 1 && o.gradient_accumulation_steps >= 1,
                    field_names(namer, {"batch_size", "gradient_accumulation_steps"}), " must be >= 1");
  PEFT_CHECK_OPTION(o.steps >= 0 && std::isfinite(o.epochs) && o.epochs >= 0, field_names(namer, {"steps", "epochs"}),
                    " must be >= 0 (and finite)");
  PEFT_CHECK_OPTION(o.steps > 0 || o.epochs > 0, n("steps"), " or ", n("epochs"), " must be > 0");
  for (const auto & f : o.allow_changed) {
    const auto & ok = resume_changeable_fields();
    std::string names;
    for (const auto & k : ok) names += (names.empty() ? "" : ", ") + k;
    PEFT_CHECK_OPTION(std::find(ok.begin(), ok.end(), f) != ok.end(), n("allow_changed"), ": '", f,
                      "' cannot change on resume (fields that can: ", names, ")");
  }
  PEFT_CHECK_OPTION(o.warmup_steps >= 0 && o.max_grad_norm >= 0 && o.weight_decay >= 0 && o.eps > 0,
                    field_names(namer, {"warmup_steps", "max_grad_norm", "weight_decay"}), " must be >= 0, ", n("eps"),
                    " > 0");
  PEFT_CHECK_OPTION(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1, field_names(namer, {"beta1", "beta2"}),
                    " must be in [0, 1), got ", o.beta1, ",", o.beta2);
  PEFT_CHECK_OPTION(o.momentum >= 0 && o.momentum < 1, n("momentum"), " must be in [0, 1)");
  PEFT_CHECK_OPTION(o.eval_steps >= 0 && o.save_steps >= 0 && o.save_total_limit >= 0,
                    field_names(namer, {"eval_steps", "save_steps", "save_total_limit"}), " must be >= 0");
  PEFT_CHECK_OPTION(o.save_steps == 0 || !o.checkpoint_dir.empty(), n("save_steps"), " needs ", n("checkpoint_dir"));
  PEFT_CHECK_OPTION(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, n("rank"), " ", o.rank, " outside a ",
                    n("world_size"), " of ", o.world_size);
  PEFT_CHECK_OPTION(o.loss_chunk >= -1, n("loss_chunk"), " must be >= 1 tokens, 0 (off) or -1 (sized from the vocabulary), got ",
                    o.loss_chunk);
}

Trainer::Trainer(LogitsFn forward, std::vector<at::Tensor> params, TrainOptions opts, TrainCallbacks callbacks,
                 FieldNamer namer)
    : impl_(new Impl) {
  PEFT_CHECK(!params.empty(), "nothing to train: the model has no trainable tensors");
  check_train_options(opts, namer);
  PEFT_CHECK(opts.loss_chunk == 0 || callbacks.head != nullptr, "the chunked loss (",
             field_name(namer, "loss_chunk"), ") needs the model's head (TrainCallbacks::head)");
  auto & I = *impl_;
  I.forward = std::move(forward);
  I.params = std::move(params);
  I.opts = opts;
  I.cb = std::move(callbacks);
  I.namer = std::move(namer);
  I.total = opts.steps;
  switch (opts.optimizer.value()) {
    case OptimizerKind::adamw:
      I.optim = std::make_unique<torch::optim::AdamW>(I.params, torch::optim::AdamWOptions(opts.lr)
                                                                    .betas(std::make_tuple(opts.beta1, opts.beta2))
                                                                    .eps(opts.eps)
                                                                    .weight_decay(opts.weight_decay));
      break;
    case OptimizerKind::sgd:
      I.optim = std::make_unique<torch::optim::SGD>(
          I.params, torch::optim::SGDOptions(opts.lr).momentum(opts.momentum).weight_decay(opts.weight_decay));
      break;
  }
}

Trainer::~Trainer() = default;

const TrainOptions & Trainer::options() const { return impl_->opts; }
int64_t Trainer::global_step() const { return impl_->step; }

int64_t Trainer::total_steps(const SequenceSet & data) const {
  const auto & o = impl_->opts;
  auto n = [&](const char * field) { return field_name(impl_->namer, field); };
  PEFT_CHECK(data.size() > 0, "no training data");
  const int64_t per_epoch = impl_->batches_per_epoch(data), accum = o.gradient_accumulation_steps;
  // every micro-batch of a step is built before its forward: more than an epoch's would take the same
  // sequences twice in one step (and a huge value would exhaust memory before the first step)
  PEFT_CHECK(accum <= per_epoch, n("gradient_accumulation_steps"), " ", accum, " is more than the ", per_epoch,
             " micro-batch(es) of an epoch (", data.size(), " sequences in batches of ", n("batch_size"), " ", o.batch_size,
             o.world_size > 1 ? str(" x ", o.world_size, " ranks") : std::string(),
             "): one optimizer step cannot take more than the whole training set");
  constexpr double kMaxMicro = 9007199254740992.0;  // 2^53: micro-batches are counted exactly
  if (o.steps > 0) {
    PEFT_CHECK(static_cast<double>(o.steps) * accum <= kMaxMicro, n("steps"), " ", o.steps, " x ",
               n("gradient_accumulation_steps"), " ", accum, " micro-batches are more than this trainer can count (2^53)");
    return o.steps;
  }
  const double micro = o.epochs * per_epoch;
  PEFT_CHECK(std::isfinite(micro) && micro <= kMaxMicro, n("epochs"), " ", o.epochs, " is too large: ", micro,
             " micro-batches of ", per_epoch, " per epoch are more than this trainer can count (2^53)");
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(micro / accum - 1e-9)));
}

bool Trainer::stopped() const { return impl_->stopped; }
const std::string & Trainer::last_checkpoint() const { return impl_->checkpoint; }
int64_t Trainer::last_checkpoint_step() const { return impl_->checkpoint_step; }

double Trainer::lr_at(int64_t step) const {
  const auto & o = impl_->opts;
  if (o.warmup_steps > 0 && step <= o.warmup_steps) return o.lr * static_cast<double>(step) / o.warmup_steps;
  if (o.lr_scheduler == LrScheduler::constant) return o.lr;
  const double span = std::max<int64_t>(1, impl_->total - o.warmup_steps);
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  if (o.lr_scheduler == LrScheduler::linear) return o.lr * (1.0 - t);
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
    at::Tensor extra;
    if (I.cb.extra_loss) extra = I.cb.extra_loss() / static_cast<double>(micro.size() * I.opts.world_size);
    if (I.opts.loss_chunk != 0) {
      // the head's chunks run their backward first (into their rows of the hidden states), then the
      // model's graph once
      const at::Tensor hidden = I.forward(input_of(b, true));
      const ChunkedLoss c = chunked_loss_sum(hidden, b.labels, I.cb.head, I.opts.loss_chunk, 1.0 / denom);
      if (I.cb.before_backward) I.cb.before_backward(k + 1 == micro.size());
      // one backward for both terms (each trainable tensor's gradient hook fires once, as data parallelism needs)
      if (extra.defined()) {
        torch::autograd::backward({hidden, extra}, {c.hidden_grad, at::ones_like(extra)});
        loss_value += extra.item<double>();
      } else {
        torch::autograd::backward({hidden}, {c.hidden_grad});
      }
      loss_value += c.sum / denom;
      continue;
    }
    at::Tensor loss = causal_lm_loss_sum(I.forward(input_of(b, false)), b.labels) / denom;
    if (extra.defined()) loss = loss + extra;
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
  log.peak_rss_mb = static_cast<double>(peak_rss_bytes()) / (1 << 20);
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
      sum += I.opts.loss_chunk != 0
                 ? chunked_loss_sum(I.forward(input_of(b, true)), b.labels, I.cb.head, I.opts.loss_chunk).sum
                 : causal_lm_loss_sum(I.forward(input_of(b, false)), b.labels).item<double>();
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
      // resuming from it continues exactly from here
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
  // the last step is saved too, after its evaluation (transformers' Trainer does with a steps save
  // strategy): a finished run can be extended from it (--resume-from-checkpoint with --allow-changed steps)
  if (I.opts.save_steps > 0 && I.step > 0 && I.checkpoint_step != I.step && I.opts.rank == 0) save_checkpoint(data);
}

}  // namespace peft
