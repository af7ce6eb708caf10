// Chat templates: a model's tokenizer_config.json "chat_template" (Jinja) rendered into the prompt text
// as transformers' apply_chat_template does (messages, add_generation_prompt, tools, bos/eos tokens),
// by a small built-in Jinja engine (no Python, no LibTorch). Example:
//   auto tpl = peft::ChatTemplate::from_model("models/qwen3");
//   std::string prompt = tpl.render(nlohmann::json::parse(R"([{"role": "user", "content": "Hi"}])"), true);
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace peft {

/// A model's chat template (tokenizer_config.json's "chat_template", Jinja), rendered as transformers does.
class ChatTemplate {
 public:
  /// source: the Jinja text; bos/eos: the tokens' strings (tokenizer_config.json's bos_token / eos_token;
  /// an empty one is left undefined, as transformers leaves an unset token out). Parses the template:
  /// a syntax error throws peft::Error naming `origin`, the line and the column.
  ChatTemplate(std::string source, std::string bos_token, std::string eos_token, std::string origin = "chat template");
  /// MODEL_DIR/tokenizer_config.json (or MODEL_DIR/chat_template.jinja, which newer transformers write
  /// and which wins); errors name the file and field (no chat_template, template a list of named templates
  /// -> take "default", bos_token given as a string or as an AddedToken object {"content": ...}).
  static ChatTemplate from_model(const std::string & model_dir);
  /// messages: a JSON array of {"role": ..., "content": ...} (other fields passed through); extra: further
  /// variables (tools, enable_thinking, ...). tools and documents are none unless extra gives them.
  /// Errors (raise_exception in the template, an unknown method, a type error, a limit) throw peft::Error.
  std::string render(const nlohmann::json & messages, bool add_generation_prompt,
                     const nlohmann::json & extra = nlohmann::json::object()) const;
  /// The same for ordered_json, whose objects keep their key order: tool schemas printed with tojson then
  /// read as written (nlohmann::json sorts keys).
  std::string render(const nlohmann::ordered_json & messages, bool add_generation_prompt,
                     const nlohmann::ordered_json & extra = nlohmann::ordered_json::object()) const;
  const std::string & source() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace peft
