#include "peft/train/loss.h"

#include <algorithm>

#include "peft/error.h"

namespace peft {

namespace {

// Predictions (B, T, X) and the T targets they predict: x[:, :-1] for ids[:, 1:], or with n virtual tokens
// in front (x (B, n + S, X)) x[:, n-1 : n+S-1] for all S ids; as (B*T, X) and (B*T). X = V for logits,
// D for hidden states.
std::pair<at::Tensor, at::Tensor> aligned(const at::Tensor & x, const at::Tensor & targets) {
  const int64_t X = x.size(-1), S = targets.size(1), extra = x.size(1) - S;
  PEFT_CHECK(extra >= 0, "the model's output covers ", x.size(1), " positions, the labels ", S);
  if (extra > 0) return {x.narrow(1, extra - 1, S).reshape({-1, X}), targets.reshape({-1})};
  PEFT_CHECK(S >= 2, "the loss needs sequences of at least 2 tokens");
  return {x.narrow(1, 0, S - 1).reshape({-1, X}), targets.narrow(1, 1, S - 1).reshape({-1})};
}

}  // namespace

at::Tensor causal_lm_loss(const at::Tensor & logits, const at::Tensor & ids, const at::Tensor & attention_mask) {
  at::Tensor target = ids;
  if (attention_mask.defined()) target = ids.masked_fill(attention_mask.to(at::kBool).logical_not(), -100);
  auto pt = aligned(logits, target);
  return at::cross_entropy_loss(pt.first.to(at::kFloat), pt.second, {}, at::Reduction::Mean, -100);
}

at::Tensor causal_lm_loss_sum(const at::Tensor & logits, const at::Tensor & labels) {
  auto pt = aligned(logits, labels);
  return at::cross_entropy_loss(pt.first.to(at::kFloat), pt.second, {}, at::Reduction::Sum, -100);
}

int64_t loss_chunk_tokens(int64_t vocab_size) {
  // a chunk's logits, its log-softmax and the gradient of the logits: three float32 (chunk, V) tensors
  constexpr int64_t kBudget = 64ll << 20;
  return std::max<int64_t>(1, kBudget / (3 * 4 * std::max<int64_t>(1, vocab_size)));
}

ChunkedLoss chunked_loss_sum(const at::Tensor & hidden, const at::Tensor & labels, const HeadFn & head, int64_t chunk,
                             double scale) {
  PEFT_CHECK(head != nullptr, "the chunked loss needs the model's head");
  PEFT_CHECK(hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0),
             "the chunked loss takes hidden states (batch, seq, dim) and labels (batch, seq), got ", hidden.sizes(),
             " and ", labels.sizes());
  ChunkedLoss out;
  const bool grad = hidden.requires_grad() && at::GradMode::is_enabled();
  // the positions that predict (as aligned()): [offset, offset + T)
  const int64_t B = hidden.size(0), D = hidden.size(2), S = labels.size(1), extra = hidden.size(1) - S;
  PEFT_CHECK(extra >= 0, "the model's output covers ", hidden.size(1), " positions, the labels ", S);
  PEFT_CHECK(extra > 0 || S >= 2, "the loss needs sequences of at least 2 tokens");
  const int64_t offset = extra > 0 ? extra - 1 : 0, T = extra > 0 ? S : S - 1;
  const at::Tensor targets = (extra > 0 ? labels : labels.narrow(1, 1, T)).reshape({-1});
  const at::Tensor x = hidden.detach().narrow(1, offset, T).reshape({-1, D});
  const at::Tensor rows = (targets != -100).nonzero().reshape({-1});
  at::Tensor x_grad = grad ? at::zeros_like(x) : at::Tensor();
  const int64_t n = rows.numel();
  int64_t step = chunk > 0 ? chunk : 1;  // sized from the vocabulary: the first row alone tells it
  for (int64_t s = 0, len = 0; s < n; s += len) {
    len = std::min(step, n - s);
    const at::Tensor idx = rows.narrow(0, s, len);
    // the chunk's rows as a leaf: its backward stops there (and reaches the head's trainable tensors)
    const at::Tensor xc = x.index_select(0, idx).requires_grad_(grad);
    const at::Tensor logits = head(xc).to(at::kFloat);
    const at::Tensor loss = at::cross_entropy_loss(logits, targets.index_select(0, idx), {}, at::Reduction::Sum, -100);
    if (grad) {
      (loss * scale).backward();
      x_grad.index_copy_(0, idx, xc.grad());
    }
    out.sum += loss.item<double>();
    if (chunk <= 0) step = loss_chunk_tokens(logits.size(-1));
  }
  if (grad) {
    out.hidden_grad = at::zeros_like(hidden);
    out.hidden_grad.narrow(1, offset, T).copy_(x_grad.view({B, T, D}));
  }
  return out;
}

}  // namespace peft
