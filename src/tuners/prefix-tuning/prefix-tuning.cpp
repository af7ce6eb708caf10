// Prefix tuning (PEFT's PREFIX_TUNING, tuners/prefix_tuning): trained keys and values of num_virtual_tokens
// positions for every attention layer, which each layer sees before the input's (prompt-learning.h). The
// table is (num_virtual_tokens, num_layers * 2 * token_dim), token_dim = key/value heads x head_dim; with
// prefix_projection a (num_virtual_tokens, token_dim) table through Linear, Tanh, Linear (encoder_hidden_size
// wide) makes it. init_weights "zero": the table (or the last Linear) starts at zero. The saved file holds
// the keys and values, so a loaded prefix_projection adapter is that table (PEFT cannot resume training
// from it either).
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "peft/error.h"
#include "peft/tuners/prompt-learning.h"
#include "peft/tuners/registry.h"

namespace peft {

namespace {

struct PrefixTuningOptions : PromptLearningOptions {
  bool projection = false;
  bool zero_init = false;
};

class PrefixEncoder : public PromptEncoder {
 public:
  PrefixEncoder(const PrefixTuningOptions & o, bool inference) {
    const int64_t D = o.token_dim, out = o.num_layers * 2 * D;
    at::NoGradGuard g;
    if (o.projection && !inference) {
      make_table(o.num_virtual_tokens, D);
      transform_ = register_module("transform", torch::nn::Sequential(torch::nn::Linear(D, o.encoder_hidden_size),
                                                                      torch::nn::Tanh(),
                                                                      torch::nn::Linear(o.encoder_hidden_size, out)));
      if (o.zero_init) {
        for (auto & p : transform_[2]->parameters()) p.zero_();
      }
    } else {
      make_table(o.num_virtual_tokens, out);
      if (o.zero_init) table.zero_();
    }
  }
  at::Tensor prompts() override { return transform_.is_empty() ? table : mlp(transform_, table); }
  bool key_values() const override { return true; }
  bool table_only() const override { return transform_.is_empty(); }

 private:
  torch::nn::Sequential transform_{nullptr};
};

nlohmann::json prefix_tuning_defaults() {
  nlohmann::json j = prompt_learning_defaults();
  j.update({{"encoder_hidden_size", nullptr}, {"prefix_projection", false}, {"init_weights", nullptr}});
  return j;
}

std::shared_ptr<const MethodOptions> prefix_tuning_parse(const AdapterConfig & c, const std::string & src) {
  auto o = std::make_shared<PrefixTuningOptions>();
  parse_prompt_fields(*o, c, src);
  FieldReader r(c, src);
  o->projection = r.boolean("prefix_projection");
  const auto & init = c.field("init_weights");
  PEFT_CHECK(init.is_null() || init == "zero", src, ": field 'init_weights' must be null or \"zero\", got ", init.dump());
  o->zero_init = init == "zero";
  return o;
}

std::shared_ptr<PromptEncoder> prefix_tuning_encoder(const AdapterConfig & c, const CausalLM &) {
  return std::make_shared<PrefixEncoder>(c.opts<PrefixTuningOptions>(), c.inference_mode);
}

}  // namespace

TunerMethod prefix_tuning_method() {
  TunerMethod m{{"PREFIX_TUNING", "prompt_encoder", &prefix_tuning_defaults, &prefix_tuning_parse}, nullptr, nullptr};
  m.schema.absent_fields = {"target_modules"};
  m.prompt_encoder = &prefix_tuning_encoder;
  return m;
}

}  // namespace peft
