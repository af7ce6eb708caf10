#include "peft/train/trainer.h"

#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "peft/error.h"

namespace peft {

at::Tensor causal_lm_loss(const at::Tensor & logits, const at::Tensor & ids, const at::Tensor & attention_mask) {
  const int64_t V = logits.size(-1), S = logits.size(1);
  PEFT_CHECK(S >= 2, "the loss needs sequences of at least 2 tokens");
  at::Tensor pred = logits.narrow(1, 0, S - 1).reshape({-1, V}).to(at::kFloat);
  at::Tensor target = ids.narrow(1, 1, S - 1).reshape({-1});
  if (attention_mask.defined()) {
    at::Tensor keep = attention_mask.narrow(1, 1, S - 1).reshape({-1}).to(at::kBool);
    target = target.masked_fill(keep.logical_not(), -100);
  }
  return at::cross_entropy_loss(pred, target, {}, at::Reduction::Mean, -100);
}

struct Trainer::Impl {
  LogitsFn forward;
  std::vector<at::Tensor> params;
  TrainOptions opts;
  std::unique_ptr<torch::optim::AdamW> optim;
  int64_t step = 0;
};

Trainer::Trainer(LogitsFn forward, std::vector<at::Tensor> params, TrainOptions opts) : impl_(new Impl) {
  PEFT_CHECK(!params.empty(), "nothing to train: the model has no trainable tensors");
  PEFT_CHECK(opts.lr > 0, "--lr must be > 0, got ", opts.lr);
  PEFT_CHECK(opts.batch_size > 0, "--batch-size must be > 0, got ", opts.batch_size);
  PEFT_CHECK(opts.steps > 0, "--steps must be > 0, got ", opts.steps);
  PEFT_CHECK(opts.weight_decay >= 0, "--weight-decay must be >= 0");
  PEFT_CHECK(opts.beta1 >= 0 && opts.beta1 < 1 && opts.beta2 >= 0 && opts.beta2 < 1, "--betas must be in [0, 1)");
  PEFT_CHECK(opts.eps > 0, "--eps must be > 0");
  PEFT_CHECK(opts.max_grad_norm >= 0, "--max-grad-norm must be >= 0");
  PEFT_CHECK(opts.lr_scheduler == "constant" || opts.lr_scheduler == "linear" || opts.lr_scheduler == "cosine",
             "--lr-scheduler must be constant, linear or cosine, got '", opts.lr_scheduler, "'");
  impl_->forward = std::move(forward);
  impl_->params = std::move(params);
  impl_->opts = opts;
  impl_->optim = std::make_unique<torch::optim::AdamW>(
      impl_->params, torch::optim::AdamWOptions(opts.lr)
                         .betas(std::make_tuple(opts.beta1, opts.beta2))
                         .eps(opts.eps)
                         .weight_decay(opts.weight_decay));
}

Trainer::~Trainer() = default;

double Trainer::lr_at(int64_t step) const {
  const auto & o = impl_->opts;
  if (o.warmup_steps > 0 && step <= o.warmup_steps) return o.lr * static_cast<double>(step) / o.warmup_steps;
  if (o.lr_scheduler == "constant") return o.lr;
  const double span = std::max<int64_t>(1, o.steps - o.warmup_steps);
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  if (o.lr_scheduler == "linear") return o.lr * (1.0 - t);
  return o.lr * 0.5 * (1.0 + std::cos(M_PI * t));  // cosine
}

StepLog Trainer::step(const at::Tensor & ids, const at::Tensor & attention_mask) {
  auto & I = *impl_;
  ++I.step;
  const double lr = lr_at(I.step);
  for (auto & g : I.optim->param_groups()) static_cast<torch::optim::AdamWOptions &>(g.options()).lr(lr);
  I.optim->zero_grad();
  ForwardInput in;
  in.input_ids = ids;
  in.attention_mask = attention_mask;
  at::Tensor loss = causal_lm_loss(I.forward(in), ids, attention_mask);
  loss.backward();
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
  const double loss_value = loss.item<double>();
  if (!std::isfinite(loss_value) || !std::isfinite(gnorm)) {
    // stop before the update: the parameters stay those of the last good step
    I.optim->zero_grad();
    throw NonFiniteError(I.step, str("step ", I.step, ": the ", std::isfinite(loss_value) ? "gradient norm" : "loss",
                                     " is ", std::isfinite(loss_value) ? gnorm : loss_value,
                                     "; training stopped before this step's update (learning rate ", lr,
                                     " too high? bad data?)"));
  }
  I.optim->step();
  return StepLog{I.step, loss_value, lr, gnorm};
}

std::vector<StepLog> Trainer::fit(const std::vector<std::vector<int64_t>> & rows,
                                  const std::function<void(const StepLog &)> & on_step) {
  PEFT_CHECK(!rows.empty(), "no training data");
  const auto & o = impl_->opts;
  std::mt19937_64 rng(o.seed);
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  size_t cursor = rows.size();  // forces a (re)shuffle before the first batch
  std::vector<StepLog> logs;
  for (int64_t s = 0; s < o.steps; ++s) {
    std::vector<size_t> batch;
    while (static_cast<int64_t>(batch.size()) < std::min<int64_t>(o.batch_size, rows.size())) {
      if (cursor >= rows.size()) {
        if (o.shuffle) std::shuffle(order.begin(), order.end(), rng);
        cursor = 0;
      }
      batch.push_back(order[cursor++]);
    }
    size_t len = 0;
    for (size_t i : batch) len = std::max(len, rows[i].size());
    at::Tensor ids = at::zeros({static_cast<int64_t>(batch.size()), static_cast<int64_t>(len)}, at::kLong);
    at::Tensor mask = at::zeros_like(ids);
    bool padded = false;
    for (size_t b = 0; b < batch.size(); ++b) {
      const auto & r = rows[batch[b]];
      for (size_t k = 0; k < r.size(); ++k) {
        ids[b][k] = r[k];
        mask[b][k] = 1;
      }
      padded = padded || r.size() != len;
    }
    StepLog log = step(ids, padded ? mask : at::Tensor());
    logs.push_back(log);
    if (on_step) on_step(log);
  }
  return logs;
}

}  // namespace peft
