// peft generate: sample text from a model (with adapters), streaming tokens to the terminal.
//  - --prompt TEXT ...: plain prompts (a batch, left padded), echoed with their continuations;
//  - --chat: the prompts are user messages rendered through the model's chat template (tokenizer_config.json's
//    "chat_template", with --system first); without --prompt an interactive conversation on stdin
//    (/clear, /exit), the whole history rendered again each turn;
//  - --prompts-file IN.jsonl --out OUT.jsonl: offline batch inference, one JSON line out per line in.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <sstream>

#include "adapter-options.h"
#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/data/chat-template.h"
#include "peft/error.h"
#include "peft/generate/generate.h"
#include "peft/generate/generation-config-file.h"
#include "peft/io/files.h"
#include "peft/tokenizer/tokenizer.h"

namespace peft::cli {

namespace {

bool is_file(const std::string & path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

void add_unique(std::vector<int64_t> & ids, int64_t id) {
  if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
}

// generation_config.json's defaults (transformers' GenerationConfig: what generate() uses where the call does
// not say): max_new_tokens, do_sample, and when sampling temperature, top_k and top_p; repetition_penalty
// always. A field applies only where its flag was not given (the flags win: --do-sample=false for greedy);
// absent fields leave the command's own defaults.
void apply_generation_defaults(const GenerationDefaults & d, const std::string & model_dir, const CLI::App & cmd,
                               GenerationConfig & gen) {
  auto unset = [&](const char * flag) { return cmd.count(flag) == 0; };
  if (d.max_new_tokens && unset("--max-new-tokens")) gen.max_new_tokens = *d.max_new_tokens;
  if (d.do_sample && unset("--do-sample")) gen.do_sample = *d.do_sample;
  if (d.repetition_penalty && unset("--repetition-penalty")) gen.repetition_penalty = *d.repetition_penalty;
  if (!gen.do_sample) return;  // (greedy: transformers ignores the sampling fields, as generate does here)
  if (d.temperature && unset("--temperature")) {
    PEFT_CHECK(*d.temperature > 0, model_dir, "/generation_config.json: field 'temperature' must be greater than 0 when sampling, got ",
               *d.temperature);
    gen.temperature = *d.temperature;
  }
  if (d.top_k && unset("--top-k")) gen.top_k = *d.top_k;
  if (d.top_p && unset("--top-p")) gen.top_p = *d.top_p;
}

// The chat template's end of turn: tokenizer_config.json's eos_token (a string or {"content": ...}), when it
// is one token of the tokenizer.
void add_template_eos(const std::string & model_dir, const Tokenizer & tok, std::vector<int64_t> & eos) {
  const std::string path = model_dir + "/tokenizer_config.json";
  if (!is_file(path)) return;
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object() || !j.contains("eos_token")) return;
  const auto & e = j["eos_token"];
  std::string s;
  if (e.is_string()) s = e.get<std::string>();
  if (e.is_object() && e.contains("content") && e["content"].is_string()) s = e["content"].get<std::string>();
  if (!s.empty()) add_unique(eos, tok.token_id(s));
}

ChatTemplate load_template(const std::string & model_dir, const std::string & why) {
  try {
    return ChatTemplate::from_model(model_dir);
  } catch (const Error & e) {
    fail(str(why, " needs the model's chat template (\"chat_template\" in ", model_dir, "/tokenizer_config.json): ",
             e.what()));
  }
}

// The earliest stop string in `text` (npos: none).
size_t find_stop(const std::string & text, const std::vector<std::string> & stops) {
  size_t at = std::string::npos;
  for (const auto & s : stops) {
    if (s.empty()) continue;
    const size_t p = text.find(s);
    if (p != std::string::npos) at = std::min(at, p);
  }
  return at;
}

// What a row's new tokens say: the text (without a final eos token, cut before a stop string, as vLLM and
// the OpenAI API return it) and why generation ended.
struct Completion {
  std::string text;
  bool stopped = false;  // an eos token or a stop string ended it ("stop"), else max_new_tokens ("length")
};

Completion completion_of(const Tokenizer & tok, std::vector<int64_t> ids, const GenerationConfig & gen) {
  Completion c;
  if (!ids.empty() && std::find(gen.eos_token_ids.begin(), gen.eos_token_ids.end(), ids.back()) != gen.eos_token_ids.end()) {
    ids.pop_back();
    c.stopped = true;
  }
  c.text = tok.decode(ids);
  const size_t at = find_stop(c.text, gen.stop_strings);
  if (at != std::string::npos) {
    c.text.resize(at);
    c.stopped = true;
  }
  return c;
}

// Prints one row's completion as its tokens come: the text that completion_of will keep, holding back an
// end that may still become a stop string, and a partial UTF-8 character (the text must grow as a prefix).
class Streamer {
 public:
  Streamer(const Tokenizer & tok, const GenerationConfig & gen) : tok_(tok), gen_(gen) {}
  void token(int64_t id) {
    ids_.push_back(id);
    Completion c = completion_of(tok_, ids_, gen_);
    if (!c.stopped) {  // hold back the longest end of the text that starts a stop string
      size_t held = 0;
      for (const auto & s : gen_.stop_strings) {
        for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), c.text.size()); k > held; --k) {
          if (c.text.compare(c.text.size() - k, k, s, 0, k) == 0) {
            held = k;
            break;
          }
        }
      }
      c.text.resize(c.text.size() - held);
    }
    show(c.text);
  }
  // The rest of the final text, printed.
  void finish(const std::string & text) { show(text); }

 private:
  void show(const std::string & text) {
    if (text.size() > shown_.size() && text.compare(0, shown_.size(), shown_) == 0) {
      std::cout << text.substr(shown_.size()) << std::flush;
      shown_ = text;
    }
  }
  const Tokenizer & tok_;
  const GenerationConfig & gen_;
  std::vector<int64_t> ids_;
  std::string shown_;
};

// One line of a --prompts-file: the line as read (its keys in order, passed through) and the prompt's ids.
struct FileItem {
  size_t line = 0;
  nlohmann::ordered_json in;
  std::vector<int64_t> ids;
};

std::vector<FileItem> read_prompts_file(const std::string & path, const Tokenizer & tok, const std::string & model_dir,
                                        bool chat, const std::string & system, bool has_system,
                                        std::unique_ptr<ChatTemplate> & tpl) {
  std::vector<FileItem> items;
  std::istringstream lines(read_file(path));
  std::string line;
  size_t n = 0;
  while (std::getline(lines, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are skipped
    const std::string where = str(path, ":", n);
    parse_json(line, where);  // the project's limits (depth, duplicate keys) and errors naming the line
    FileItem it;
    it.line = n;
    it.in = nlohmann::ordered_json::parse(line);
    PEFT_CHECK(it.in.is_object(), where, ": expected a JSON object {\"prompt\": TEXT} or {\"messages\": [...]}");
    for (auto kv = it.in.begin(); kv != it.in.end(); ++kv) {
      PEFT_CHECK(kv.key() == "prompt" || kv.key() == "messages" || kv.key() == "id", where, ": unknown field '",
                 kv.key(), "' (a line has \"prompt\" or \"messages\", and optionally \"id\")");
    }
    const bool has_prompt = it.in.contains("prompt"), has_messages = it.in.contains("messages");
    PEFT_CHECK(has_prompt != has_messages, where, ": a line needs exactly one of \"prompt\" and \"messages\"");
    std::string text;
    bool templated = has_messages || chat;
    if (has_prompt) {
      PEFT_CHECK(it.in["prompt"].is_string(), where, ": \"prompt\" must be a string");
      PEFT_CHECK(!it.in["prompt"].get<std::string>().empty(), where, ": \"prompt\" is empty");
      text = it.in["prompt"].get<std::string>();
    }
    if (templated) {
      nlohmann::ordered_json messages = nlohmann::ordered_json::array();
      if (has_messages) {
        messages = it.in["messages"];
        PEFT_CHECK(messages.is_array() && !messages.empty(), where,
                   ": \"messages\" must be a non-empty array of {\"role\", \"content\"} objects");
        for (const auto & m : messages) {
          PEFT_CHECK(m.is_object() && m.contains("role") && m["role"].is_string(), where,
                     ": every message must be an object with a string \"role\"");
        }
      } else {
        if (has_system) messages.push_back({{"role", "system"}, {"content", system}});
        messages.push_back({{"role", "user"}, {"content", text}});
      }
      if (!tpl) tpl = std::make_unique<ChatTemplate>(load_template(model_dir, str(where, ": \"messages\"")));
      try {
        text = tpl->render(messages, /*add_generation_prompt=*/true);
      } catch (const Error & e) {
        fail(str(where, ": the chat template cannot render these messages: ", e.what()));
      }
    }
    // a rendered template carries its own special tokens (bos_token), as the server encodes it
    it.ids = tok.encode(text, /*add_special=*/!templated);
    PEFT_CHECK(!it.ids.empty(), where, ": the prompt has no tokens");
    items.push_back(std::move(it));
  }
  PEFT_CHECK(!items.empty(), path, ": no prompts (expected JSON lines {\"prompt\": TEXT} or {\"messages\": [...]})");
  return items;
}

}  // namespace

Runner add_generate(CLI::App & app) {
  struct Opts {
    std::string model, dtype = "float32", system, prompts_file, out;
    std::vector<std::string> prompts;
    GenerationConfig gen;
    bool no_cache = false, compile = false, ids_out = false, chat = false, byte_tokenizer = false;
    int64_t batch_size = 8;
    CommonOptions common;
    QuantFlags quant;
    AdapterOptions adapters;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("generate", "generate text (prompts batched with left padding)");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--prompt", o->prompts, "prompt text (repeatable: a batch; required unless --chat or --prompts-file)");
  cmd->add_flag("--chat", o->chat,
                "prompts are user messages in the model's chat template; without --prompt: an interactive chat on "
                "stdin (/clear, /exit)");
  cmd->add_option("--system", o->system, "with --chat: a system message first");
  cmd->add_option("--prompts-file", o->prompts_file,
                  "JSON lines {\"prompt\": TEXT} or {\"messages\": [...]} (optional \"id\"): completions to --out");
  cmd->add_option("--out", o->out, "with --prompts-file: the JSON-lines output, one line per prompt");
  cmd->add_option("--batch-size", o->batch_size, "with --prompts-file: prompts generated together (default 8)");
  cmd->add_option("--max-new-tokens", o->gen.max_new_tokens,
                  "tokens to generate at most (default: generation_config.json's max_new_tokens, else 32)");
  cmd->add_flag("--do-sample", o->gen.do_sample,
                "sample instead of greedy decoding (default: generation_config.json's do_sample; --do-sample=false "
                "for greedy)");
  cmd->add_option("--temperature", o->gen.temperature, "sampling temperature (default: generation_config.json's, else 1)");
  cmd->add_option("--top-k", o->gen.top_k, "keep the k most likely tokens (0 = off; default: generation_config.json's, else 0)");
  cmd->add_option("--top-p", o->gen.top_p, "nucleus sampling threshold (1 = off; default: generation_config.json's, else 1)");
  cmd->add_option("--repetition-penalty", o->gen.repetition_penalty, "penalty for tokens already present (default: generation_config.json's, else 1)");
  cmd->add_option("--stop", o->gen.stop_strings, "stop when the text contains this (repeatable)");
  cmd->add_option("--seed", o->gen.seed, "sampling seed");
  cmd->add_flag("--no-cache", o->no_cache, "recompute the whole sequence every step");
  cmd->add_flag("--print-ids", o->ids_out, "also print the generated token ids as JSON");
  cmd->add_option("--dtype", o->dtype, kDtypeHelp);
  cmd->add_flag("--compile", o->compile, "generate with the compiled model");
  cmd->add_flag("--byte-tokenizer", o->byte_tokenizer, "tokenize text as bytes (tiny test models without tokenizer.json)");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  add_adapter_options(*cmd, o->adapters);
  return [o, cmd]() {
    const bool from_file = cmd->count("--prompts-file") > 0, has_system = cmd->count("--system") > 0;
    PEFT_USAGE(!o->prompts.empty() || o->chat || from_file,
               "--prompt is required (unless --chat or --prompts-file is given)");
    PEFT_USAGE(!from_file || o->prompts.empty(), "--prompt and --prompts-file do not go together");
    PEFT_USAGE(!from_file || cmd->count("--out") > 0, "--prompts-file needs --out FILE.jsonl");
    PEFT_USAGE(from_file || cmd->count("--out") == 0, "--out applies only with --prompts-file");
    PEFT_USAGE(from_file || cmd->count("--batch-size") == 0, "--batch-size applies only with --prompts-file");
    PEFT_USAGE(o->chat || !has_system, "--system applies only with --chat");
    PEFT_USAGE(!from_file || !o->ids_out, "--print-ids does not apply with --prompts-file (the output has token counts)");
    PEFT_USAGE(o->batch_size >= 1, "--batch-size must be >= 1");
    const bool interactive = o->chat && o->prompts.empty() && !from_file;
    const at::ScalarType dtype = resolve_dtype(o->dtype, o->model);
    if (from_file) {
      std::vector<std::string> inputs = {o->model, o->prompts_file};
      for (const auto & a : o->adapters.adapters) inputs.push_back(a.substr(0, a.find('=')));
      check_output_file("--out", o->out, inputs);
    }
    const ModelConfig mcfg = ModelConfig::load(o->model);
    const GenerationDefaults file_defaults = read_generation_config(o->model, mcfg.vocab_size);
    apply_generation_defaults(file_defaults, o->model, *cmd, o->gen);  // (where no flag says otherwise)
    PEFT_USAGE(o->gen.max_new_tokens >= 0 && o->gen.max_new_tokens <= mcfg.max_position_embeddings,
               "--max-new-tokens must be in [0, ", mcfg.max_position_embeddings, "] (the model's positions)");
    // the template and the prompts file are read before the model: their errors come first
    std::unique_ptr<ChatTemplate> tpl;
    if (o->chat) tpl = std::make_unique<ChatTemplate>(load_template(o->model, "--chat"));
    auto tok = load_tokenizer(o->model, mcfg.vocab_size, o->byte_tokenizer);
    std::vector<FileItem> items;
    if (from_file) items = read_prompts_file(o->prompts_file, *tok, o->model, o->chat, o->system, has_system, tpl);
    apply_common_options(o->common);
    const RunModel run = load_run_model(o->model, dtype, o->quant, o->adapters, o->compile);
    const std::shared_ptr<PeftModel> pm = run.model;
    GenerationConfig gen = o->gen;
    gen.use_cache = !o->no_cache;
    gen.eos_token_ids = pm->base_model().config().eos_token_ids;
    for (int64_t id : file_defaults.eos_token_ids) add_unique(gen.eos_token_ids, id);  // generate() stops on them too
    if (tpl) add_template_eos(o->model, *tok, gen.eos_token_ids);  // the end of an assistant turn
    gen.pad_token_id = std::max<int64_t>(0, pm->base_model().config().pad_token_id);
    gen.virtual_tokens = pm->num_virtual_tokens();  // a prompt-learning adapter's, in the cache's first slots
    gen.fill_virtual_tokens = [pm](KVCache & c) { pm->fill_virtual_tokens(c); };
    // the adapters' model (an adapter's layer_replication gives it another layer stack than `base`)
    const PeftLogitsFn & forward = run.forward;
    const ModelConfig & cfg = pm->base_model().config();
    auto decode = [&](const std::vector<int64_t> & ids) { return tok->decode(ids); };
    auto run_batch = [&](const std::vector<std::vector<int64_t>> & prompts, const std::function<void(size_t, int64_t)> & on_token) {
      return generate([&forward](const ForwardInput & in) { return forward(PeftInput(in)); }, cfg, pm->base_model().options(),
                      prompts, gen, on_token, decode);
    };
    const int64_t room = cfg.max_position_embeddings - gen.virtual_tokens - gen.max_new_tokens;

    if (from_file) {
      for (const auto & it : items) {
        PEFT_CHECK(static_cast<int64_t>(it.ids.size()) <= room, o->prompts_file, ":", it.line, ": a prompt of ",
                   it.ids.size(), " tokens plus --max-new-tokens ", gen.max_new_tokens, " exceeds the model's ",
                   cfg.max_position_embeddings, " positions (max_position_embeddings in config.json)");
      }
      std::string text;
      for (size_t start = 0; start < items.size(); start += o->batch_size) {
        const size_t end = std::min(items.size(), start + static_cast<size_t>(o->batch_size));
        std::vector<std::vector<int64_t>> prompts;
        for (size_t i = start; i < end; ++i) prompts.push_back(items[i].ids);
        const auto out = run_batch(prompts, {});
        for (size_t i = start; i < end; ++i) {
          const Completion c = completion_of(*tok, out[i - start], gen);
          nlohmann::ordered_json row;
          if (items[i].in.contains("id")) row["id"] = items[i].in["id"];
          if (items[i].in.contains("prompt")) row["prompt"] = items[i].in["prompt"];
          if (items[i].in.contains("messages")) row["messages"] = items[i].in["messages"];
          row["completion"] = c.text;
          row["prompt_tokens"] = items[i].ids.size();
          row["completion_tokens"] = out[i - start].size();
          row["finish_reason"] = c.stopped ? "stop" : "length";
          text += row.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
        }
      }
      write_file_atomic(o->out, text);
      std::cerr << "peft generate: " << items.size() << " completions written to " << o->out << "\n";
      return 0;
    }

    if (o->chat) {
      nlohmann::ordered_json start = nlohmann::ordered_json::array();
      if (has_system) start.push_back({{"role", "system"}, {"content", o->system}});
      auto conversation_ids = [&](const nlohmann::ordered_json & messages) {
        return tok->encode(tpl->render(messages, /*add_generation_prompt=*/true), /*add_special=*/false);
      };
      if (!interactive) {
        std::vector<std::vector<int64_t>> prompts;
        for (const auto & p : o->prompts) {
          nlohmann::ordered_json messages = start;
          messages.push_back({{"role", "user"}, {"content", p}});
          prompts.push_back(conversation_ids(messages));
        }
        const bool stream = prompts.size() == 1;
        Streamer streamer(*tok, gen);
        auto out = run_batch(prompts, [&](size_t, int64_t id) {
          if (stream) streamer.token(id);
        });
        for (size_t i = 0; i < out.size(); ++i) {
          const Completion c = completion_of(*tok, out[i], gen);
          if (stream) {
            streamer.finish(c.text);
            std::cout << "\n";
          } else {
            std::cout << "[" << i << "] " << c.text << "\n";
          }
          if (o->ids_out) std::cout << nlohmann::json(out[i]).dump() << "\n";
        }
        return 0;
      }
      // the interactive loop: a user line, the streamed answer, kept in the history (rendered whole each turn)
      const bool tty = ::isatty(STDIN_FILENO);
      if (tty) std::cerr << "(chat with " << o->model << ": /clear starts over, /exit or end of input quits)\n";
      nlohmann::ordered_json history = start;
      std::string line;
      while (true) {
        if (tty) std::cout << "> " << std::flush;
        if (!std::getline(std::cin, line)) {
          if (tty) std::cout << "\n";  // end of input (Ctrl-D) after the "> "
          break;
        }
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line == "/exit") break;
        if (line == "/clear") {
          history = start;
          if (tty) std::cerr << "(conversation cleared)\n";
          continue;
        }
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        nlohmann::ordered_json messages = history;
        messages.push_back({{"role", "user"}, {"content", line}});
        std::vector<int64_t> ids;
        try {
          ids = conversation_ids(messages);
        } catch (const Error & e) {
          std::cerr << "error: " << e.what() << "\n";
          continue;
        }
        if (static_cast<int64_t>(ids.size()) > room) {
          std::cerr << "error: the conversation is " << ids.size() << " tokens; with --max-new-tokens " << gen.max_new_tokens
                    << " it exceeds the model's " << cfg.max_position_embeddings
                    << " positions: /clear to start over\n";
          continue;
        }
        Streamer streamer(*tok, gen);
        const auto out = run_batch({ids}, [&](size_t, int64_t id) { streamer.token(id); });
        const Completion c = completion_of(*tok, out[0], gen);
        streamer.finish(c.text);
        std::cout << "\n";
        if (o->ids_out) std::cout << nlohmann::json(out[0]).dump() << "\n";
        std::cout << std::flush;
        messages.push_back({{"role", "assistant"}, {"content", c.text}});
        history = std::move(messages);
      }
      return 0;
    }

    std::vector<std::vector<int64_t>> prompts;
    for (const auto & p : o->prompts) prompts.push_back(tok->encode(p, /*add_special=*/true));
    const bool stream = prompts.size() == 1;
    std::string shown;
    std::vector<int64_t> so_far;
    auto on_token = [&](size_t, int64_t id) {
      if (!stream) return;
      so_far.push_back(id);
      std::string text = tok->decode(so_far);
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
        std::cout << text.substr(shown.size()) << std::flush;
        shown = text;
      }
    };
    if (stream) std::cout << o->prompts[0] << std::flush;
    auto out = run_batch(prompts, on_token);
    if (stream) std::cout << "\n";
    for (size_t i = 0; i < out.size(); ++i) {
      if (!stream) std::cout << "[" << i << "] " << o->prompts[i] << tok->decode(out[i]) << "\n";
      if (o->ids_out) std::cout << nlohmann::json(out[i]).dump() << "\n";
    }
    return 0;
  };
}

}  // namespace peft::cli
