// Placeholder until the chat-template engine lands (branch jinja): the agreed interface.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

namespace peft {

/// A model's chat template (tokenizer_config.json's "chat_template", Jinja), rendered as transformers does.
class ChatTemplate {
 public:
  ChatTemplate(std::string source, std::string bos_token, std::string eos_token, std::string origin = "chat template");
  static ChatTemplate from_model(const std::string & model_dir);
  std::string render(const nlohmann::json & messages, bool add_generation_prompt,
                     const nlohmann::json & extra = nlohmann::json::object()) const;
  const std::string & source() const { return source_; }

 private:
  std::string source_, bos_, eos_, origin_;
};

}  // namespace peft
