// PeftModel: its prompt-learning adapters (prompt-learning.h): adding and removing their encoders, which
// one is active and how many virtual tokens it puts in front of the input.
#include "peft/error.h"
#include "peft/peft-model.h"
#include "peft/tuners/prompt-learning.h"
#include "peft/tuners/registry.h"

namespace peft {

void PeftModel::add_prompt_encoder(const std::string & name, AdapterConfig cfg, const TunerMethod & method) {
  complete_prompt_config(cfg, model_->config(), str("adapter '", name, "' config"));
  auto enc = method.prompt_encoder(cfg, *model_);
  enc->to(model_->options().device());  // (float32, as PEFT keeps its prompt encoders)
  if (!prompt_holder_) {
    prompt_holder_ = std::make_shared<torch::nn::Module>();
    model_->register_module("prompt_encoder", prompt_holder_);
  }
  prompt_holder_->register_module(name, enc);
  enc->train(model_->is_training());
  encoders_[name] = enc;
  configs_[name] = std::move(cfg);
}

void PeftModel::remove_prompt_encoder(const std::string & name) {
  if (!encoders_.erase(name)) return;
  prompt_holder_->unregister_module(name);
  if (encoders_.empty()) {
    model_->unregister_module("prompt_encoder");
    prompt_holder_.reset();
  }
}

std::shared_ptr<PromptEncoder> PeftModel::active_prompt_encoder() const {
  if (encoders_.empty() || adapters_disabled() || state_->active().empty()) return nullptr;
  auto it = encoders_.find(state_->active().front());
  return it == encoders_.end() ? nullptr : it->second;
}

int64_t PeftModel::num_virtual_tokens() const {
  auto e = active_prompt_encoder();
  return e ? adapter_config(state_->active().front()).opts<PromptLearningOptions>().num_virtual_tokens : 0;
}

int64_t PeftModel::virtual_token_logits() const {
  auto e = active_prompt_encoder();
  return e && !e->key_values() ? num_virtual_tokens() : 0;
}

std::shared_ptr<PromptEncoder> PeftModel::prompt_encoder(const std::string & name) const {
  auto it = encoders_.find(name);
  PEFT_CHECK(it != encoders_.end(), "adapter '", name, "' is not a prompt-learning adapter");
  return it->second;
}

}  // namespace peft
