// Perplexity of a model over documents with a sliding window (the Hugging Face recipe, and
// lm-evaluation-harness's rolling loglikelihood when the window is the model's context): windows of
// `context` tokens every `stride` tokens, each token scored once, from the window whose end first covers
// it, with up to context - 1 tokens before it; only the tokens a document marks for the loss count (the
// completion of a prompt/completion record, the assistant turns of a chat, as training counts them).
// Beside a reference model: the KL divergence per token, its percentiles and top-token agreement
// (llama.cpp's llama-perplexity --kl-divergence).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "peft/eval/scorer.h"

namespace peft {
class Tokenizer;
class TokenDataset;
}

namespace peft::eval {

/// Token ids and, per token, whether predicting it counts.
struct Document {
  std::vector<int64_t> ids;
  std::vector<uint8_t> scored;
};
/// The documents of a dataset; `join` puts them one after another as one document (a plain text: one
/// stream, as llama-perplexity and the HF recipe read a text).
std::vector<Document> documents_of(const TokenDataset & data, bool join);

struct PerplexityOptions {
  int64_t context = 0;  // tokens per window (> 1)
  int64_t stride = 0;   // tokens between window starts (1..context; 0: context / 2)
  int64_t batch = 1;    // windows of equal length run together
};

/// Sums over the scored tokens.
struct PerplexityResult {
  int64_t documents = 0, tokens = 0, windows = 0;
  int64_t bytes = 0, words = 0;  // of the text the scored tokens decode to (a tokenizer given)
  double nll = 0, nll_sq = 0;    // sum of -log p and of its square (nats)
  double seconds = 0;
  // against a reference (tokens > 0, compared): its nll, KL(ref || model) per token, top tokens that agree
  bool compared = false;
  double ref_nll = 0;
  std::vector<double> kl;
  int64_t same_top = 0;

  double mean_nll() const;
  double perplexity() const;         // exp(mean_nll)
  double perplexity_stderr() const;  // perplexity * the standard error of mean_nll (as llama-perplexity)
  double bits_per_byte() const;      // nll / ln 2 / bytes (lm-evaluation-harness)
  double byte_perplexity() const;    // exp(nll / bytes)
  double word_perplexity() const;    // exp(nll / words)
  double ref_perplexity() const;
  double kl_mean() const;
  double kl_quantile(double q) const;  // q in [0, 1], of the per-token KL
  double same_top_fraction() const;
};

/// Perplexity of `model` over `docs` (see the top of this file). `tok`, when given, decodes the scored
/// tokens for bytes and words (whitespace-separated), the units that compare across tokenizers.
PerplexityResult perplexity(const Scorer & model, const std::vector<Document> & docs, const PerplexityOptions & opts,
                            const Tokenizer * tok = nullptr, const Scorer * reference = nullptr);

}  // namespace peft::eval
