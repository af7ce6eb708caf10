// `peft serve`: an OpenAI-compatible HTTP server (cpp-httplib) over the serving engine.
//   POST /v1/completions, /v1/chat/completions (the model's chat template), with "stream": true as
//   server-sent events. Completions take echo, logprobs (0..20: OpenAI's legacy logprobs object, the prompt's
//   tokens too with echo) and max_tokens 0 with echo (the prompt scored, nothing generated: what evaluation
//   harnesses send); chat takes logprobs/top_logprobs; both take logit_bias, min_p and response_format
//   {"type": "text"} (other formats are refused). GET /v1/models (the base and every loaded adapter; a request's "model" picks one);
//   POST /v1/load_lora_adapter, /v1/unload_lora_adapter (vLLM's names; loading needs
//   allow_adapter_loading and a path inside adapter_root); GET /health; GET /metrics (Prometheus text).
// Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}; with an api_key every /v1
// request needs "Authorization: Bearer KEY".
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "peft/data/chat-template.h"
#include "peft/generate/generation-config-file.h"
#include "peft/serve/engine.h"

namespace peft::serve {

/// The largest request body read (however it is sent: Content-Length or chunked).
constexpr size_t kMaxRequestBytes = size_t(16) << 20;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                  // 0 = any free port (see Server::port())
  std::string model_name;           // the base model's id in /v1/models and requests
  std::string api_key;              // empty = no authentication
  bool allow_adapter_loading = false;
  std::string adapter_root = ".";   // adapters load only from below this folder
  int threads = 512;                // the most HTTP connections served at once (a worker thread each, started when
                                    // needed; each open connection holds one, so this is also the cap on them)
  int64_t max_loaded_adapters = 0;  // 0 = no limit
  /// A request's defaults where it does not say (vLLM's --generation-config auto: the model folder's
  /// generation_config.json): temperature, top_p, top_k, min_p, repetition_penalty, and max_new_tokens as
  /// max_tokens' default. Empty: OpenAI's defaults (temperature 1, max_tokens 16 for completions).
  GenerationDefaults defaults;
  bool access_log = true;           // one line per request on stderr (peft bench-serve turns it off)
};

class Server {
 public:
  Server(std::shared_ptr<Engine> engine, std::shared_ptr<Tokenizer> tokenizer, std::optional<ChatTemplate> chat,
         ServerOptions opts);
  ~Server();
  /// Bind (throws peft::Error naming host:port on failure); then port() is the bound port.
  void bind();
  int port() const;
  /// Serve until stop() (blocking).
  void run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft::serve
