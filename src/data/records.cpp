#include "records.h"

#include "peft/error.h"
#include "peft/util/text.h"

namespace peft::data_detail {

void Encoded::append(const TextEncoder & enc, const std::string & text, bool add_special, bool loss_on) {
  for (int64_t id : enc.tokenizer->encode(text, add_special)) {
    ids.push_back(static_cast<int32_t>(id));
    loss.push_back(loss_on ? 1 : 0);
  }
}

void Encoded::append_eos(const TextEncoder & enc, const std::string & where) {
  PEFT_CHECK(enc.eos_id >= 0, where, ": documents end with EOS, and the model names no EOS token (config.json ",
             "eos_token_id or tokenizer_config.json eos_token)");
  ids.push_back(static_cast<int32_t>(enc.eos_id));
  loss.push_back(1);
}

namespace {

const std::string & string_field(const nlohmann::json & rec, const char * field, const std::string & where) {
  auto it = rec.find(field);
  PEFT_CHECK(it != rec.end(), where, ": missing field '", field, "'");
  PEFT_CHECK(it->is_string(), where, ": field '", field, "' must be a string, got ", it->type_name());
  return it->get_ref<const std::string &>();
}

// A conversation: the rendered template, with the loss on the assistant turns only. A turn's text is
// what rendering the conversation up to it adds to the prompt rendered just before it (with the
// generation prompt), so the template decides the exact tokens; each segment is tokenized on its own.
Encoded encode_messages(const TextEncoder & enc, const nlohmann::json & messages, const std::string & where) {
  PEFT_CHECK(messages.is_array() && !messages.empty(), where, ": field 'messages' must be a non-empty array");
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto & m = messages[i];
    const std::string w = str(where, ": messages[", i, "]");
    PEFT_CHECK(m.is_object(), w, " must be an object with 'role' and 'content'");
    string_field(m, "role", w);
    PEFT_CHECK(m.contains("content"), w, ": missing field 'content'");
  }
  PEFT_CHECK(enc.chat != nullptr, where, ": a 'messages' record needs the model's chat template: ",
             enc.chat_error.empty() ? "tokenizer_config.json has no chat_template" : enc.chat_error);
  const ChatTemplate & chat = *enc.chat;
  auto prefix = [&](size_t n, bool gen) {
    return chat.render(nlohmann::json(std::vector<nlohmann::json>(messages.begin(), messages.begin() + n)), gen);
  };
  const std::string full = chat.render(messages, false);
  Encoded e;
  size_t pos = 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"] != "assistant") continue;
    const std::string before = prefix(i, true), upto = prefix(i + 1, false);
    PEFT_CHECK(starts_with(upto, before) && starts_with(full, upto) && before.size() >= pos, where, ": messages[", i,
               "]: the chat template does not render this conversation turn by turn (the text up to this turn is ",
               "not a prefix of the whole), so the assistant tokens cannot be found");
    e.append(enc, full.substr(pos, before.size() - pos), false, false);
    e.append(enc, full.substr(before.size(), upto.size() - before.size()), false, true);
    pos = upto.size();
  }
  e.append(enc, full.substr(pos), false, false);
  return e;
}

}  // namespace

Encoded encode_record(const TextEncoder & enc, const nlohmann::json & rec, const std::string & where) {
  PEFT_CHECK(rec.is_object(), where, ": a record must be a JSON object, got ", rec.type_name());
  Encoded e;
  if (rec.contains("messages")) {
    return encode_messages(enc, rec["messages"], where);
  }
  if (rec.contains("prompt") || rec.contains("completion")) {
    // TRL's completion-only loss: the prompt is context, the completion (and EOS) is learned
    e.append(enc, string_field(rec, "prompt", where), true, false);
    e.append(enc, string_field(rec, "completion", where), false, true);
    e.append_eos(enc, where);
    return e;
  }
  PEFT_CHECK(rec.contains("text"), where, ": a record needs 'text', 'prompt' and 'completion', or 'messages'");
  e.append(enc, string_field(rec, "text", where), true, true);
  e.append_eos(enc, where);
  return e;
}

}  // namespace peft::data_detail
