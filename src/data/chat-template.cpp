// ChatTemplate: finds a model's template (chat_template.jinja or tokenizer_config.json) and renders it
// with the variables transformers' apply_chat_template passes, through the Jinja engine (data/jinja.h).
#include "peft/data/chat-template.h"

#include <sys/stat.h>

#include <ctime>

#include "data/jinja/jinja.h"
#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

struct ChatTemplate::Impl {
  jinja::Template tpl;
  std::string bos, eos, origin;
};

namespace {

bool is_file(const std::string & path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// bos_token / eos_token: a string, an AddedToken object {"content": ...}, or absent / null
std::string token_string(const nlohmann::json & config, const char * field, const std::string & path) {
  if (!config.contains(field) || config[field].is_null()) return "";
  const auto & v = config[field];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail(str(path, ": \"", field, "\" must be a string or an object with a string \"content\""));
}

std::string template_text(const nlohmann::json & config, const std::string & path) {
  if (!config.contains("chat_template") || config["chat_template"].is_null()) {
    fail(str(path, ": no \"chat_template\" field (and no chat_template.jinja beside it): this model has no chat "
             "template"));
  }
  const auto & t = config["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    std::string names;
    for (const auto & entry : t) {
      if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string()) continue;
      const std::string name = entry["name"].get<std::string>();
      if (name == "default") {
        if (!entry.contains("template") || !entry["template"].is_string()) {
          fail(str(path, ": \"chat_template\" entry \"default\" has no string \"template\""));
        }
        return entry["template"].get<std::string>();
      }
      names += (names.empty() ? "" : ", ") + name;
    }
    fail(str(path, ": \"chat_template\" lists named templates (", names, ") but none named \"default\""));
  }
  fail(str(path, ": \"chat_template\" must be a string or a list of {\"name\", \"template\"}"));
}

template <class Json>
std::string render_with(const jinja::Template & tpl, const std::string & origin, const std::string & bos,
                        const std::string & eos, const Json & messages, bool add_generation_prompt,
                        const Json & extra) {
  PEFT_CHECK(messages.is_array(), origin, ": messages must be a JSON array of {\"role\", \"content\"} objects");
  PEFT_CHECK(extra.is_object(), origin, ": the extra variables must be a JSON object");
  jinja::Dict vars;
  try {
    vars.set("messages", jinja::from_json(messages));
    vars.set("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
    vars.set("tools", jinja::Value::none());
    vars.set("documents", jinja::Value::none());
    if (!bos.empty()) vars.set("bos_token", jinja::Value::string(bos));
    if (!eos.empty()) vars.set("eos_token", jinja::Value::string(eos));
    for (auto it = extra.begin(); it != extra.end(); ++it) vars.set(it.key(), jinja::from_json(it.value()));
  } catch (const jinja::TemplateError & e) {
    fail(str(origin, ": ", e.message()));
  }
  return tpl.render(vars, std::time(nullptr));
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, std::string bos_token, std::string eos_token, std::string origin)
    : impl_(std::make_shared<Impl>(Impl{jinja::Template(std::move(source), origin), std::move(bos_token),
                                        std::move(eos_token), origin})) {}

ChatTemplate ChatTemplate::from_model(const std::string & model_dir) {
  const std::string config_path = model_dir + "/tokenizer_config.json";
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  const nlohmann::json config = read_json_file(config_path);
  PEFT_CHECK(config.is_object(), config_path, ": expected a JSON object");
  const std::string bos = token_string(config, "bos_token", config_path);
  const std::string eos = token_string(config, "eos_token", config_path);
  if (is_file(jinja_path)) return ChatTemplate(read_file(jinja_path), bos, eos, jinja_path);
  return ChatTemplate(template_text(config, config_path), bos, eos, config_path + " (chat_template)");
}

std::string ChatTemplate::render(const nlohmann::json & messages, bool add_generation_prompt,
                                 const nlohmann::json & extra) const {
  return render_with(impl_->tpl, impl_->origin, impl_->bos, impl_->eos, messages, add_generation_prompt, extra);
}

std::string ChatTemplate::render(const nlohmann::ordered_json & messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json & extra) const {
  return render_with(impl_->tpl, impl_->origin, impl_->bos, impl_->eos, messages, add_generation_prompt, extra);
}

const std::string & ChatTemplate::source() const { return impl_->tpl.source(); }

}  // namespace peft
