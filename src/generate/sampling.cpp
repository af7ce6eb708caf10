// Logits processors and sampling: logit bias, repetition penalty, temperature, min-p, top-k, top-p (vLLM's
// order; without min-p and logit bias Hugging Face's too).
#include <ATen/CPUGeneratorImpl.h>

#include "peft/error.h"
#include "peft/generate/generate.h"

namespace peft {

at::Tensor sample_next(const at::Tensor & logits_in, const std::vector<std::vector<int64_t>> & history,
                       const GenerationConfig & gen, at::Generator & rng) {
  at::Tensor logits = logits_in.to(at::kFloat).clone();  // (B, V)
  if (!gen.logit_bias.empty()) {
    auto acc = logits.accessor<float, 2>();
    for (int64_t b = 0; b < logits.size(0); ++b) {
      for (const auto & lb : gen.logit_bias) acc[b][lb.first] += lb.second;
    }
  }
  if (gen.repetition_penalty != 1.0) {
    for (int64_t b = 0; b < logits.size(0); ++b) {
      if (history[b].empty()) continue;
      at::Tensor idx = at::tensor(history[b], at::kLong);
      at::Tensor row = logits[b];
      at::Tensor s = row.index_select(0, idx);
      s = at::where(s < 0, s * gen.repetition_penalty, s / gen.repetition_penalty);
      row.index_copy_(0, idx, s);
    }
  }
  if (!gen.do_sample) return logits.argmax(-1);
  if (gen.temperature != 1.0) logits = logits / gen.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (gen.min_p > 0) {
    at::Tensor probs = at::softmax(logits, -1);
    logits = logits.masked_fill(probs < probs.amax(-1, /*keepdim=*/true) * gen.min_p, neg_inf);
  }
  if (gen.top_k > 0 && gen.top_k < logits.size(-1)) {
    at::Tensor kth = std::get<0>(logits.topk(gen.top_k, -1)).narrow(-1, gen.top_k - 1, 1);
    logits = logits.masked_fill(logits < kth, neg_inf);
  }
  if (gen.top_p < 1.0) {
    auto sorted = logits.sort(-1, /*descending=*/false);
    at::Tensor cum = at::softmax(std::get<0>(sorted), -1).cumsum(-1);
    at::Tensor remove_sorted = cum <= (1.0 - gen.top_p);
    remove_sorted.narrow(-1, remove_sorted.size(-1) - 1, 1).fill_(false);  // keep at least one token
    at::Tensor remove = remove_sorted.scatter(-1, std::get<1>(sorted), remove_sorted);
    logits = logits.masked_fill(remove, neg_inf);
  }
  at::Tensor probs = at::softmax(logits, -1);
  return at::multinomial(probs, 1, false, rng).squeeze(-1);
}

}  // namespace peft
