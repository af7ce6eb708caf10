// Scoring tokens: the log-probability a model gives each chosen token of token rows, the output head run a
// chunk of positions at a time from the final hidden states (no [tokens, vocab] matrix kept), and, beside
// a reference model, the KL divergence of the two next-token distributions and whether their top tokens
// agree. What `peft eval`'s perplexity, multiple choice and comparison are built on.
// B = batch, S = sequence, D = hidden size, V = vocab.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "peft/peft-model/peft-input.h"
#include "peft/train/loss.h"

namespace peft {
class PeftModel;
}

namespace peft::eval {

/// A model as evaluation sees it.
struct Scorer {
  /// Final hidden states for token rows: (B, S) int64 -> (B, n + S, D), n >= 0 positions before the
  /// tokens' own (a prompt-learning adapter's virtual tokens), which scoring skips.
  std::function<at::Tensor(const at::Tensor & ids)> hidden;
  HeadFn head;         // (N, D) -> (N, V)
  int64_t chunk = -1;  // positions per head call; -1: sized from the vocabulary (loss_chunk_tokens)
};

/// A PeftModel's scorer through `forward` (its eager forward or a compiled one: make_logits_fn), asking
/// for hidden states; the head is the model's output layer with any adapter on it. `disabled`: every
/// call runs with the adapters disabled (the base model). The model must outlive the scorer.
Scorer scorer_of(PeftModel & model, PeftLogitsFn forward, bool disabled = false);

/// Per scored token, in row-major order of the mask: log p(token | the tokens before it in its row), and
/// with a reference scorer the reference's, KL(reference || model) of the whole next-token
/// distributions (llama.cpp's --kl-divergence direction) and whether the two top tokens agree.
struct Scores {
  std::vector<double> logprob, ref_logprob, kl;
  std::vector<uint8_t> same_top;
};

/// Score ids (B, S) at the positions where `mask` (B, S) is true (position t predicts ids[b, t] from
/// ids[b, :t]; t = 0 has nothing to predict it and must not be set). Runs without gradients. Appends to
/// `out`.
void score_tokens(const Scorer & model, const at::Tensor & ids, const at::Tensor & mask, Scores & out,
                  const Scorer * reference = nullptr);

}  // namespace peft::eval
