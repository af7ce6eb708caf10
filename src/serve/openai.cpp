// OpenAI's completion and chat-completion shapes (see openai.h). Fields follow OpenAI's API reference;
// top_k, repetition_penalty and min_p are vLLM's extensions with its meanings (top_k -1 or 0 = off). Log-
// probabilities are vLLM's defaults: of the raw logits (before logit_bias, penalties and temperature); a
// completion's logprobs also hold the eos that ended it (as vLLM's do), its text does not.
#include "openai.h"

#include <cmath>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/tokenizer/decode-stream.h"
#include "peft/util/json-fields.h"
#include "peft/util/utf8.h"

namespace peft::serve {

OutJson error_json(const ApiError & e) {
  OutJson err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return {{"error", err}};
}

namespace {

[[noreturn]] void bad(const std::string & param, const std::string & message, int status = 400, const std::string & code = "") {
  throw ApiError{status, message, "invalid_request_error", param, code};
}

// a request's fields: "'temperature' must be in [0, 2], got 7" (an ApiError naming the parameter)
JsonFields request_fields(const nlohmann::json & j) {
  return JsonFields(j, [](const char * f, const std::string & m) { bad(f, str("'", f, "' ", m)); });
}

double number(const nlohmann::json & j, const char * f, double dflt, double lo, double hi) {
  const JsonFields r = request_fields(j);
  return r.has(f) ? r.number_in(f, lo, hi) : dflt;
}

int64_t integer(const nlohmann::json & j, const char * f, int64_t dflt, int64_t lo, int64_t hi) {
  const JsonFields r = request_fields(j);
  return r.has(f) ? r.integer(f, lo, hi) : dflt;
}

bool boolean(const nlohmann::json & j, const char * f, bool dflt) {
  const JsonFields r = request_fields(j);
  return r.has(f) ? r.boolean(f) : dflt;
}

std::vector<int64_t> token_array(const nlohmann::json & a, const Tokenizer & tok) {
  std::vector<int64_t> ids;
  for (const auto & x : a) {
    if (!x.is_number_integer()) bad("prompt", "a token-id prompt must hold integers");
    const int64_t id = x.get<int64_t>();
    if (id < 0 || id >= tok.vocab_size()) bad("prompt", str("token id ", id, " is outside the vocabulary [0, ", tok.vocab_size(), ")"));
    ids.push_back(id);
  }
  return ids;
}

// a message's content: a string, or OpenAI's list of parts of which the text parts are joined
std::string content_text(const nlohmann::json & c, size_t i) {
  if (c.is_null()) return "";
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad("messages", str("messages[", i, "].content must be a string or a list of parts"));
  std::string s;
  for (const auto & part : c) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
      bad("messages", str("messages[", i, "].content: only text parts are supported"));
    }
    s += part["text"].get<std::string>();
  }
  return s;
}

}  // namespace

Job parse_job(const std::string & body, bool chat, const std::string & base_name, const Engine & engine,
              const Tokenizer & tok, const std::optional<ChatTemplate> & tpl, size_t max_prompt_bytes,
              const GenerationDefaults & defaults) {
  nlohmann::json j;
  try {
    j = parse_json(body, "the request body");  // (nesting bounded: a deep body would overflow the stack)
  } catch (const std::exception & e) {
    bad("", error_message(e));
  }
  if (!j.is_object()) bad("", "the request body must be a JSON object");
  // text that cannot fit the context is refused before it is tokenized (tokenizing is linear, but a
  // 16 MiB prompt would still hold a worker for seconds)
  size_t text_bytes = 0;
  auto count = [&](size_t n, const char * field) {
    text_bytes += n;
    if (text_bytes > max_prompt_bytes) {
      bad(field, str("This model's maximum context length is ", engine.max_context(), " tokens; the prompt's ", text_bytes,
                     "+ bytes cannot fit it"),
          400, "context_length_exceeded");
    }
  };
  Job job;
  job.chat = chat;
  if (!j.contains("model") || !j["model"].is_string()) bad("model", "'model' must be a string (see GET /v1/models)");
  job.model = j["model"].get<std::string>();
  job.adapter = job.model == base_name ? std::string(kBaseAdapter) : job.model;
  if (job.adapter != kBaseAdapter && !engine.has_adapter(job.adapter)) {
    bad("model", str("The model '", job.model, "' does not exist"), 404, "model_not_found");
  }
  job.stream = boolean(j, "stream", false);
  if (j.contains("stream_options") && j["stream_options"].is_object()) job.include_usage = boolean(j["stream_options"], "include_usage", false);
  job.n = integer(j, "n", 1, 1, 16);
  // unsupported options that would change the answer are refused, never ignored
  SamplingParams & p = job.params;
  const JsonFields fields = request_fields(j);
  if (chat) {
    if (boolean(j, "echo", false)) bad("echo", "'echo' is not supported by chat completions");
    const bool lp = boolean(j, "logprobs", false);
    if (fields.has("top_logprobs")) {
      const int64_t top = fields.integer("top_logprobs", 0, kMaxTopLogprobs);
      if (!lp) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
      p.logprobs = top;
    } else if (lp) {
      p.logprobs = 0;
    }
  } else {
    job.echo = boolean(j, "echo", false);
    if (fields.has("logprobs")) p.logprobs = fields.integer("logprobs", 0, kMaxTopLogprobs);
    p.prompt_logprobs = job.echo && p.logprobs >= 0;
  }
  if (fields.has("response_format")) {
    const auto & rf = j["response_format"];
    if (!rf.is_object() || !rf.contains("type") || rf["type"] != "text") {
      bad("response_format", str("'response_format' ", rf.is_object() && rf.contains("type") ? rf["type"].dump() : rf.dump(),
                                 " is not supported (only {\"type\": \"text\"}: no structured output)"));
    }
  }
  if (fields.has("logit_bias")) {
    const auto & lb = j["logit_bias"];
    if (!lb.is_object()) bad("logit_bias", "'logit_bias' must be an object of token id -> bias in [-100, 100]");
    if (lb.size() > 1024) bad("logit_bias", "'logit_bias' has more than 1024 entries");
    for (const auto & kv : lb.items()) {
      const std::string & key = kv.key();
      int64_t id = -1;
      bool digits = !key.empty() && key.size() <= 12;
      for (char ch : key) digits = digits && ch >= '0' && ch <= '9';
      if (digits) id = std::stoll(key);
      if (id < 0 || id >= tok.vocab_size()) {
        bad("logit_bias", str("'logit_bias' key \"", key, "\" is not a token id in [0, ", tok.vocab_size(), ")"));
      }
      const auto & v = kv.value();
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < -100 || v.get<double>() > 100) {
        bad("logit_bias", str("'logit_bias' for token ", key, " must be a number in [-100, 100], got ", v.dump()));
      }
      p.logit_bias.emplace_back(id, v.get<float>());
    }
  }
  p.min_p = number(j, "min_p", defaults.min_p.value_or(0), 0, 1);
  if (integer(j, "best_of", 1, 1, 1) != 1) bad("best_of", "'best_of' is not supported");
  if (number(j, "presence_penalty", 0, -2, 2) != 0) bad("presence_penalty", "'presence_penalty' is not supported");
  if (number(j, "frequency_penalty", 0, -2, 2) != 0) bad("frequency_penalty", "'frequency_penalty' is not supported");
  if (j.contains("tools") && !j["tools"].is_null() && !j["tools"].empty()) bad("tools", "'tools' is not supported");
  p.temperature = number(j, "temperature", defaults.temperature.value_or(1.0), 0, 2);
  p.top_p = number(j, "top_p", defaults.top_p.value_or(1.0), 0, 1);
  if (p.top_p == 0) bad("top_p", "'top_p' must be greater than 0");
  p.top_k = integer(j, "top_k", defaults.top_k.value_or(0), -1, 1 << 20);
  if (p.top_k < 0) p.top_k = 0;
  p.repetition_penalty = number(j, "repetition_penalty", defaults.repetition_penalty.value_or(1.0), 1e-6, 100);
  if (request_fields(j).has("seed")) {
    p.has_seed = true;
    p.seed = static_cast<uint64_t>(request_fields(j).integer("seed"));
  }
  if (j.contains("stop") && !j["stop"].is_null()) {
    const auto & s = j["stop"];
    if (s.is_string()) {
      p.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (const auto & x : s) {
        if (!x.is_string()) bad("stop", "'stop' must be a string or a list of up to 4 strings");
        p.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or a list of up to 4 strings");
    }
  }
  // the prompt(s)
  if (chat) {
    if (!tpl) bad("messages", "this model has no chat template (tokenizer_config.json's chat_template)");
    if (!j.contains("messages") || !j["messages"].is_array() || j["messages"].empty()) {
      bad("messages", "'messages' must be a non-empty list of {\"role\", \"content\"}");
    }
    nlohmann::json msgs = nlohmann::json::array();
    for (size_t i = 0; i < j["messages"].size(); ++i) {
      const auto & m = j["messages"][i];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) bad("messages", str("messages[", i, "] needs a 'role'"));
      std::string content = content_text(m.contains("content") ? m["content"] : nlohmann::json(), i);
      count(content.size(), "messages");
      msgs.push_back({{"role", m["role"]}, {"content", std::move(content)}});
    }
    std::string text;
    try {
      text = tpl->render(msgs, /*add_generation_prompt=*/true);
    } catch (const std::exception & e) {
      bad("messages", str("the chat template cannot render these messages: ", e.what()));
    }
    job.prompts.push_back(tok.encode(text, /*add_special=*/false));
  } else {
    if (!j.contains("prompt")) bad("prompt", "'prompt' is required");
    const auto & pr = j["prompt"];
    if (pr.is_string()) {
      count(pr.get_ref<const std::string &>().size(), "prompt");  // (each prompt on its own)
      job.prompts.push_back(tok.encode(pr.get<std::string>(), /*add_special=*/true));
    } else if (pr.is_array() && !pr.empty() && pr[0].is_number_integer()) {
      job.prompts.push_back(token_array(pr, tok));
    } else if (pr.is_array() && !pr.empty()) {
      for (const auto & x : pr) {
        if (x.is_string()) {
          text_bytes = 0;
          count(x.get_ref<const std::string &>().size(), "prompt");
          job.prompts.push_back(tok.encode(x.get<std::string>(), true));
        } else if (x.is_array()) {
          job.prompts.push_back(token_array(x, tok));
        } else {
          bad("prompt", "'prompt' must be a string, a list of strings, or token ids");
        }
      }
    } else {
      bad("prompt", "'prompt' must be a string, a list of strings, or token ids");
    }
    if (job.prompts.size() * job.n > 64) bad("prompt", "at most 64 completions per request");
  }
  const int64_t ctx = engine.max_context();
  int64_t longest = 0;
  for (const auto & pr : job.prompts) {
    if (pr.empty()) bad(chat ? "messages" : "prompt", "the prompt is empty");
    longest = std::max<int64_t>(longest, pr.size());
  }
  if (longest >= ctx) {
    bad(chat ? "messages" : "prompt", str("This model's maximum context length is ", ctx, " tokens; the prompt has ", longest, " tokens"),
        400, "context_length_exceeded");
  }
  const char * mt = chat && j.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  // (without one: OpenAI's 16 for completions, the rest of the context for chat; generation_config.json's
  // max_new_tokens instead where the model has one, within the context as vLLM caps it)
  int64_t max_tokens_default = chat ? ctx - longest : 16;
  if (defaults.max_new_tokens) max_tokens_default = std::min<int64_t>(std::max<int64_t>(*defaults.max_new_tokens, chat ? 1 : 0), ctx - longest);
  p.max_tokens = integer(j, mt, max_tokens_default, chat ? 1 : 0, 1 << 30);
  if (p.max_tokens == 0 && !job.echo) bad(mt, "'max_tokens' 0 (scoring the prompt, nothing generated) needs 'echo': true");
  if (longest + p.max_tokens > ctx) {
    bad(mt, str("This model's maximum context length is ", ctx, " tokens; the prompt (", longest, " tokens) plus ", mt, " (",
                p.max_tokens, ") exceeds it"),
        400, "context_length_exceeded");
  }
  return job;
}

std::string echo_text(const Tokenizer & tok, const std::vector<int64_t> & ids, std::vector<size_t> & offsets) {
  DecodeStream ds(tok);
  std::string text;
  offsets.clear();
  for (int64_t id : ids) {
    offsets.push_back(text.size());
    text += ds.step(id);
  }
  return text + ds.flush();
}

namespace {

// a token's text as the tokenizer gives it for that id alone (special tokens spelled out)
std::string token_bytes(const Tokenizer & tok, int64_t id) {
  try {
    return tok.decode({id}, /*skip_special=*/false);
  } catch (const std::exception &) {
    return "";  // (an id missing from a sparse vocabulary)
  }
}

OutJson byte_values(const std::string & s) {
  OutJson b = OutJson::array();
  for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
  return b;
}

}  // namespace

OutJson legacy_logprobs_json(const Tokenizer & tok, const std::vector<TokenLogprob> & lps, const std::vector<size_t> & offsets) {
  OutJson tokens = OutJson::array(), values = OutJson::array(), tops = OutJson::array(),
                 offs = OutJson::array();
  for (size_t i = 0; i < lps.size(); ++i) {
    const TokenLogprob & lp = lps[i];
    tokens.push_back(utf8_lossy(token_bytes(tok, lp.id)));
    offs.push_back(i < offsets.size() ? offsets[i] : 0);
    if (!lp.has_logprob) {
      values.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    values.push_back(lp.logprob);
    OutJson top = OutJson::object();
    for (const auto & t : lp.top) {
      const std::string key = utf8_lossy(token_bytes(tok, t.first));
      if (!top.contains(key)) top[key] = t.second;  // (two ids of one text: the likelier one)
    }
    // OpenAI's rule: the token's own is always there, so up to logprobs + 1 entries
    if (!top.contains(tokens.back().get<std::string>())) top[tokens.back().get<std::string>()] = lp.logprob;
    tops.push_back(top);
  }
  return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", offs}};
}

OutJson chat_logprobs_json(const Tokenizer & tok, const std::vector<TokenLogprob> & lps) {
  OutJson content = OutJson::array();
  for (const TokenLogprob & lp : lps) {
    const std::string b = token_bytes(tok, lp.id);
    OutJson top = OutJson::array();
    for (const auto & t : lp.top) {
      const std::string tb = token_bytes(tok, t.first);
      top.push_back({{"token", utf8_lossy(tb)}, {"logprob", t.second}, {"bytes", byte_values(tb)}});
    }
    content.push_back({{"token", utf8_lossy(b)}, {"logprob", lp.logprob}, {"bytes", byte_values(b)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

OutJson usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}};
}

OutJson response_json(const Job & job, const std::string & id, int64_t created, const std::vector<Choice> & choices) {
  OutJson cs = OutJson::array();
  int64_t prompt = 0, completion = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice & c = choices[i];
    if (job.chat) {
      cs.push_back({{"index", i}, {"message", {{"role", "assistant"}, {"content", c.text}}}, {"logprobs", c.logprobs},
                    {"finish_reason", c.finish_reason}});
    } else {
      cs.push_back({{"index", i}, {"text", c.text}, {"logprobs", c.logprobs}, {"finish_reason", c.finish_reason}});
    }
    completion += c.completion_tokens;
  }
  // each prompt counted once (n choices of one prompt share it)
  for (size_t i = 0; i < choices.size(); i += job.n) prompt += choices[i].prompt_tokens;
  return {{"id", id},
          {"object", job.chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", job.model},
          {"choices", cs},
          {"usage", usage_json(prompt, completion)}};
}

OutJson chunk_json(const Job & job, const std::string & id, int64_t created, int64_t index, const std::string & delta,
                          const std::optional<std::string> & finish_reason, bool first, const OutJson & logprobs) {
  OutJson choice = {{"index", index}, {"logprobs", logprobs}};
  choice["finish_reason"] = finish_reason ? OutJson(*finish_reason) : OutJson(nullptr);
  if (job.chat) {
    OutJson d = OutJson::object();
    if (first) d["role"] = "assistant";
    if (!delta.empty() || (first && !finish_reason)) d["content"] = delta;
    choice["delta"] = d;
  } else {
    choice["text"] = delta;
  }
  return {{"id", id},
          {"object", job.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", job.model},
          {"choices", OutJson::array({choice})}};
}

}  // namespace peft::serve
