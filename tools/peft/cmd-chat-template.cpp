// peft chat-template --model DIR --messages FILE.json: the prompt a model's chat template makes of a
// conversation, as transformers' apply_chat_template renders it (or its token ids with --ids).
#include <sys/stat.h>

#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/data/chat-template.h"
#include "peft/io/files.h"
#include "peft/model/config.h"
#include "peft/tokenizer/tokenizer.h"

namespace peft::cli {

namespace {

// The messages file: a JSON array of messages, or an object {"messages": [...], "tools": [...], ...} whose
// other keys are further template variables. Read twice: once by the project's reader (size and depth
// limits, duplicate keys, errors naming the file), then keeping key order (tool schemas print as written).
void read_messages(const std::string & path, nlohmann::ordered_json & messages, nlohmann::ordered_json & extra) {
  read_json_file(path);
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(read_file(path));
  extra = nlohmann::ordered_json::object();
  if (j.is_array()) {
    messages = j;
    return;
  }
  PEFT_CHECK(j.is_object() && j.contains("messages"), path,
             ": expected a JSON array of messages or an object with \"messages\" (and other template variables)");
  messages = j["messages"];
  PEFT_CHECK(messages.is_array(), path, ": \"messages\" must be an array of {\"role\", \"content\"} objects");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "messages") extra[it.key()] = it.value();
  }
}

}  // namespace

Runner add_chat_template(CLI::App & app) {
  struct Opts {
    std::string model, messages;
    bool add_generation_prompt = false, ids = false, byte_tokenizer = false;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("chat-template", "render a conversation with the model's chat template");
  cmd->add_option("--model", o->model, "model folder with tokenizer_config.json (or chat_template.jinja)")->required();
  cmd->add_option("--messages", o->messages,
                  "JSON file: an array of {\"role\", \"content\"} messages, or {\"messages\": [...], \"tools\": [...], ...}")
      ->required();
  cmd->add_flag("--add-generation-prompt", o->add_generation_prompt, "end with the start of an assistant turn");
  cmd->add_flag("--ids", o->ids, "print the prompt's token ids (JSON) instead of its text");
  cmd->add_flag("--byte-tokenizer", o->byte_tokenizer,
                "with --ids: tokenize as bytes (tiny test models without tokenizer.json)");
  return [o]() {
    PEFT_USAGE(o->ids || !o->byte_tokenizer, "--byte-tokenizer does not apply without --ids");
    nlohmann::ordered_json messages, extra;
    read_messages(o->messages, messages, extra);
    const ChatTemplate tpl = ChatTemplate::from_model(o->model);
    const std::string prompt = tpl.render(messages, o->add_generation_prompt, extra);
    if (!o->ids) {
      std::cout << prompt << std::flush;
      return 0;
    }
    // tokenizer.json (none: an error naming it), or with --byte-tokenizer the byte tokenizer sized by config.json
    const int64_t vocab = o->byte_tokenizer ? ModelConfig::load(o->model).vocab_size : 0;
    auto tok = load_tokenizer(o->model, vocab, o->byte_tokenizer);
    std::cout << nlohmann::json(tok->encode(prompt, /*add_special=*/false)).dump() << "\n";
    return 0;
  };
}

}  // namespace peft::cli
