// peft serve: the OpenAI-compatible multi-adapter server (include/peft/serve/server.h) on 127.0.0.1 by
// default; SIGINT / SIGTERM stop it cleanly (running requests end as cancelled).
#include <sys/stat.h>

#include <csignal>
#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/io/files.h"
#include "peft/serve/server.h"
#include "quant-options.h"

namespace peft::cli {

namespace {
serve::Server * g_server = nullptr;
extern "C" void on_signal(int) {
  if (g_server) g_server->stop();
}
// "temperature 0.6, top_p 0.9, max_tokens 64": the defaults a request gets where it does not say
std::string describe_defaults(const GenerationDefaults & d) {
  std::string s;
  auto add = [&](const char * name, const std::string & v) { s += (s.empty() ? "" : ", ") + std::string(name) + " " + v; };
  if (d.temperature) add("temperature", str(*d.temperature));
  if (d.top_p) add("top_p", str(*d.top_p));
  if (d.top_k) add("top_k", str(*d.top_k));
  if (d.min_p) add("min_p", str(*d.min_p));
  if (d.repetition_penalty) add("repetition_penalty", str(*d.repetition_penalty));
  if (d.max_new_tokens) add("max_tokens", str(*d.max_new_tokens));
  return s;
}
}  // namespace

Runner add_serve(CLI::App & app) {
  struct Opts {
    std::string model, name, dtype = "float32", generation_config = "auto";
    std::vector<std::string> adapters;
    bool compile = false, byte_tokenizer = false;
    serve::EngineOptions engine;
    serve::ServerOptions server;
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("serve", "serve the model and its adapters over OpenAI's HTTP API");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--adapter", o->adapters, "PATH[=NAME] a PEFT adapter folder served as model NAME (repeatable)");
  cmd->add_option("--served-model-name", o->server.model_name, "the base model's name in requests (default: the folder's name)");
  cmd->add_option("--dtype", o->dtype, kDtypeHelp);
  cmd->add_flag("--compile", o->compile, "run decode and prefill as compiled graphs");
  cmd->add_flag("--byte-tokenizer", o->byte_tokenizer, "tokenize text as bytes (tiny test models without tokenizer.json)");
  cmd->add_option("--host", o->server.host, "address to listen on (default 127.0.0.1)");
  cmd->add_option("--port", o->server.port, "port (default 8000; 0 = any free port, printed)");
  cmd->add_option("--max-batch", o->engine.max_batch, "rows decoded together (default 8)")->check(CLI::Range(1, 256));
  cmd->add_option("--max-context", o->engine.max_context, "tokens per request, prompt + completion (default: the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--prefill-chunk", o->engine.prefill_chunk, "prompt tokens per prefill step (default 32)")->check(CLI::Range(1, 4096));
  cmd->add_option("--max-loaded-adapters", o->server.max_loaded_adapters, "refuse loading beyond N adapters (default: no limit)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--api-key", o->server.api_key, "require 'Authorization: Bearer KEY' on /v1 requests");
  cmd->add_flag("--allow-adapter-loading", o->server.allow_adapter_loading, "enable /v1/load_lora_adapter and /v1/unload_lora_adapter");
  cmd->add_option("--adapter-root", o->server.adapter_root, "folder that runtime-loaded adapters must be in (default: .)");
  cmd->add_option("--http-threads", o->server.threads, "the most HTTP connections served at once, a worker thread each, started when needed (default 512)")
      ->check(CLI::Range(4, 4096));
  cmd->add_option("--generation-config", o->generation_config,
                  "auto (default): requests' defaults from the model's generation_config.json (temperature, top_p, top_k, "
                  "min_p, repetition_penalty, max_new_tokens as max_tokens), as vLLM; vllm: OpenAI's defaults; or a folder "
                  "holding a generation_config.json");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  return [o]() {
    const at::ScalarType dtype = resolve_dtype(o->dtype, o->model);
    apply_common_options(o->common);
    if (o->server.model_name.empty()) o->server.model_name = base_of(o->model);
    // the tokenizer before the model: a folder without tokenizer.json fails at once (unless --byte-tokenizer)
    const int64_t vocab = ModelConfig::load(o->model).vocab_size;
    std::shared_ptr<Tokenizer> tok = load_tokenizer(o->model, vocab, o->byte_tokenizer);
    if (o->generation_config != "vllm") {
      const std::string dir = o->generation_config == "auto" ? o->model : o->generation_config;
      struct stat st {};
      PEFT_USAGE(o->generation_config == "auto" || (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)), "--generation-config must be auto, vllm or a folder, got '",
                 o->generation_config, "'");
      o->server.defaults = read_generation_config(dir, vocab);
      const auto & d = o->server.defaults;
      PEFT_CHECK(!d.temperature || *d.temperature <= 2, dir, "/generation_config.json: field 'temperature' must be in [0, 2] for the "
                 "server's requests, got ", *d.temperature, " (--generation-config vllm ignores the file)");
    }
    auto base = load_model_with(o->model, dtype, o->quant);
    auto pm = std::make_shared<PeftModel>(base);
    std::optional<ChatTemplate> chat;
    try {
      chat = ChatTemplate::from_model(o->model);
    } catch (const Error &) {
      // no chat template: /v1/chat/completions answers with an error naming it
    }
    o->engine.compile = o->compile;
    auto engine = std::make_shared<serve::Engine>(pm, o->engine, tok);
    // the adapters given at start load as /v1/load_lora_adapter loads them: the engine owns them
    for (const auto & a : o->adapters) {
      const auto eq = a.find('=');
      const std::string path = a.substr(0, eq), name = eq == std::string::npos ? "" : a.substr(eq + 1);
      const std::string n = name.empty() ? base_of(path) : name;
      PEFT_USAGE(n != o->server.model_name, "--adapter ", a, ": the name '", n, "' is the base model's");
      engine->load_adapter(path, n);  // (refuses what a mixed-adapter batch cannot hold, by name)
    }
    serve::Server server(engine, tok, chat, o->server);
    server.bind();
    g_server = &server;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::cerr << "peft serve: " << o->server.model_name << " with " << o->adapters.size() << " adapter(s) on http://"
              << o->server.host << ":" << server.port() << " (max batch " << o->engine.max_batch << ", context "
              << engine->max_context() << (o->compile ? ", compiled" : "") << ")" << std::endl;
    if (const std::string d = describe_defaults(o->server.defaults); !d.empty()) {
      std::cerr << "peft serve: request defaults from generation_config.json: " << d << std::endl;
    }
    server.run();
    g_server = nullptr;
    engine->stop();
    std::cerr << "peft serve: stopped\n";
    return 0;
  };
}

}  // namespace peft::cli
