// The serving engine: continuous batching of requests that each name an adapter (or the base). One
// thread owns the model; requests join the running decode batch at any step and leave when done, rows
// of different adapters share each step (the mixed-batch routing, one compiled graph for any mix), and
// prompts are prefilled in chunks between decode steps so that a long prompt does not stall the others.
//
// KV cache: one static cache of `max_batch` rows over a global slot clock. Every decode step writes all
// rows at the clock's slot; a row sees only its own slots (attention mask) at its own positions
// (position_ids), so rows of any lengths share a step. A prompt is prefilled into a one-row cache and
// its keys/values are copied into the row's most recent slots; when the clock reaches the end, the live
// slots of every row are moved down (compaction).
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "peft/compile/compile.h"
#include "peft/generate/generate.h"
#include "peft/peft-model.h"
#include "peft/tokenizer/decode-stream.h"
#include "peft/tokenizer/tokenizer.h"

namespace peft::serve {

struct EngineOptions {
  int64_t max_batch = 8;        // rows decoded together
  int64_t max_context = 0;      // prompt + completion tokens per request (0 = the model's max positions)
  int64_t prefill_chunk = 32;   // prompt tokens per prefill call
  bool compile = false;         // run decode and prefill through compiled graphs
};

/// A temperature below this samples greedily (vLLM's rule: dividing logits by a tinier one overflows).
constexpr double kGreedyBelow = 1e-5;

struct SamplingParams {
  int64_t max_tokens = 16;      // 0: the prompt only (its log-probabilities), nothing generated
  double temperature = 1.0;     // 0 = greedy
  double top_p = 1.0;
  int64_t top_k = 0;
  double repetition_penalty = 1.0;
  double min_p = 0;             // 0 = off: drop tokens below min_p x the top token's probability (after temperature)
  std::vector<std::pair<int64_t, float>> logit_bias;  // (token id, bias) added to the logits before sampling
  std::vector<std::string> stop;
  bool has_seed = false;
  uint64_t seed = 0;
  /// Log-probabilities: of each generated token with this many top alternatives (-1 = none); with
  /// prompt_logprobs also of each prompt token (the first has none). Raw model logits, float32 log_softmax
  /// (before bias, penalties, temperature and truncation, as vLLM returns by default).
  int64_t logprobs = -1;
  bool prompt_logprobs = false;
};

/// Most top alternatives a request may ask for (vLLM's default max_logprobs).
constexpr int64_t kMaxTopLogprobs = 20;

/// One token's log-probability under the model given what precedes it, and the top alternatives.
struct TokenLogprob {
  int64_t id = 0;
  bool has_logprob = true;                     // false: the first prompt token (nothing precedes it)
  float logprob = 0;
  std::vector<std::pair<int64_t, float>> top;  // highest first
  size_t text_offset = 0;                      // generated tokens: bytes of the completion text before this token's
};

/// Why a request ended.
enum class FinishReason {
  kStop,       // eos or a stop string
  kLength,     // max_tokens
  kCancelled,  // the client left, or the server stops
  kError,      // this request failed (its own error; other rows go on)
};
/// OpenAI's finish_reason word: "stop", "length"; "cancelled", "error" for the others.
const char * finish_reason_name(FinishReason r);

struct Finish {
  FinishReason reason = FinishReason::kStop;
  std::string text;   // the completion text not yet given to on_token (cut at a stop string)
  std::string error;  // kError: what failed (one line, no backtrace)
};

/// What a request reports back; called on the engine thread (keep them short). Text is the completion's,
/// valid UTF-8, decoded once per token (DecodeStream); a character split across tokens and text that may be
/// the start of a stop string are held back until they are decided. Without a tokenizer no text comes.
struct RequestCallbacks {
  std::function<void(int64_t id, const std::string & text)> on_token;
  std::function<void(const Finish & f)> on_done;
  /// params.prompt_logprobs: every prompt token's, once, when the prompt has been prefilled.
  std::function<void(const std::vector<TokenLogprob> & prompt)> on_prompt_logprobs;
  /// params.logprobs >= 0: each generated token's (an eos that ends the completion too), before its on_token.
  std::function<void(const TokenLogprob & lp)> on_logprob;
};

struct Request {
  std::string adapter = kBaseAdapter;  // an adapter loaded by the engine, or kBaseAdapter (no adapter)
  std::vector<int64_t> prompt;
  SamplingParams params;
  RequestCallbacks callbacks;
  std::shared_ptr<std::atomic<bool>> cancelled = std::make_shared<std::atomic<bool>>(false);
  int64_t submitted_at = 0;  // (set by submit: steady-clock ticks)
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t requests_done = 0, prompt_tokens = 0, completion_tokens = 0;
  int64_t decode_steps = 0, prefill_calls = 0;
  int64_t graphs_compiled = 0;           // compiled engines: graphs captured so far
  double ttft_sum_s = 0, itl_sum_s = 0;  // time to first token, inter-token latency (sums)
  int64_t ttft_count = 0, itl_count = 0;
  std::vector<std::string> adapters;     // loaded adapters (Engine::adapters())
};

/// The engine owns the adapters of the model it serves: they enter only through load_adapter (which checks
/// that a server can hold them: check_servable, a mixed batch, undone on failure) and leave only through
/// unload_adapter. The model is the engine's from construction on (its thread runs it); change it only
/// through the engine.
class Engine {
 public:
  /// `model` must hold no adapter yet (peft::Error otherwise: load them with load_adapter). `tokenizer`
  /// decodes completions into text and for stop strings (may be null: no text, stop strings then never match).
  Engine(std::shared_ptr<PeftModel> model, EngineOptions opts, std::shared_ptr<Tokenizer> tokenizer);
  ~Engine();
  /// Queue a request (thread-safe). Errors (unknown adapter, prompt too long) throw peft::Error here.
  void submit(Request r);
  /// Load / unload an adapter between steps (thread-safe; blocks until done): the only way adapters enter
  /// and leave the served model. Unloading waits for the running requests of that adapter to finish; new
  /// requests for it are refused meanwhile.
  void load_adapter(const std::string & path, const std::string & name);
  void unload_adapter(const std::string & name);
  bool has_adapter(const std::string & name) const;
  /// Refuse (peft::Error) an adapter folder a server cannot hold beside others: one whose config replaces
  /// the base model's layer stack (LoRA's layer_replication: its method's layer_map), which every other
  /// adapter and base row would then run on. load_adapter calls it before loading.
  static void check_servable(const std::string & path);
  std::vector<std::string> adapters() const;
  EngineStats stats() const;
  int64_t max_context() const { return max_context_; }
  /// Stop the engine thread; queued and running requests end with "cancelled".
  void stop();

 private:
  struct Row;
  struct Admin {
    std::function<bool()> op;  // false: not yet possible, run again after the next step
    std::shared_ptr<std::promise<void>> done;
  };
  void run_on_engine(std::function<bool()> op);
  int64_t rows_using(const std::string & name) const;
  void loop();
  void admit();
  void prefill_one();
  void decode_step();
  void finish(Row & r, FinishReason reason, const std::string & error = "");
  void sample_and_emit(Row & r, const at::Tensor & logits);
  void compact();
  bool emit(Row & r, int64_t id, const TokenLogprob * lp);
  void run_admin();

  std::shared_ptr<PeftModel> model_;
  EngineOptions opts_;
  std::shared_ptr<Tokenizer> tokenizer_;
  // The engine's adapters, in load order: the ones load_adapter put into model_ (and the only ones there).
  // Its own list, guarded by mu_, because HTTP threads read it (has_adapter, submit) while the engine
  // thread changes the model; model_'s own list is read and changed on the engine thread alone.
  std::vector<std::string> adapters_;
  int64_t admissions_ = 0;
  int64_t max_context_ = 0, capacity_ = 0, clock_ = 0;
  PeftLogitsFn decode_fn_;
  std::shared_ptr<CompiledModel> compiled_;
  KVCache cache_, prefill_cache_;
  at::Tensor mask_;  // (max_batch, capacity) 1 = a slot of the row's sequence
  std::vector<std::unique_ptr<Row>> rows_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request> queue_;
  std::deque<Admin> admin_;
  std::vector<std::string> unloading_;
  EngineStats stats_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace peft::serve
