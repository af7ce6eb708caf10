// The causal-LM loss: token cross-entropy of each position's logits against the next token, from logits
// or, chunked, from the final hidden states (the head applied a few tokens at a time, so no (tokens, V)
// float32 matrix exists at once: 1 GB per 2048-token sequence at a 128k vocabulary).
// B = batch, S = sequence, V = vocab, D = hidden size.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

namespace peft {

/// Mean token cross-entropy of logits[:, :-1] (B, S, V) against ids[:, 1:]; positions whose target is
/// padding (attention_mask 0) are ignored when a mask is given. Logits longer than ids (B, n + S, V) cover
/// n virtual tokens first (prompt learning): the last of those predicts ids[:, 0], as PEFT's -100 labels
/// for the virtual tokens leave it, so all S tokens are targets.
at::Tensor causal_lm_loss(const at::Tensor & logits, const at::Tensor & ids, const at::Tensor & attention_mask = {});

/// Summed token cross-entropy of logits[:, :-1] against labels[:, 1:] (-100 = ignored), float32; longer
/// logits as in causal_lm_loss.
at::Tensor causal_lm_loss_sum(const at::Tensor & logits, const at::Tensor & labels);

/// The output head on final hidden states (..., D) -> logits (..., V) (CausalLM::logits).
using HeadFn = std::function<at::Tensor(const at::Tensor & hidden)>;

/// Tokens per chunk that keep one chunk's float32 logits, log-probabilities and their gradient within
/// about 64 MiB at this vocabulary (at least 1).
int64_t loss_chunk_tokens(int64_t vocab_size);

/// causal_lm_loss_sum over head(hidden), `chunk` target tokens at a time (chunk < 0: loss_chunk_tokens of
/// the head's vocabulary); positions without a target are skipped. When `hidden` requires a gradient,
/// the gradient of scale * sum is computed too, chunk by chunk (each chunk's logits freed before the
/// next): it reaches the head's trainable tensors at once and is returned for `hidden` (same shape), to
/// be sent through the model with hidden.backward(grad). The same loss and gradients as
/// causal_lm_loss_sum(head(hidden)), up to float rounding.
struct ChunkedLoss {
  double sum = 0;           // the summed token cross-entropy (unscaled)
  at::Tensor hidden_grad;   // d(scale * sum)/d(hidden); undefined when hidden needs no gradient
};
ChunkedLoss chunked_loss_sum(const at::Tensor & hidden, const at::Tensor & labels, const HeadFn & head, int64_t chunk,
                             double scale = 1.0);

}  // namespace peft
