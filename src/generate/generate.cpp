#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "peft/error.h"
#include "peft/generate/generate.h"

namespace peft {

std::vector<std::vector<int64_t>> generate(const LogitsFn & forward, const ModelConfig & cfg, at::TensorOptions cache_opts,
                                           const std::vector<std::vector<int64_t>> & prompts, const GenerationConfig & gen,
                                           const std::function<void(size_t, int64_t)> & on_token,
                                           const std::function<std::string(const std::vector<int64_t> &)> & decode) {
  PEFT_CHECK(!prompts.empty(), "generate: no prompts");
  PEFT_CHECK(gen.max_new_tokens >= 0, "max_new_tokens must be >= 0");
  PEFT_CHECK(gen.temperature > 0, "temperature must be > 0");
  PEFT_CHECK(gen.top_p > 0 && gen.top_p <= 1, "top_p must be in (0, 1]");
  PEFT_CHECK(gen.top_k >= 0, "top_k must be >= 0");
  PEFT_CHECK(gen.repetition_penalty > 0, "repetition_penalty must be > 0");
  PEFT_CHECK(gen.stop_strings.empty() || decode, "stop strings need a tokenizer to decode with");
  at::NoGradGuard no_grad;
  const int64_t B = prompts.size();
  int64_t P = 0;
  for (const auto & p : prompts) {
    PEFT_CHECK(!p.empty(), "generate: empty prompt");
    P = std::max<int64_t>(P, p.size());
  }
  // positions beyond the model's are out of range for learned embeddings and untrained for rotary ones
  const int64_t vt = gen.virtual_tokens;
  PEFT_CHECK(vt >= 0 && (vt == 0 || !gen.use_cache || gen.fill_virtual_tokens), "generate: virtual_tokens ", vt,
             " needs fill_virtual_tokens for the cache");
  PEFT_CHECK(gen.max_new_tokens <= cfg.max_position_embeddings &&
                 vt + P + gen.max_new_tokens <= cfg.max_position_embeddings,
             "generate: a prompt of ", P, " tokens", vt ? str(" after ", vt, " virtual tokens") : "", " plus max_new_tokens ",
             gen.max_new_tokens, " exceeds the model's ", cfg.max_position_embeddings,
             " positions (max_position_embeddings in config.json)");
  const int64_t cap = P + gen.max_new_tokens;
  auto lopt = at::TensorOptions().dtype(at::kLong).device(cache_opts.device());
  // left padding: row b's prompt occupies the last len_b slots of the first P
  at::Tensor seq = at::full({B, cap}, gen.pad_token_id, at::kLong);
  // the mask over the cache's slots: the vt virtual tokens first (always attended), then the tokens'; `mask`
  // is the tokens' part of it (a view: what is written there is in `slots` too)
  at::Tensor slots = at::zeros({B, vt + cap}, at::kLong);
  slots.narrow(1, 0, vt).fill_(1);
  at::Tensor mask = slots.narrow(1, vt, cap);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t off = P - static_cast<int64_t>(prompts[b].size());
    for (size_t k = 0; k < prompts[b].size(); ++k) seq[b][off + k] = prompts[b][k];
    mask.narrow(1, 0, P)[b].narrow(0, off, P - off).fill_(1);
  }
  seq = seq.to(cache_opts.device());
  slots = slots.to(cache_opts.device());
  mask = slots.narrow(1, vt, cap);
  std::vector<std::vector<int64_t>> history(prompts), out(B);
  std::vector<bool> done(B, false);
  at::Generator rng = at::detail::createCPUGenerator(gen.seed);
  // with the cache, the virtual tokens take its first vt slots
  KVCache cache;
  if (gen.use_cache) {
    cache = KVCache::allocate(cfg, B, vt + cap, cache_opts);
    if (vt) gen.fill_virtual_tokens(cache);
  }

  int64_t len = P;  // tokens in seq so far
  for (int64_t t = 0; t < gen.max_new_tokens; ++t) {
    ForwardInput in;
    if (gen.use_cache) {
      const int64_t start = t == 0 ? 0 : len - 1;
      in.input_ids = seq.narrow(1, start, len - start);
      in.cache_position = at::arange(vt + start, vt + len, lopt);
      in.attention_mask = slots;
      in.cache = &cache;
    } else {
      in.input_ids = seq.narrow(1, 0, len);
      in.attention_mask = mask.narrow(1, 0, len);
    }
    at::Tensor logits = forward(in);
    at::Tensor last = logits.select(1, logits.size(1) - 1);
    at::Tensor next = sample_next(last.to(at::kCPU), history, gen, rng);
    for (int64_t b = 0; b < B; ++b) {
      int64_t id = done[b] ? gen.pad_token_id : next[b].item<int64_t>();
      seq[b][len] = id;
      if (done[b]) continue;
      out[b].push_back(id);
      history[b].push_back(id);
      if (on_token) on_token(b, id);
      if (std::find(gen.eos_token_ids.begin(), gen.eos_token_ids.end(), id) != gen.eos_token_ids.end()) done[b] = true;
      if (!done[b] && !gen.stop_strings.empty()) {
        const std::string text = decode(out[b]);
        for (const auto & s : gen.stop_strings) done[b] = done[b] || (!s.empty() && text.find(s) != std::string::npos);
      }
    }
    mask.narrow(1, len, 1).fill_(1);
    ++len;
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
  }
  return out;
}

}  // namespace peft
