// OpenAI's request and response shapes for completions and chat completions: parsing a request body into
// engine requests (validated, errors naming the field), and the JSON of responses and stream chunks.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "peft/data/chat-template.h"
#include "peft/generate/generation-config-file.h"
#include "peft/serve/engine.h"

namespace peft::serve {

/// A request the client got wrong: HTTP status, OpenAI error type, the field at fault.
struct ApiError {
  ApiError(int status_, std::string message_, std::string type_ = "invalid_request_error", std::string param_ = "",
           std::string code_ = "")
      : status(status_), message(std::move(message_)), type(std::move(type_)), param(std::move(param_)), code(std::move(code_)) {}
  int status;
  std::string message, type, param, code;
};
/// What the server writes: its fields in the order they are set (OpenAI's order; top_logprobs highest first).
using OutJson = nlohmann::ordered_json;

OutJson error_json(const ApiError & e);

struct Job {
  bool chat = false, stream = false, include_usage = false;
  std::string model;                      // as requested (the base's name or an adapter's)
  std::string adapter;                    // kBaseAdapter or the adapter
  std::vector<std::vector<int64_t>> prompts;  // one per choice group (completions may send several prompts)
  int64_t n = 1;
  bool echo = false;                      // completions: the prompt's text (and log-probabilities) first
  SamplingParams params;                  // (params.logprobs >= 0: log-probabilities asked for)
};

/// Parse a /v1/completions or /v1/chat/completions body (JSON nested at most kMaxJsonDepth levels; prompt
/// and message text at most max_prompt_bytes in all, checked before tokenizing). Throws ApiError.
/// `defaults` fill the sampling fields a request leaves out (the model's generation_config.json).
Job parse_job(const std::string & body, bool chat, const std::string & base_name, const Engine & engine,
              const Tokenizer & tok, const std::optional<ChatTemplate> & tpl, size_t max_prompt_bytes,
              const GenerationDefaults & defaults = {});

struct Choice {
  std::string text, finish_reason;
  int64_t completion_tokens = 0, prompt_tokens = 0;
  OutJson logprobs;  // null: not asked for
};

/// The echoed prompt: its tokens decoded as a completion's are (DecodeStream), and each token's byte offset
/// in that text.
std::string echo_text(const Tokenizer & tok, const std::vector<int64_t> & ids, std::vector<size_t> & offsets);
/// OpenAI's legacy completions `logprobs` object ({tokens, token_logprobs, top_logprobs, text_offset}) of
/// these tokens at these byte offsets of the returned text.
OutJson legacy_logprobs_json(const Tokenizer & tok, const std::vector<TokenLogprob> & lps, const std::vector<size_t> & offsets);
/// Chat's `logprobs` object ({"content": [{token, logprob, bytes, top_logprobs}]}).
OutJson chat_logprobs_json(const Tokenizer & tok, const std::vector<TokenLogprob> & lps);
OutJson response_json(const Job & job, const std::string & id, int64_t created, const std::vector<Choice> & choices);
OutJson chunk_json(const Job & job, const std::string & id, int64_t created, int64_t index, const std::string & delta,
                          const std::optional<std::string> & finish_reason, bool first,
                          const OutJson & logprobs = nullptr);
OutJson usage_json(int64_t prompt_tokens, int64_t completion_tokens);

}  // namespace peft::serve
