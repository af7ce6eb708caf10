// AdaLoRA's rank allocator (PEFT §2.3; upstream's RankAllocator in tuners/adalora/layer.py with
// AdaLoraModel.update_and_allocate and the regularisation of AdaLoraModel.forward, model.py): the
// sensitivity EMAs, the cubic budget schedule, masking of E and the orthogonal regularisation. It owns
// no tensors of the model: it reads the adapter's A, E, B and masks E in place (no_grad, so compiled
// graphs, which read parameters live, see it), and stores each mask as the config's rank_pattern.
#include <cmath>

#include "peft/error.h"
#include "peft/peft-model.h"
#include "peft/tuners/adalora.h"

namespace peft {

AdaLoraAllocator::AdaLoraAllocator(PeftModel & model, const std::string & adapter) : model_(model), adapter_(adapter) {
  const AdapterConfig & cfg = model.adapter_config(adapter);
  PEFT_CHECK(cfg.peft_type == "ADALORA", "AdaLoraAllocator: adapter '", adapter, "' is ", cfg.peft_type, ", not ADALORA");
  PEFT_CHECK(!cfg.inference_mode, "AdaLoraAllocator: adapter '", adapter,
             "' is not trainable (inference_mode; load it with is_trainable)");
  const auto & o = cfg.opts<AdaLoraOptions>();
  target_r_ = o.target_r;
  tinit_ = o.tinit;
  tfinal_ = o.tfinal;
  delta_t_ = o.delta_t;
  total_step_ = o.total_step;
  beta1_ = o.beta1;
  beta2_ = o.beta2;
  orth_reg_weight_ = o.orth_reg_weight;
  for (const auto & l : model.tuner_layers()) {
    auto a = std::dynamic_pointer_cast<AdaLoraLinear>(l.second);
    if (!a || !a->has_adapter(adapter)) continue;
    modules_.push_back(Module{l.first, a->lora_A(adapter), a->lora_E(adapter), a->lora_B(adapter), {}, {}});
    initial_budget_ += a->lora_E(adapter).size(0);
  }
  PEFT_CHECK(!modules_.empty(), "AdaLoraAllocator: adapter '", adapter, "' adapts no module");
  target_budget_ = target_r_ * static_cast<int64_t>(modules_.size());
  // upstream's kthvalue needs k = initial - target >= 1 at the final mask (it raises otherwise)
  PEFT_CHECK(target_budget_ < initial_budget_, "AdaLoraAllocator: the target budget (target_r ", target_r_, " x ",
             modules_.size(), " modules = ", target_budget_, ") must be below the initial one (", initial_budget_,
             " ranks): target_r must be < init_r");
  budget_ = initial_budget_;
}

// ---- regularisation ----

at::Tensor AdaLoraAllocator::orthogonal_regularization() const {
  at::Tensor sum = at::zeros({}, modules_.front().A.options());
  int64_t n = 0;
  for (const auto & m : modules_) {
    // A A^T (R, R) and B^T B (R, R) against the identity, as upstream (rows of A and columns of B orthonormal)
    for (const at::Tensor & cov : {at::matmul(m.A, m.A.t()), at::matmul(m.B.t(), m.B)}) {
      sum = sum + (cov - at::eye(cov.size(0), cov.options())).norm();  // Frobenius (at::frobenius_norm(t) is gone in 2.x)
      ++n;
    }
  }
  return sum * (orth_reg_weight_ / static_cast<double>(n));
}

// ---- the schedule ----

std::pair<int64_t, bool> AdaLoraAllocator::budget_schedule(int64_t step) const {
  if (step <= tinit_) return {initial_budget_, false};                  // warmup
  if (step > total_step_ - tfinal_) return {target_budget_, true};      // final fine-tuning
  const double mul = 1.0 - static_cast<double>(step - tinit_) / static_cast<double>(total_step_ - tfinal_ - tinit_);
  // upstream: int((init - target) * mul ** 3 + target), truncated toward zero
  const double b = static_cast<double>(initial_budget_ - target_budget_) * std::pow(mul, 3) + static_cast<double>(target_budget_);
  return {static_cast<int64_t>(b), step % delta_t_ == 0};
}

void AdaLoraAllocator::update_and_allocate(int64_t global_step) {
  const int64_t final_step = total_step_ - tfinal_;
  budget_ = budget_schedule(global_step).first;
  if (global_step < final_step) {
    update_ipt();
    if (budget_schedule(global_step).second) {
      mask_to_budget(budget_);
      store_rank_pattern();
    }
  } else if (global_step == final_step) {  // the final mask: no EMA update at this step, then the EMAs go
    mask_to_budget(budget_);
    store_rank_pattern();
    for (auto & m : modules_) {
      for (int k = 0; k < 3; ++k) m.ipt[k] = m.unc[k] = at::Tensor();
    }
  } else {
    PEFT_CHECK(!rank_pattern_.empty(), "AdaLoraAllocator: step ", global_step, " is after the final mask (step ",
               final_step, ") but no mask was ever taken; call update_and_allocate for every step from 0");
    apply_rank_pattern();
  }
}

// ---- sensitivity and masking ----

void AdaLoraAllocator::update_ipt() {
  at::NoGradGuard g;
  for (auto & m : modules_) {
    const at::Tensor * p[3] = {&m.A, &m.E, &m.B};
    for (int k = 0; k < 3; ++k) {
      const at::Tensor & grad = p[k]->grad();
      PEFT_CHECK(grad.defined(), "AdaLoraAllocator: ", m.path, ".lora_", "AEB"[k], ".", adapter_,
                 " has no gradient; call update_and_allocate after backward() and optimizer.step(), before zero_grad()");
      at::Tensor ipt = (*p[k] * grad).abs();
      if (!m.ipt[k].defined()) {
        m.ipt[k] = at::zeros_like(ipt);
        m.unc[k] = at::zeros_like(ipt);
      }
      m.ipt[k] = m.ipt[k] * beta1_ + ipt * (1 - beta1_);                         // sensitivity, smoothed
      m.unc[k] = m.unc[k] * beta2_ + (ipt - m.ipt[k]).abs() * (1 - beta2_);     // its uncertainty
    }
  }
}

void AdaLoraAllocator::mask_to_budget(int64_t budget) {
  at::NoGradGuard g;
  std::vector<at::Tensor> all;
  scores_.clear();
  for (auto & m : modules_) {
    PEFT_CHECK(m.ipt[0].defined(), "AdaLoraAllocator: no sensitivity to mask by yet (update_and_allocate must run for "
               "every step from 0)");
    const at::Tensor a = (m.ipt[0] * m.unc[0]).mean(1);  // (R): row means over A
    const at::Tensor e = (m.ipt[1] * m.unc[1]).view(-1);  // (R)
    const at::Tensor b = (m.ipt[2] * m.unc[2]).mean(0);  // (R): column means over B
    at::Tensor s = e + (a + b);
    scores_[m.path] = s;
    all.push_back(s);
  }
  const int64_t k = initial_budget_ - budget;
  threshold_ = std::get<0>(at::kthvalue(at::cat(all), k)).item<double>();
  rank_pattern_.clear();
  for (auto & m : modules_) {
    const at::Tensor masked = scores_.at(m.path) <= threshold_;
    m.E.masked_fill_(masked.view({-1, 1}), 0.0);
    const at::Tensor keep = masked.logical_not().contiguous();
    rank_pattern_[m.path + ".lora_E"] = std::vector<bool>(keep.data_ptr<bool>(), keep.data_ptr<bool>() + keep.numel());
  }
}

void AdaLoraAllocator::apply_rank_pattern() {
  at::NoGradGuard g;
  for (auto & m : modules_) {
    const auto & keep = rank_pattern_.at(m.path + ".lora_E");
    at::Tensor drop = at::empty({static_cast<int64_t>(keep.size()), 1}, at::kBool);
    for (size_t i = 0; i < keep.size(); ++i) drop[static_cast<int64_t>(i)][0] = !keep[i];
    m.E.masked_fill_(drop, 0.0);
  }
}

void AdaLoraAllocator::store_rank_pattern() {
  // upstream keeps "<module>.lora_E.<adapter>" in memory and writes the keys without the adapter name;
  // the config here holds them as written
  nlohmann::json j = nlohmann::json::object();
  for (const auto & kv : rank_pattern_) j[kv.first] = kv.second;
  model_.set_config_field(adapter_, "rank_pattern", j);
}

}  // namespace peft
