// Placeholder until the chat-template engine lands (branch jinja).
#include "peft/data/chat-template.h"

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

ChatTemplate::ChatTemplate(std::string source, std::string bos, std::string eos, std::string origin)
    : source_(std::move(source)), bos_(std::move(bos)), eos_(std::move(eos)), origin_(std::move(origin)) {}

ChatTemplate ChatTemplate::from_model(const std::string & dir) {
  auto j = read_json_file(dir + "/tokenizer_config.json");
  PEFT_CHECK(j.contains("chat_template") && j["chat_template"].is_string(), dir, "/tokenizer_config.json: no chat_template");
  return ChatTemplate(j["chat_template"], "", "");
}

std::string ChatTemplate::render(const nlohmann::json & messages, bool add_generation_prompt, const nlohmann::json &) const {
  // the bundled model's template only: <|role|>\ncontent<|end|>\n
  std::string s;
  for (const auto & m : messages) s += "<|" + m.at("role").get<std::string>() + "|>\n" + m.at("content").get<std::string>() + "<|end|>\n";
  if (add_generation_prompt) s += "<|assistant|>\n";
  return s;
}

}  // namespace peft
