// The HTTP side of `peft serve` (see server.h): routes, authentication, streaming, adapter admin, metrics.
#include "peft/serve/server.h"

#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <regex>

#include "chat-page.h"
#include "connections.h"
#include "openai.h"
#include "peft/error.h"
#include "peft/io/files.h"

namespace peft::serve {

namespace {

// One choice's progress, filled by the engine's callbacks, read by the HTTP thread.
struct Progress {
  std::mutex mu;
  std::condition_variable cv;
  std::string text;          // the completion text so far: valid UTF-8, append-only
  int64_t tokens = 0;
  bool done = false;
  Finish finish;
  std::vector<TokenLogprob> prompt_lp, gen_lp;  // log-probabilities, when asked for
  bool prompt_ready = false;                    // prompt_lp is complete
  std::shared_ptr<std::atomic<bool>> cancelled = std::make_shared<std::atomic<bool>>(false);
};

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Every JSON text the server sends: strings are valid UTF-8 by construction; a byte that is not becomes
// U+FFFD instead of an exception (nlohmann's dump throws on invalid UTF-8).
template <class J>
std::string dump(const J & j) {
  return j.dump(-1, ' ', false, J::error_handler_t::replace);
}

bool failed(const Finish & f) { return f.reason == FinishReason::kError || f.reason == FinishReason::kCancelled; }

std::string failure_message(const Finish & f) {
  return f.reason == FinishReason::kCancelled ? "generation failed: cancelled" : "generation failed: " + f.error;
}

// How often a waiting request looks at its client's socket.
constexpr auto kClientCheck = std::chrono::milliseconds(100);

// The access log's record of the request that this connection's thread serves (cpp-httplib runs a
// request's routing, handler, streamed body and logger on one thread): started before routing, filled in
// by the generation handler, printed by the logger.
struct Access {
  const httplib::Request * req = nullptr;  // (a record left by a request that never reached the logger is not this one's)
  std::chrono::steady_clock::time_point start;
  std::string model;                                // a generation request's model (the base or an adapter)
  int64_t prompt_tokens = -1;                       // -1: no generation started
  std::vector<std::shared_ptr<Progress>> progress;  // its choices: their tokens are the completion tokens
};
thread_local Access t_access;

// Text from the client in a log line: printable ASCII, the rest as \xNN (a decoded path may hold a newline), bounded.
std::string loggable(const std::string & s) {
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < 256; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

// One file of the chat page (src/serve/chat-page/). Public, as /health is: the page's API calls carry the
// key. Revalidated on every load (a new binary's page is seen at once); it may fetch from this server only.
void page_file(const EmbeddedFile & f, httplib::Response & res) {
  const std::string name = f.name;
  auto ends = [&](const std::string & ext) { return name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0; };
  const char * type = ends(".html") ? "text/html; charset=utf-8"
                      : ends(".js") ? "text/javascript; charset=utf-8"
                      : ends(".css") ? "text/css; charset=utf-8"
                                     : "application/octet-stream";
  res.set_content(reinterpret_cast<const char *>(f.data), f.size, type);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Content-Security-Policy",
                 "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
}

}  // namespace

struct Server::Impl {
  std::shared_ptr<Engine> engine;
  std::shared_ptr<Tokenizer> tok;
  std::optional<ChatTemplate> chat;
  ServerOptions opts;
  httplib::Server http;
  ConnectionWorkers * workers = nullptr;  // owned by http
  int bound_port = 0;
  std::atomic<int64_t> next_id{0};
  std::mutex stats_mu;
  std::map<int, int64_t> responses;  // by status
  std::mutex log_mu;                  // (access log lines whole)
  int64_t max_loaded_adapters = 0;
  size_t max_prompt_bytes = 0;

  void reply_error(httplib::Response & res, const ApiError & e) {
    res.status = e.status;
    res.set_content(dump(error_json(e)), "application/json");
  }

  // The request body, read here so that its size is bounded however it is sent (cpp-httplib checks
  // Content-Length only; a chunked body would be read whole). False: too large (the 413 is set).
  bool read_body(const httplib::Request & req, httplib::Response & res, const httplib::ContentReader & reader, std::string & body) {
    bool too_large = false;
    const bool ok = reader([&](const char * data, size_t n) {
      if (body.size() + n > kMaxRequestBytes) {
        too_large = true;
        return false;
      }
      body.append(data, n);
      return true;
    });
    if (too_large || res.status == 413) {
      reply_error(res, {413, str("the request body is larger than ", kMaxRequestBytes >> 20, " MiB")});
      res.set_header("Connection", "close");
      return false;
    }
    if (!ok) {
      reply_error(res, {400, "the request body could not be read"});
      res.set_header("Connection", "close");
      return false;
    }
    return true;
  }

  std::vector<std::shared_ptr<Progress>> start(const Job & job) {
    std::vector<std::shared_ptr<Progress>> out;
    for (const auto & prompt : job.prompts) {
      for (int64_t c = 0; c < job.n; ++c) {
        auto p = std::make_shared<Progress>();
        Request r;
        r.adapter = job.adapter;
        r.prompt = prompt;
        r.params = job.params;
        if (r.params.has_seed) r.params.seed += static_cast<uint64_t>(c);  // n choices of one seed differ
        r.cancelled = p->cancelled;
        r.callbacks.on_token = [p](int64_t, const std::string & text) {
          std::lock_guard<std::mutex> g(p->mu);
          ++p->tokens;
          p->text += text;
          p->cv.notify_all();
        };
        if (job.params.logprobs >= 0) {
          r.callbacks.on_logprob = [p](const TokenLogprob & lp) {
            std::lock_guard<std::mutex> g(p->mu);
            p->gen_lp.push_back(lp);
            p->cv.notify_all();
          };
        }
        if (job.params.prompt_logprobs) {
          r.callbacks.on_prompt_logprobs = [p](const std::vector<TokenLogprob> & lps) {
            std::lock_guard<std::mutex> g(p->mu);
            p->prompt_lp = lps;
            p->prompt_ready = true;
            p->cv.notify_all();
          };
        }
        r.callbacks.on_done = [p](const Finish & f) {
          std::lock_guard<std::mutex> g(p->mu);
          p->done = true;
          p->text += f.text;
          p->finish = f;
          p->cv.notify_all();
        };
        out.push_back(p);
        try {
          engine->submit(std::move(r));
        } catch (const std::exception & e) {
          for (auto & q : out) *q->cancelled = true;
          throw ApiError{400, error_message(e)};
        }
      }
    }
    return out;
  }

  void complete(const httplib::Request & req, httplib::Response & res, const httplib::ContentReader & reader, bool chat) {
    std::string body;
    if (!read_body(req, res, reader, body)) return;
    Job job;
    try {
      job = parse_job(body, chat, opts.model_name, *engine, *tok, this->chat, max_prompt_bytes, opts.defaults);
    } catch (const ApiError & e) {
      return reply_error(res, e);
    }
    std::vector<std::shared_ptr<Progress>> progress;
    try {
      progress = start(job);
    } catch (const ApiError & e) {
      return reply_error(res, e);
    }
    if (t_access.req == &req) {
      t_access.model = job.model;
      t_access.prompt_tokens = 0;
      for (const auto & p : job.prompts) t_access.prompt_tokens += static_cast<int64_t>(p.size());
      t_access.progress = progress;
    }
    // echo: each choice's prompt text and its tokens' offsets in it
    std::vector<std::string> echo(progress.size());
    std::vector<std::vector<size_t>> echo_off(progress.size());
    if (job.echo) {
      for (size_t i = 0; i < progress.size(); ++i) echo[i] = echo_text(*tok, job.prompts[i / job.n], echo_off[i]);
    }
    // the logprobs object of a choice's generated tokens `gen` (after the echoed prompt's `echo_len` bytes)
    auto gen_logprobs = [this, chat](const std::vector<TokenLogprob> & gen, size_t echo_len) -> OutJson {
      if (chat) return chat_logprobs_json(*tok, gen);
      std::vector<size_t> off;
      for (const auto & lp : gen) off.push_back(echo_len + lp.text_offset);
      return legacy_logprobs_json(*tok, gen, off);
    };
    const std::string id = str(chat ? "chatcmpl-" : "cmpl-", std::hex, unix_time(), "-", next_id++);
    const int64_t created = unix_time();
    // the client's socket: a client that leaves cancels its rows at once, streaming or not
    const int sock = find_request_socket(req);
    if (!job.stream) {
      std::vector<Choice> choices;
      for (size_t i = 0; i < progress.size(); ++i) {
        auto & p = *progress[i];
        std::unique_lock<std::mutex> lk(p.mu);
        while (!p.cv.wait_for(lk, kClientCheck, [&] { return p.done; })) {
          if (peer_closed(sock)) {
            for (auto & q : progress) *q->cancelled = true;
            res.set_header("Connection", "close");
            return reply_error(res, ApiError{499, "the client closed the connection", "server_error"});
          }
        }
        if (failed(p.finish)) {
          for (auto & q : progress) *q->cancelled = true;
          return reply_error(res, ApiError{500, failure_message(p.finish), "server_error"});
        }
        Choice c;
        c.text = echo[i] + p.text;
        if (job.params.logprobs >= 0) {
          c.logprobs = gen_logprobs(p.gen_lp, echo[i].size());
          if (job.params.prompt_logprobs) {
            // the prompt's entries first, at their offsets in the echoed text
            OutJson pl = legacy_logprobs_json(*tok, p.prompt_lp, echo_off[i]);
            for (const char * k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
              for (auto & x : c.logprobs[k]) pl[k].push_back(std::move(x));
            }
            c.logprobs = std::move(pl);
          }
        }
        c.finish_reason = finish_reason_name(p.finish.reason);
        c.completion_tokens = p.tokens;
        c.prompt_tokens = static_cast<int64_t>(job.prompts[i / job.n].size());
        choices.push_back(c);
      }
      res.set_content(dump(response_json(job, id, created, choices)), "application/json");
      return;
    }
    // server-sent events: one chunk per piece of new text, a last chunk with finish_reason, [DONE]
    struct State {
      std::vector<size_t> sent;     // text bytes sent
      std::vector<size_t> lp_sent;  // generated tokens' log-probabilities sent
      std::vector<bool> first, finished, echo_sent;
      std::vector<std::string> echo;
      std::vector<std::vector<size_t>> echo_off;
    };
    auto st = std::make_shared<State>();
    st->sent.assign(progress.size(), 0);
    st->lp_sent.assign(progress.size(), 0);
    st->echo_sent.assign(progress.size(), !job.echo);
    st->echo = echo;
    st->echo_off = echo_off;
    st->first.assign(progress.size(), true);
    st->finished.assign(progress.size(), false);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, id, created, progress, st, sock, gen_logprobs](size_t, httplib::DataSink & sink) {
          auto send = [&](const OutJson & j) {
            const std::string line = "data: " + dump(j) + "\n\n";
            return sink.write(line.data(), line.size());
          };
          auto cancel_all = [&] {
            for (auto & q : progress) *q->cancelled = true;
          };
          while (true) {
            bool all = true;
            for (size_t i = 0; i < progress.size(); ++i) {
              if (st->finished[i]) continue;
              auto & p = *progress[i];
              std::string delta;
              bool done, prompt_ready;
              Finish finish;
              std::vector<TokenLogprob> new_lp, prompt_lp;
              {
                // (only the first unfinished choice waits: the others are read as they are)
                std::unique_lock<std::mutex> lk(p.mu);
                if (all) {
                  p.cv.wait_for(lk, std::chrono::milliseconds(50), [&] {
                    return p.done || p.text.size() > st->sent[i] || p.gen_lp.size() > st->lp_sent[i] ||
                           (!st->echo_sent[i] && p.prompt_ready);
                  });
                }
                delta = p.text.substr(st->sent[i]);
                done = p.done;
                finish = p.finish;
                new_lp.assign(p.gen_lp.begin() + static_cast<std::ptrdiff_t>(st->lp_sent[i]), p.gen_lp.end());
                prompt_ready = p.prompt_ready;
                if (!st->echo_sent[i] && prompt_ready) prompt_lp = p.prompt_lp;
              }
              if (done && failed(finish)) {
                send(error_json(ApiError{500, failure_message(finish), "server_error"}));
                cancel_all();
                sink.done();
                return true;
              }
              if (!st->echo_sent[i]) {
                // echo: the prompt's text (with its log-probabilities once the prefill has them) comes first
                if (job.params.prompt_logprobs && !prompt_ready) {
                  all = false;
                  continue;
                }
                const OutJson lp = job.params.prompt_logprobs ? legacy_logprobs_json(*tok, prompt_lp, st->echo_off[i]) : OutJson();
                if (!send(chunk_json(job, id, created, static_cast<int64_t>(i), st->echo[i], std::nullopt, false, lp))) {
                  cancel_all();
                  return false;
                }
                st->echo_sent[i] = true;
              }
              if (!delta.empty() || !new_lp.empty() || (st->first[i] && job.chat)) {
                const OutJson lp = new_lp.empty() ? OutJson() : gen_logprobs(new_lp, st->echo[i].size());
                if (!send(chunk_json(job, id, created, static_cast<int64_t>(i), delta, std::nullopt, st->first[i], lp))) {
                  cancel_all();
                  return false;
                }
                st->first[i] = false;
                st->sent[i] += delta.size();
                st->lp_sent[i] += new_lp.size();
              }
              if (done) {
                if (!send(chunk_json(job, id, created, static_cast<int64_t>(i), "", std::string(finish_reason_name(finish.reason)), false))) {
                  cancel_all();
                  return false;
                }
                st->finished[i] = true;
              } else {
                all = false;
              }
            }
            if (all) break;
            if (!sink.is_writable() || peer_closed(sock)) {
              cancel_all();
              return false;
            }
          }
          if (job.include_usage) {
            int64_t prompt = 0, completion = 0;
            for (size_t i = 0; i < progress.size(); ++i) {
              {
                std::lock_guard<std::mutex> g(progress[i]->mu);
                completion += progress[i]->tokens;
              }
              if (i % job.n == 0) prompt += static_cast<int64_t>(job.prompts[i / job.n].size());
            }
            OutJson u = {{"id", id},
                                {"object", job.chat ? "chat.completion.chunk" : "text_completion"},
                                {"created", created},
                                {"model", job.model},
                                {"choices", OutJson::array()},
                                {"usage", usage_json(prompt, completion)}};
            send(u);
          }
          const std::string end = "data: [DONE]\n\n";
          sink.write(end.data(), end.size());
          sink.done();
          return true;
        },
        [progress](bool success) {
          if (!success) {
            for (auto & q : progress) *q->cancelled = true;
          }
        });
  }

  void models(httplib::Response & res) {
    const int64_t t = unix_time();
    nlohmann::json data = nlohmann::json::array();
    data.push_back({{"id", opts.model_name}, {"object", "model"}, {"created", t}, {"owned_by", "peft.cpp"}, {"root", opts.model_name},
                    {"parent", nullptr}});
    for (const auto & a : engine->adapters()) {
      data.push_back({{"id", a}, {"object", "model"}, {"created", t}, {"owned_by", "peft.cpp"}, {"root", a}, {"parent", opts.model_name}});
    }
    res.set_content(dump(nlohmann::json{{"object", "list"}, {"data", data}}), "application/json");
  }

  // A small JSON object body (the admin routes); false: the error is set.
  bool json_body(const httplib::Request & req, httplib::Response & res, const httplib::ContentReader & reader, nlohmann::json & j) {
    std::string body;
    if (!read_body(req, res, reader, body)) return false;
    try {
      j = parse_json(body, "the request body");
    } catch (const std::exception & e) {
      reply_error(res, {400, error_message(e)});
      return false;
    }
    return true;
  }

  void load(const httplib::Request & req, httplib::Response & res, const httplib::ContentReader & reader) {
    if (!opts.allow_adapter_loading) {
      return reply_error(res, {403, "loading adapters is disabled (start the server with --allow-adapter-loading)",
                               "permission_error"});
    }
    nlohmann::json j;
    if (!json_body(req, res, reader, j)) return;
    if (!j.is_object() || !j.contains("lora_name") || !j["lora_name"].is_string() || !j.contains("lora_path") ||
        !j["lora_path"].is_string()) {
      return reply_error(res, {400, "expected {\"lora_name\": NAME, \"lora_path\": PATH}"});
    }
    const std::string name = j["lora_name"], path = j["lora_path"];
    static const std::regex ok("[A-Za-z0-9][A-Za-z0-9._-]{0,127}");
    if (!std::regex_match(name, ok) || name == opts.model_name) {
      return reply_error(res, {400, "lora_name '" + name + "' must be letters, digits, '.', '_', '-' (and not the base's name)", "invalid_request_error", "lora_name"});
    }
    if (max_loaded_adapters > 0 && static_cast<int64_t>(engine->adapters().size()) >= max_loaded_adapters) {
      return reply_error(res, {400, str("already ", max_loaded_adapters, " adapters loaded (--max-loaded-adapters); unload one first")});
    }
    // the folder and every file in it must resolve to places inside the adapter root (no "..", no
    // symlinks out); one answer whether a path outside does not exist or is not allowed (no oracle)
    const std::string real = confined_folder(opts.adapter_root, path);
    if (real.empty()) {
      return reply_error(res, {400, "lora_path '" + path + "' is not an adapter folder inside the adapter root",
                               "invalid_request_error", "lora_path"});
    }
    try {
      engine->load_adapter(real, name);
    } catch (const std::exception & e) {
      return reply_error(res, {400, str("cannot load the adapter: ", error_message(e)), "invalid_request_error", "lora_path"});
    }
    res.set_content("Success: LoRA adapter '" + name + "' added successfully.", "text/plain");
  }

  void unload(const httplib::Request & req, httplib::Response & res, const httplib::ContentReader & reader) {
    if (!opts.allow_adapter_loading) {
      return reply_error(res, {403, "unloading adapters is disabled (start the server with --allow-adapter-loading)",
                               "permission_error"});
    }
    nlohmann::json j;
    if (!json_body(req, res, reader, j)) return;
    if (!j.is_object() || !j.contains("lora_name") || !j["lora_name"].is_string()) {
      return reply_error(res, {400, "expected {\"lora_name\": NAME}"});
    }
    const std::string name = j["lora_name"];
    if (!engine->has_adapter(name) || name == kBaseAdapter) {
      return reply_error(res, {404, "no adapter named '" + name + "' is loaded", "invalid_request_error", "lora_name", "model_not_found"});
    }
    try {
      engine->unload_adapter(name);
    } catch (const std::exception & e) {
      return reply_error(res, {400, error_message(e)});
    }
    res.set_content("Success: LoRA adapter '" + name + "' removed successfully.", "text/plain");
  }

  // The access log: one line per request on stderr, as llama.cpp's and vLLM's servers print (client, method,
  // path, status; a generation's model and prompt + completion tokens; the time to the response's last byte).
  // /health and /metrics only when they fail: monitors poll them.
  void log_access(const httplib::Request & req, const httplib::Response & res) {
    Access a = std::move(t_access);
    t_access = Access();
    if ((req.path == "/health" || req.path == "/metrics") && res.status < 400) return;
    std::string line = str("peft serve: ", loggable(req.remote_addr), " ", loggable(req.method), " ", loggable(req.path), " ", res.status);
    if (a.req == &req) {
      if (!a.model.empty()) line += " model=" + loggable(a.model);
      if (a.prompt_tokens >= 0) {
        int64_t completion = 0;
        for (const auto & p : a.progress) {
          std::lock_guard<std::mutex> g(p->mu);
          completion += p->tokens;
        }
        line += str(" prompt=", a.prompt_tokens, " completion=", completion);
      }
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - a.start).count();
      line += str(" ", ms, " ms");
    }
    line += "\n";
    std::lock_guard<std::mutex> g(log_mu);
    std::fwrite(line.data(), 1, line.size(), stderr);
  }

  void metrics(httplib::Response & res) {
    const EngineStats s = engine->stats();
    std::string out;
    auto metric = [&](const char * name, const char * type, const char * help, double v) {
      out += str("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ", v, "\n");
    };
    metric("peft_requests_total", "counter", "Completed generation requests (choices).", double(s.requests_done));
    metric("peft_prompt_tokens_total", "counter", "Prompt tokens of completed requests.", double(s.prompt_tokens));
    metric("peft_generation_tokens_total", "counter", "Generated tokens of completed requests.", double(s.completion_tokens));
    metric("peft_requests_running", "gauge", "Requests in the decode batch.", double(s.running));
    metric("peft_requests_waiting", "gauge", "Requests queued for a batch row.", double(s.waiting));
    metric("peft_decode_steps_total", "counter", "Batched decode steps.", double(s.decode_steps));
    metric("peft_prefill_calls_total", "counter", "Prefill chunks run.", double(s.prefill_calls));
    metric("peft_loaded_adapters", "gauge", "Adapters loaded.", double(s.adapters.size()));
    out += "# HELP peft_time_to_first_token_seconds Time from a request's arrival to its first token.\n"
           "# TYPE peft_time_to_first_token_seconds summary\n";
    out += str("peft_time_to_first_token_seconds_sum ", s.ttft_sum_s, "\npeft_time_to_first_token_seconds_count ", s.ttft_count, "\n");
    out += "# HELP peft_inter_token_latency_seconds Time between two tokens of a request.\n"
           "# TYPE peft_inter_token_latency_seconds summary\n";
    out += str("peft_inter_token_latency_seconds_sum ", s.itl_sum_s, "\npeft_inter_token_latency_seconds_count ", s.itl_count, "\n");
    out += "# HELP peft_http_responses_total HTTP responses by status code.\n# TYPE peft_http_responses_total counter\n";
    {
      std::lock_guard<std::mutex> g(stats_mu);
      for (const auto & kv : responses) out += str("peft_http_responses_total{code=\"", kv.first, "\"} ", kv.second, "\n");
    }
    res.set_content(out, "text/plain; version=0.0.4");
  }
};

Server::Server(std::shared_ptr<Engine> engine, std::shared_ptr<Tokenizer> tokenizer, std::optional<ChatTemplate> chat,
               ServerOptions opts)
    : impl_(std::make_unique<Impl>()) {
  Impl & I = *impl_;
  I.engine = std::move(engine);
  I.tok = std::move(tokenizer);
  I.chat = std::move(chat);
  I.opts = std::move(opts);
  I.max_loaded_adapters = I.opts.max_loaded_adapters;
  auto & h = I.http;
  // a worker per connection, started when needed up to the cap: idle or slow connections hold their own
  // worker, never the others' (cpp-httplib's fixed pool queued /health behind 64 idle sockets)
  const size_t threads = static_cast<size_t>(std::max(4, I.opts.threads));
  h.new_task_queue = [&I, threads] {
    I.workers = new ConnectionWorkers(threads);
    return I.workers;
  };
  h.set_payload_max_length(kMaxRequestBytes);
  // clients keep their connections (cpp-httplib closes one after 5 requests by default, and a client that
  // sends on a connection being closed sees no answer); a silent one is closed after the read timeout
  h.set_keep_alive_max_count(100000);
  h.set_keep_alive_timeout(30);
  h.set_read_timeout(10, 0);
  h.set_write_timeout(30, 0);
  // the longest prompt that can fit the context: no token decodes to more than max_token bytes (x4 for
  // normalizers that drop characters); a longer prompt is refused before it is tokenized
  size_t max_token = 1;
  for (int64_t t = 0; t < I.tok->vocab_size(); ++t) {
    try {
      max_token = std::max(max_token, I.tok->decode({t}, false).size());
    } catch (const std::exception &) {
      // (ids missing from a sparse vocabulary)
    }
  }
  I.max_prompt_bytes = static_cast<size_t>(I.engine->max_context()) * max_token * 4 + 4096;
  h.set_pre_routing_handler([&I](const httplib::Request & req, httplib::Response & res) {
    t_access = Access();
    t_access.req = &req;
    t_access.start = std::chrono::steady_clock::now();
    if (I.opts.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + I.opts.api_key) return httplib::Server::HandlerResponse::Unhandled;
    I.reply_error(res, {401, "Incorrect API key provided", "invalid_request_error", "", "invalid_api_key"});
    return httplib::Server::HandlerResponse::Handled;
  });
  h.set_logger([&I](const httplib::Request & req, const httplib::Response & res) {
    {
      std::lock_guard<std::mutex> g(I.stats_mu);
      ++I.responses[res.status];
    }
    if (I.opts.access_log) I.log_access(req, res);
  });
  h.set_exception_handler([&I](const httplib::Request &, httplib::Response & res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception & e) {
      what = error_message(e);
    } catch (...) {
    }
    I.reply_error(res, {500, what, "server_error"});
  });
  using Reader = httplib::ContentReader;
  h.Post("/v1/completions", [&I](const httplib::Request & q, httplib::Response & r, const Reader & b) { I.complete(q, r, b, false); });
  h.Post("/v1/chat/completions", [&I](const httplib::Request & q, httplib::Response & r, const Reader & b) { I.complete(q, r, b, true); });
  h.Get("/v1/models", [&I](const httplib::Request &, httplib::Response & r) { I.models(r); });
  h.Post("/v1/load_lora_adapter", [&I](const httplib::Request & q, httplib::Response & r, const Reader & b) { I.load(q, r, b); });
  h.Post("/v1/unload_lora_adapter", [&I](const httplib::Request & q, httplib::Response & r, const Reader & b) { I.unload(q, r, b); });
  h.Get("/health", [](const httplib::Request &, httplib::Response & r) { r.set_content("{\"status\": \"ok\"}", "application/json"); });
  h.Get("/metrics", [&I](const httplib::Request &, httplib::Response & r) { I.metrics(r); });
  // the chat page: index.html at /, the other files by name
  for (size_t i = 0; i < kChatPageFileCount; ++i) {
    const EmbeddedFile & f = kChatPageFiles[i];
    const std::string name = f.name;
    const std::string route = name == "index.html" ? "/" : std::regex_replace("/" + name, std::regex("\\."), "\\.");
    h.Get(route, [&f](const httplib::Request &, httplib::Response & r) { page_file(f, r); });
  }
}

Server::~Server() { stop(); }

void Server::bind() {
  Impl & I = *impl_;
  if (I.opts.port == 0) {
    I.bound_port = I.http.bind_to_any_port(I.opts.host);
    PEFT_CHECK(I.bound_port > 0, "serve: cannot bind to ", I.opts.host, " (any port)");
  } else {
    PEFT_CHECK(I.http.bind_to_port(I.opts.host, I.opts.port), "serve: cannot bind to ", I.opts.host, ":", I.opts.port,
               " (in use, or not an address of this machine)");
    I.bound_port = I.opts.port;
  }
  widen_listen_backlog(I.bound_port);
}

int Server::port() const { return impl_->bound_port; }

void Server::run() { impl_->http.listen_after_bind(); }

void Server::stop() {
  if (impl_ && impl_->http.is_running()) impl_->http.stop();
}

}  // namespace peft::serve
