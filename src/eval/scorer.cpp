#include "peft/eval/scorer.h"

#include <algorithm>
#include <optional>

#include "peft/error.h"
#include "peft/peft-model.h"

namespace peft::eval {

Scorer scorer_of(PeftModel & model, PeftLogitsFn forward, bool disabled) {
  PeftModel * m = &model;
  Scorer s;
  s.hidden = [m, forward = std::move(forward), disabled](const at::Tensor & ids) {
    std::optional<PeftModel::DisableGuard> off;
    if (disabled) off.emplace(*m);
    PeftInput in;
    in.input_ids = ids;
    in.hidden_states = true;
    return forward(in);
  };
  s.head = [m, disabled](const at::Tensor & hidden) {
    std::optional<PeftModel::DisableGuard> off;
    if (disabled) off.emplace(*m);
    return m->base_model().logits(hidden);
  };
  return s;
}

namespace {

// The rows of hidden states that predict the masked tokens: (N, D), and those tokens (N).
std::pair<at::Tensor, at::Tensor> predictors(const Scorer & s, const at::Tensor & ids, const at::Tensor & flat) {
  const int64_t B = ids.size(0), S = ids.size(1);
  at::Tensor h = s.hidden(ids);
  PEFT_CHECK(h.dim() == 3 && h.size(0) == B && h.size(1) >= S, "the model gave hidden states of shape ", h.sizes(),
             " for token rows ", ids.sizes());
  h = h.narrow(1, h.size(1) - S, S).reshape({B * S, -1});
  return {h.index_select(0, flat - 1), ids.reshape({-1}).index_select(0, flat)};
}

}  // namespace

void score_tokens(const Scorer & model, const at::Tensor & ids, const at::Tensor & mask, Scores & out,
                  const Scorer * reference) {
  PEFT_CHECK(ids.dim() == 2 && mask.sizes() == ids.sizes(), "score_tokens takes ids (B, S) and a mask of the same "
             "shape, got ", ids.sizes(), " and ", mask.sizes());
  const at::Tensor m = mask.to(at::kBool);
  PEFT_CHECK(ids.size(1) == 0 || !m.select(1, 0).any().item<bool>(),
             "the first token of a row has nothing before it to predict it: it cannot be scored");
  at::NoGradGuard no_grad;
  // flat index b * S + t of each scored token; its predictor is the hidden state at b * S + t - 1
  const at::Tensor flat = m.reshape({-1}).nonzero().reshape({-1});
  const int64_t n = flat.numel();
  if (n == 0) return;
  const auto x = predictors(model, ids, flat);
  std::pair<at::Tensor, at::Tensor> xr;
  if (reference) xr = predictors(*reference, ids, flat);
  int64_t step = model.chunk > 0 ? model.chunk : 1;  // sized from the vocabulary after the first row
  for (int64_t s = 0, len = 0; s < n; s += len) {
    len = std::min(step, n - s);
    const at::Tensor target = x.second.narrow(0, s, len).unsqueeze(1);
    const at::Tensor lp = at::log_softmax(model.head(x.first.narrow(0, s, len)).to(at::kFloat), -1);
    const at::Tensor tok = lp.gather(1, target).reshape({-1}).to(at::kDouble).contiguous();
    out.logprob.insert(out.logprob.end(), tok.data_ptr<double>(), tok.data_ptr<double>() + len);
    if (reference) {
      const at::Tensor lr = at::log_softmax(reference->head(xr.first.narrow(0, s, len)).to(at::kFloat), -1);
      const at::Tensor rt = lr.gather(1, target).reshape({-1}).to(at::kDouble).contiguous();
      out.ref_logprob.insert(out.ref_logprob.end(), rt.data_ptr<double>(), rt.data_ptr<double>() + len);
      // KL(ref || model) = sum_v p_ref (log p_ref - log p_model), the sum in double
      const at::Tensor kl = (lr.exp() * (lr - lp)).sum(-1, false, at::kDouble).contiguous();
      out.kl.insert(out.kl.end(), kl.data_ptr<double>(), kl.data_ptr<double>() + len);
      const at::Tensor same = (lr.argmax(-1) == lp.argmax(-1)).to(at::kByte).contiguous();
      out.same_top.insert(out.same_top.end(), same.data_ptr<uint8_t>(), same.data_ptr<uint8_t>() + len);
    }
    if (model.chunk <= 0) step = loss_chunk_tokens(lp.size(-1) * (reference ? 2 : 1));
  }
}

}  // namespace peft::eval
