// The serving engine (see engine.h): admission, chunked prefill, mixed-adapter decode steps, sampling per
// request, stopping, cancellation, adapter loading between steps, compaction of the slot clock.
#include "peft/serve/engine.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <limits>
#include <optional>
#include <random>

#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/tuners/registry.h"

namespace peft::serve {

using Clock = std::chrono::steady_clock;

struct Engine::Row {
  int64_t index = 0;         // the row of the batch and of the KV cache
  bool active = false;
  bool decoding = false;     // false: prompt still being prefilled
  Request req;
  GenerationConfig gen;
  at::Generator rng;
  int64_t prefilled = 0;     // prompt tokens done
  int64_t pos = 0;           // position id of the next token fed
  int64_t last = 0;          // the token fed at the next decode step
  std::vector<std::vector<int64_t>> history;  // prompt + generated (repetition penalty)
  std::vector<int64_t> generated;
  std::vector<TokenLogprob> prompt_lp;   // params.prompt_logprobs: gathered chunk by chunk during prefill
  std::unique_ptr<DecodeStream> stream;  // the completion's text, token by token (null without a tokenizer)
  std::string text;          // decoded so far (cut at a stop string)
  size_t sent = 0;           // bytes of text given to on_token
  int64_t admitted = 0;      // admission order (prefill is first come, first served)
  Clock::time_point submitted, last_token;
};

const char * finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "error";
}

namespace {

// The longest end of `text` that is the start (not the whole) of a stop string: held back from the
// client until the next tokens decide it. Both are valid UTF-8, so the cut is between characters.
size_t stop_prefix_held(const std::string & text, const std::vector<std::string> & stops) {
  size_t held = 0;
  for (const auto & s : stops) {
    for (size_t k = std::min(text.size(), s.size() - (s.empty() ? 0 : 1)); k > held; --k) {
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        held = k;
        break;
      }
    }
  }
  return held;
}

// The earliest stop string in `text` that ends after byte `from` (npos: none).
size_t find_stop(const std::string & text, size_t from, const std::vector<std::string> & stops) {
  size_t cut = std::string::npos;
  for (const auto & s : stops) {
    if (s.empty()) continue;
    const size_t start = from >= s.size() - 1 ? from - (s.size() - 1) : 0;
    const size_t at = text.find(s, start);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  return cut;
}

// The log-probability of token `id` in a row of float32 log-probabilities (V), with the k most likely.
TokenLogprob token_logprob(const at::Tensor & lsm, int64_t id, int64_t k) {
  TokenLogprob lp;
  lp.id = id;
  lp.logprob = lsm[id].item<float>();
  k = std::min<int64_t>(k, lsm.size(0));
  if (k > 0) {
    auto top = lsm.topk(k, -1, /*largest=*/true, /*sorted=*/true);
    auto vals = std::get<0>(top).contiguous();
    auto idx = std::get<1>(top).contiguous();
    const float * v = vals.data_ptr<float>();
    const int64_t * ix = idx.data_ptr<int64_t>();
    for (int64_t i = 0; i < k; ++i) lp.top.emplace_back(ix[i], v[i]);
  }
  return lp;
}

}  // namespace

Engine::Engine(std::shared_ptr<PeftModel> model, EngineOptions opts, std::shared_ptr<Tokenizer> tokenizer)
    : model_(std::move(model)), opts_(opts), tokenizer_(std::move(tokenizer)) {
  const ModelConfig & cfg = model_->base_model().config();
  {
    const auto held = model_->adapter_names();
    std::string names;
    for (const auto & n : held) names += (names.empty() ? "'" : ", '") + n + "'";
    PEFT_CHECK(held.empty(), "serve: the model given to the engine already holds adapter(s) ", names,
               "; give it a model without adapters and load them with Engine::load_adapter (which checks that a "
               "server can hold them)");
  }
  PEFT_CHECK(opts_.max_batch >= 1, "serve: max_batch must be >= 1");
  PEFT_CHECK(opts_.prefill_chunk >= 1, "serve: prefill_chunk must be >= 1");
  max_context_ = opts_.max_context > 0 ? std::min(opts_.max_context, cfg.max_position_embeddings) : cfg.max_position_embeddings;
  capacity_ = 2 * max_context_;
  clock_ = max_context_;
  const auto wopts = model_->base_model().options();
  cache_ = KVCache::allocate(cfg, opts_.max_batch, capacity_, wopts);
  const int64_t prefill_cap = (max_context_ + opts_.prefill_chunk - 1) / opts_.prefill_chunk * opts_.prefill_chunk;
  prefill_cache_ = KVCache::allocate(cfg, 1, prefill_cap, wopts);
  mask_ = at::zeros({opts_.max_batch, capacity_}, at::kLong);
  for (int64_t i = 0; i < opts_.max_batch; ++i) {
    rows_.push_back(std::make_unique<Row>());
    rows_.back()->index = i;
  }
  model_->train(false);
  if (opts_.compile) {
    compiled_ = std::make_shared<CompiledModel>(compile(*model_));
    decode_fn_ = [c = compiled_](const PeftInput & in) { return c->forward(in); };
  } else {
    decode_fn_ = [m = model_](const PeftInput & in) { return m->forward(in); };
  }
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { stop(); }

void Engine::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Engine::has_adapter(const std::string & name) const {
  std::lock_guard<std::mutex> g(mu_);
  return name == kBaseAdapter || std::find(adapters_.begin(), adapters_.end(), name) != adapters_.end();
}

std::vector<std::string> Engine::adapters() const {
  std::lock_guard<std::mutex> g(mu_);
  return adapters_;
}

void Engine::submit(Request r) {
  PEFT_CHECK(!r.prompt.empty(), "the prompt is empty");
  PEFT_CHECK(static_cast<int64_t>(r.prompt.size()) < max_context_, "the prompt has ", r.prompt.size(),
             " tokens; this server's context is ", max_context_, " tokens");
  PEFT_CHECK(r.params.max_tokens >= 0, "max_tokens must not be negative");
  PEFT_CHECK(r.params.logprobs <= kMaxTopLogprobs, "logprobs must be at most ", kMaxTopLogprobs);
  PEFT_CHECK(r.params.min_p >= 0 && r.params.min_p <= 1, "min_p must be in [0, 1]");
  {
    const int64_t vocab = model_->base_model().config().vocab_size;
    for (const auto & b : r.params.logit_bias) {
      PEFT_CHECK(b.first >= 0 && b.first < vocab, "logit_bias: token id ", b.first, " is outside the vocabulary [0, ", vocab, ")");
    }
  }
  PEFT_CHECK(static_cast<int64_t>(r.prompt.size()) + r.params.max_tokens <= max_context_, "the prompt (",
             r.prompt.size(), " tokens) plus max_tokens (", r.params.max_tokens, ") exceeds this server's context of ",
             max_context_, " tokens");
  {
    std::lock_guard<std::mutex> g(mu_);
    PEFT_CHECK(!stopping_, "the server is shutting down");
    const bool known = r.adapter == kBaseAdapter || std::find(adapters_.begin(), adapters_.end(), r.adapter) != adapters_.end();
    PEFT_CHECK(known && std::find(unloading_.begin(), unloading_.end(), r.adapter) == unloading_.end(), "unknown model '",
               r.adapter, "'");
    queue_.push_back(std::move(r));
    queue_.back().submitted_at = Clock::now().time_since_epoch().count();
    stats_.waiting = static_cast<int64_t>(queue_.size());
  }
  cv_.notify_all();
}

void Engine::run_on_engine(std::function<bool()> op) {
  auto done = std::make_shared<std::promise<void>>();
  auto fut = done->get_future();
  {
    std::lock_guard<std::mutex> g(mu_);
    PEFT_CHECK(!stopping_, "the server is shutting down");
    admin_.push_back({std::move(op), done});
  }
  cv_.notify_all();
  fut.get();  // rethrows the op's error
}

void Engine::check_servable(const std::string & path) {
  const AdapterConfig cfg = AdapterConfig::load(path);
  const TunerMethod & method = tuner_method(cfg.peft_type);
  PEFT_CHECK(!method.layer_map || method.layer_map(cfg).empty(), path, ": adapter_config.json has layer_replication: it rebuilds ",
             "the base model's layer stack, which the other adapters and \"__base__\" requests would run on; peft serve ",
             "does not hold it (run it with peft generate)");
}

void Engine::load_adapter(const std::string & path, const std::string & name) {
  PEFT_CHECK(name != kBaseAdapter && !name.empty(), "adapter name '", name, "' is reserved");
  check_servable(path);
  run_on_engine([this, path, name] {
    PEFT_CHECK(!has_adapter(name), "an adapter named '", name, "' is already loaded");
    at::NoGradGuard no_grad;
    model_->load_adapter(path, name);
    try {
      model_->mixed_rows({name}, 1);  // servable in a mixed batch (PEFT refuses DoRA there)
    } catch (...) {
      model_->delete_adapter(name);
      throw;
    }
    std::lock_guard<std::mutex> g(mu_);
    adapters_.push_back(name);
    return true;
  });
}

void Engine::unload_adapter(const std::string & name) {
  {
    std::lock_guard<std::mutex> g(mu_);
    PEFT_CHECK(name != kBaseAdapter && std::find(adapters_.begin(), adapters_.end(), name) != adapters_.end(),
               "no adapter named '", name, "' is loaded");
    unloading_.push_back(name);  // no new requests for it from now on
  }
  run_on_engine([this, name] {
    bool queued = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      for (const auto & q : queue_) queued = queued || q.adapter == name;
    }
    if (queued || rows_using(name) > 0) return false;  // again after the next step
    model_->delete_adapter(name);
    std::lock_guard<std::mutex> g(mu_);
    adapters_.erase(std::find(adapters_.begin(), adapters_.end(), name));
    unloading_.erase(std::find(unloading_.begin(), unloading_.end(), name));
    return true;
  });
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> g(mu_);
  EngineStats s = stats_;
  s.adapters = adapters_;
  return s;
}

int64_t Engine::rows_using(const std::string & name) const {
  int64_t n = 0;
  for (const auto & r : rows_) n += r->active && r->req.adapter == name;
  return n;
}

void Engine::run_admin() {
  std::deque<Admin> ops;
  {
    std::lock_guard<std::mutex> g(mu_);
    ops.swap(admin_);
  }
  std::deque<Admin> again;
  for (auto & op : ops) {
    try {
      if (op.op()) {
        op.done->set_value();
      } else {
        again.push_back(std::move(op));
      }
    } catch (...) {
      op.done->set_exception(std::current_exception());
    }
  }
  std::lock_guard<std::mutex> g(mu_);
  for (auto & op : again) admin_.push_back(std::move(op));
}

void Engine::admit() {
  for (auto & row : rows_) {
    if (row->active) continue;
    Request req;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (queue_.empty()) return;
      req = std::move(queue_.front());
      queue_.pop_front();
      stats_.waiting = static_cast<int64_t>(queue_.size());
      ++stats_.running;
    }
    Row & r = *row;
    const int64_t index = r.index;
    r = Row();
    r.index = index;
    r.active = true;
    r.req = std::move(req);
    const SamplingParams & p = r.req.params;
    r.gen.do_sample = p.temperature > 0;
    r.gen.temperature = p.temperature > 0 ? p.temperature : 1.0;
    r.gen.top_k = p.top_k;
    r.gen.top_p = p.top_p;
    r.gen.repetition_penalty = p.repetition_penalty;
    r.gen.min_p = p.min_p;
    r.gen.logit_bias = p.logit_bias;
    r.gen.eos_token_ids = model_->base_model().config().eos_token_ids;
    uint64_t seed = p.seed;
    if (!p.has_seed) seed = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);
    r.rng = at::detail::createCPUGenerator(seed);
    if (p.temperature > 0 && p.temperature < kGreedyBelow) r.gen.do_sample = false;  // (vLLM's rule)
    r.history = {r.req.prompt};
    if (tokenizer_) r.stream = std::make_unique<DecodeStream>(*tokenizer_);
    r.admitted = ++admissions_;
    r.submitted = Clock::time_point(Clock::duration(r.req.submitted_at));
    {
      at::NoGradGuard g;
      mask_[r.index].zero_();
    }
  }
}

void Engine::finish(Row & r, FinishReason reason, const std::string & error) {
  {
    at::NoGradGuard g;
    mask_[r.index].zero_();
  }
  r.active = false;
  r.decoding = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    --stats_.running;
    ++stats_.requests_done;
    stats_.prompt_tokens += static_cast<int64_t>(r.req.prompt.size());
    stats_.completion_tokens += static_cast<int64_t>(r.generated.size());
  }
  Finish f;
  f.reason = reason;
  f.error = error;
  if (reason == FinishReason::kStop || reason == FinishReason::kLength) f.text = r.text.substr(std::min(r.sent, r.text.size()));
  if (r.req.callbacks.on_done) r.req.callbacks.on_done(f);
  r.req = Request();
  r.stream.reset();
  r.text.clear();
}

bool Engine::emit(Row & r, int64_t id, const TokenLogprob * lp) {
  const auto now = Clock::now();
  {
    std::lock_guard<std::mutex> g(mu_);
    if (r.generated.empty()) {
      stats_.ttft_sum_s += std::chrono::duration<double>(now - r.submitted).count();
      ++stats_.ttft_count;
    } else {
      stats_.itl_sum_s += std::chrono::duration<double>(now - r.last_token).count();
      ++stats_.itl_count;
    }
  }
  r.last_token = now;
  r.history[0].push_back(id);
  const auto & eos = r.gen.eos_token_ids;
  const auto & stops = r.req.params.stop;
  auto report_logprob = [&] {
    if (!lp || !r.req.callbacks.on_logprob) return;
    TokenLogprob t = *lp;
    t.text_offset = r.text.size();
    r.req.callbacks.on_logprob(t);
  };
  if (std::find(eos.begin(), eos.end(), id) != eos.end()) {
    report_logprob();  // (the eos's own, as vLLM returns it; it adds no text)
    if (r.stream) r.text += r.stream->flush();
    finish(r, FinishReason::kStop);
    return true;
  }
  report_logprob();
  r.generated.push_back(id);
  const bool last = static_cast<int64_t>(r.generated.size()) >= r.req.params.max_tokens;
  size_t stop_at = std::string::npos;
  if (r.stream) {
    // each token decoded once; stop strings looked for only where the new text could complete one
    const size_t before = r.text.size();
    r.text += r.stream->step(id);
    if (last) r.text += r.stream->flush();
    stop_at = find_stop(r.text, before, stops);
    if (stop_at != std::string::npos) r.text.resize(std::max(stop_at, r.sent));
  }
  std::string piece;
  if (stop_at == std::string::npos && !last) {
    const size_t ready = r.text.size() - stop_prefix_held(r.text, stops);
    if (ready > r.sent) {
      piece = r.text.substr(r.sent, ready - r.sent);
      r.sent = ready;
    }
  }
  if (r.req.callbacks.on_token) r.req.callbacks.on_token(id, piece);
  if (stop_at != std::string::npos) {
    finish(r, FinishReason::kStop);
    return true;
  }
  if (last) {
    finish(r, FinishReason::kLength);
    return true;
  }
  r.last = id;
  return false;
}

void Engine::prefill_one() {
  Row * r = nullptr;
  for (auto & row : rows_) {
    if (row->active && !row->decoding && (!r || row->admitted < r->admitted)) r = row.get();
  }
  if (!r) return;
  const int64_t row_index = r->index;
  const int64_t P = static_cast<int64_t>(r->req.prompt.size()), C = opts_.prefill_chunk;
  const int64_t start = r->prefilled, n = std::min(C, P - start);
  at::Tensor ids = at::full({1, C}, std::max<int64_t>(0, model_->base_model().config().pad_token_id), at::kLong);
  for (int64_t i = 0; i < n; ++i) ids[0][i] = r->req.prompt[start + i];
  PeftInput in;
  in.input_ids = ids;
  in.cache = &prefill_cache_;
  in.cache_position = at::arange(start, start + C, at::kLong);
  in.position_ids = in.cache_position.unsqueeze(0);
  at::Tensor mask = at::zeros({1, prefill_cache_.capacity()}, at::kLong);
  mask.narrow(1, 0, start + n).fill_(1);
  in.attention_mask = mask;
  in.adapter_names = {r->req.adapter};
  at::Tensor logits;
  {
    at::NoGradGuard g;
    logits = decode_fn_(in);
    if (r->req.params.prompt_logprobs) {
      // position j predicts prompt token start + j + 1: the chunk's rows, float32 (as a direct forward's)
      at::Tensor lsm = at::log_softmax(logits[0].narrow(0, 0, n).to(at::kCPU).to(at::kFloat), -1).contiguous();
      if (start == 0) {
        TokenLogprob first;
        first.id = r->req.prompt[0];
        first.has_logprob = false;
        r->prompt_lp.push_back(first);
      }
      for (int64_t j = 0; j < n && start + j + 1 < P; ++j) {
        r->prompt_lp.push_back(token_logprob(lsm[j], r->req.prompt[start + j + 1], std::max<int64_t>(0, r->req.params.logprobs)));
      }
    }
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    ++stats_.prefill_calls;
    if (compiled_) stats_.graphs_compiled = static_cast<int64_t>(compiled_->stats().compiles);
  }
  r->prefilled += n;
  if (r->prefilled < P) return;
  if (r->req.params.prompt_logprobs && r->req.callbacks.on_prompt_logprobs) r->req.callbacks.on_prompt_logprobs(r->prompt_lp);
  r->prompt_lp.clear();
  if (r->req.params.max_tokens == 0) {  // the prompt alone (scoring): nothing is generated
    finish(*r, FinishReason::kLength);
    return;
  }
  // the prompt's keys and values become the row's most recent slots of the shared cache
  {
    at::NoGradGuard g;
    if (clock_ + 1 >= capacity_) compact();
    at::Tensor slots = at::arange(clock_ - P, clock_, at::kLong);
    for (size_t l = 0; l < cache_.k.size(); ++l) {
      cache_.k[l][row_index].index_copy_(1, slots, prefill_cache_.k[l][0].narrow(1, 0, P));
      cache_.v[l][row_index].index_copy_(1, slots, prefill_cache_.v[l][0].narrow(1, 0, P));
    }
    mask_[row_index].zero_();
    mask_[row_index].narrow(0, clock_ - P, P).fill_(1);
  }
  r->pos = P;
  r->decoding = true;
  sample_and_emit(*r, logits.select(1, n - 1).to(at::kCPU));
}

void Engine::sample_and_emit(Row & r, const at::Tensor & logits) {
  // a row's sampling (its own parameters, its own logits) fails that row alone
  const SamplingParams & p = r.req.params;
  int64_t id = 0;
  TokenLogprob lp;
  try {
    // (logit bias, penalties, temperature, min_p, top-k, top-p: vLLM's order, in sample_next)
    id = sample_next(logits, r.history, r.gen, r.rng)[0].item<int64_t>();
    if (p.logprobs >= 0) lp = token_logprob(at::log_softmax(logits[0].to(at::kFloat), -1).contiguous(), id, p.logprobs);
  } catch (const std::exception & e) {
    finish(r, FinishReason::kError, "sampling failed: " + error_message(e));
    return;
  }
  emit(r, id, p.logprobs >= 0 ? &lp : nullptr);
}

void Engine::compact() {
  // every row's live slots move down to end at max_context_, where the clock restarts
  at::NoGradGuard g;
  for (int64_t r = 0; r < opts_.max_batch; ++r) {
    at::Tensor live = mask_[r].nonzero().flatten();
    const int64_t n = live.numel();
    if (n == 0) continue;
    at::Tensor to = at::arange(max_context_ - n, max_context_, at::kLong);
    for (size_t l = 0; l < cache_.k.size(); ++l) {
      cache_.k[l][r].index_copy_(1, to, cache_.k[l][r].index_select(1, live));
      cache_.v[l][r].index_copy_(1, to, cache_.v[l][r].index_select(1, live));
    }
    mask_[r].zero_();
    mask_[r].narrow(0, max_context_ - n, n).fill_(1);
  }
  clock_ = max_context_;
}

void Engine::decode_step() {
  const int64_t B = opts_.max_batch;
  bool any = false;
  for (const auto & r : rows_) any = any || (r->active && r->decoding);
  if (!any) return;
  if (clock_ >= capacity_) compact();
  at::NoGradGuard g;
  const int64_t pad = std::max<int64_t>(0, model_->base_model().config().pad_token_id);
  at::Tensor ids = at::full({B, 1}, pad, at::kLong), pos = at::zeros({B, 1}, at::kLong);
  PeftInput in;
  in.adapter_names.assign(B, kBaseAdapter);
  for (int64_t b = 0; b < B; ++b) {
    Row & r = *rows_[b];
    if (!r.active || !r.decoding) continue;
    ids[b][0] = r.last;
    pos[b][0] = r.pos;
    mask_[b][clock_] = 1;
    in.adapter_names[b] = r.req.adapter;
  }
  in.input_ids = ids;
  in.position_ids = pos;
  in.cache_position = at::full({1}, clock_, at::kLong);
  in.attention_mask = mask_;
  in.cache = &cache_;
  at::Tensor logits = decode_fn_(in).select(1, 0).to(at::kCPU);
  ++clock_;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.decode_steps;
    if (compiled_) stats_.graphs_compiled = static_cast<int64_t>(compiled_->stats().compiles);
  }
  for (int64_t b = 0; b < B; ++b) {
    Row & r = *rows_[b];
    if (!r.active || !r.decoding) continue;
    ++r.pos;
    sample_and_emit(r, logits.narrow(0, b, 1));
  }
}

void Engine::loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] {
        bool busy = false;
        for (const auto & r : rows_) busy = busy || r->active;
        return stopping_ || busy || !queue_.empty() || !admin_.empty();
      });
      if (stopping_) break;
    }
    try {
      run_admin();
      admit();
      for (auto & r : rows_) {
        if (r->active && r->req.cancelled && *r->req.cancelled) finish(*r, FinishReason::kCancelled);
      }
      prefill_one();
      decode_step();
    } catch (const std::exception & e) {
      // a failed step fails the requests in it, never the server
      const std::string why = error_message(e);
      for (auto & r : rows_) {
        if (r->active) finish(*r, FinishReason::kError, why);
      }
    }
    bool idle_admin = false;
    {
      std::lock_guard<std::mutex> g(mu_);
      idle_admin = !admin_.empty();
    }
    if (idle_admin) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // shutting down: everyone still here is cancelled
  for (auto & r : rows_) {
    if (r->active) finish(*r, FinishReason::kCancelled);
  }
  std::deque<Request> left;
  std::deque<Admin> ops;
  {
    std::lock_guard<std::mutex> g(mu_);
    left.swap(queue_);
    ops.swap(admin_);
  }
  for (auto & q : left) {
    Finish f;
    f.reason = FinishReason::kCancelled;
    if (q.callbacks.on_done) q.callbacks.on_done(f);
  }
  for (auto & op : ops) op.done->set_exception(std::make_exception_ptr(Error("the server is shutting down")));
}

}  // namespace peft::serve
