#include "peft/eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "peft/data/dataset.h"
#include "peft/error.h"
#include "peft/tokenizer/tokenizer.h"

namespace peft::eval {

std::vector<Document> documents_of(const TokenDataset & data, bool join) {
  std::vector<Document> out;
  for (size_t i = 0; i < data.size(); ++i) {
    const TokenDataset::Doc d = data.doc(i);
    if (!join || out.empty()) out.emplace_back();
    Document & o = out.back();
    o.ids.insert(o.ids.end(), d.ids, d.ids + d.size);
    o.scored.insert(o.scored.end(), d.loss, d.loss + d.size);
  }
  return out;
}

double PerplexityResult::mean_nll() const { return tokens > 0 ? nll / static_cast<double>(tokens) : 0.0; }
double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }
double PerplexityResult::perplexity_stderr() const {
  if (tokens < 2) return 0.0;
  const double n = static_cast<double>(tokens), mean = mean_nll();
  const double var = std::max(0.0, (nll_sq - n * mean * mean) / (n - 1));
  return perplexity() * std::sqrt(var / n);
}
double PerplexityResult::bits_per_byte() const { return bytes > 0 ? nll / std::log(2.0) / static_cast<double>(bytes) : 0.0; }
double PerplexityResult::byte_perplexity() const { return bytes > 0 ? std::exp(nll / static_cast<double>(bytes)) : 0.0; }
double PerplexityResult::word_perplexity() const { return words > 0 ? std::exp(nll / static_cast<double>(words)) : 0.0; }
double PerplexityResult::ref_perplexity() const {
  return tokens > 0 ? std::exp(ref_nll / static_cast<double>(tokens)) : 0.0;
}
double PerplexityResult::kl_mean() const {
  double s = 0;
  for (double v : kl) s += v;
  return kl.empty() ? 0.0 : s / static_cast<double>(kl.size());
}
double PerplexityResult::kl_quantile(double q) const {
  if (kl.empty()) return 0.0;
  std::vector<double> v = kl;
  std::sort(v.begin(), v.end());
  // linear interpolation between order statistics (numpy's default, as llama-perplexity's percentiles)
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}
double PerplexityResult::same_top_fraction() const {
  return kl.empty() ? 0.0 : static_cast<double>(same_top) / static_cast<double>(kl.size());
}

namespace {

struct Window {
  const Document * doc;
  int64_t begin, end, from;  // tokens [begin, end) run; [from, end) scored where the document says so
};

size_t words_in(const std::string & text) {
  size_t n = 0;
  bool in_word = false;
  for (unsigned char c : text) {
    const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

}  // namespace

PerplexityResult perplexity(const Scorer & model, const std::vector<Document> & docs, const PerplexityOptions & opts,
                            const Tokenizer * tok, const Scorer * reference) {
  PEFT_CHECK(opts.context >= 2, "the perplexity window (context) must be at least 2 tokens, got ", opts.context);
  const int64_t stride = opts.stride > 0 ? opts.stride : std::max<int64_t>(1, opts.context / 2);
  PEFT_CHECK(stride <= opts.context, "the stride (", stride, ") must not exceed the context (", opts.context, ")");
  PEFT_CHECK(opts.batch >= 1, "the batch must be at least 1 window, got ", opts.batch);
  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  r.compared = reference != nullptr;
  std::vector<Window> pending;
  Scores sc;
  auto flush = [&]() {
    if (pending.empty()) return;
    const int64_t B = static_cast<int64_t>(pending.size()), L = pending[0].end - pending[0].begin;
    at::Tensor ids = at::empty({B, L}, at::kLong), mask = at::zeros({B, L}, at::kBool);
    auto ia = ids.accessor<int64_t, 2>();
    auto ma = mask.accessor<bool, 2>();
    for (int64_t b = 0; b < B; ++b) {
      const Window & w = pending[b];
      for (int64_t t = w.begin; t < w.end; ++t) {
        ia[b][t - w.begin] = w.doc->ids[t];
        ma[b][t - w.begin] = t >= w.from && w.doc->scored[t] != 0;
      }
    }
    score_tokens(model, ids, mask, sc, reference);
    r.windows += B;
    pending.clear();
    for (size_t i = 0; i < sc.logprob.size(); ++i) {
      r.nll -= sc.logprob[i];
      r.nll_sq += sc.logprob[i] * sc.logprob[i];
    }
    r.tokens += static_cast<int64_t>(sc.logprob.size());
    for (double v : sc.ref_logprob) r.ref_nll -= v;
    r.kl.insert(r.kl.end(), sc.kl.begin(), sc.kl.end());
    for (uint8_t s : sc.same_top) r.same_top += s;
    sc = Scores();
  };
  for (const Document & d : docs) {
    PEFT_CHECK(d.scored.size() == d.ids.size(), "a document's scored flags do not match its tokens");
    const int64_t n = static_cast<int64_t>(d.ids.size());
    if (n < 2) continue;
    ++r.documents;
    for (int64_t begin = 0, prev_end = 0;;) {
      const int64_t end = std::min(begin + opts.context, n);
      const int64_t from = std::max(prev_end, begin + 1);
      bool any = false;
      for (int64_t t = from; t < end && !any; ++t) any = d.scored[t] != 0;
      if (any) {
        if (!pending.empty() && (pending[0].end - pending[0].begin != end - begin ||
                                 static_cast<int64_t>(pending.size()) == opts.batch)) {
          flush();
        }
        pending.push_back({&d, begin, end, from});
      }
      prev_end = end;
      if (end == n) break;
      // the next window starts `stride` on, and no later than the last token scored (it gives the context)
      begin = std::min(begin + stride, end - 1);
    }
    if (tok) {
      for (int64_t t = 1; t < n;) {
        if (!d.scored[t]) {
          ++t;
          continue;
        }
        int64_t e = t;
        while (e < n && d.scored[e]) ++e;
        const std::string text = tok->decode(std::vector<int64_t>(d.ids.begin() + t, d.ids.begin() + e));
        r.bytes += static_cast<int64_t>(text.size());
        r.words += static_cast<int64_t>(words_in(text));
        t = e;
      }
    }
  }
  flush();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace peft::eval
