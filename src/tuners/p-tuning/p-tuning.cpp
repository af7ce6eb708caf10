// P-tuning (PEFT's P_TUNING, tuners/p_tuning): virtual tokens made by a prompt encoder from a trained table
// (prompt-learning.h): an MLP (Linear, ReLU, Linear, ReLU, Linear: encoder_hidden_size wide) or a
// bidirectional LSTM (encoder_num_layers, encoder_dropout) followed by Linear, ReLU, Linear; parameters under
// PEFT's names (embedding.weight, mlp_head.0.weight, lstm_head.weight_ih_l0, ...). The saved file holds the
// encoder's output, as PEFT's, so a loaded adapter is that table (and cannot resume training).
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>

#include "peft/error.h"
#include "peft/tuners/prompt-learning.h"
#include "peft/tuners/registry.h"

namespace peft {

namespace {

struct PTuningOptions : PromptLearningOptions {
  bool lstm = false;
  int64_t encoder_num_layers = 2;
  double encoder_dropout = 0.0;
};

class PTuningEncoder : public PromptEncoder {
 public:
  PTuningEncoder(const PTuningOptions & o, bool inference) {
    make_table(o.num_virtual_tokens, o.token_dim);
    if (inference) return;
    const int64_t D = o.token_dim, H = o.encoder_hidden_size;
    if (o.lstm) {
      lstm_ = register_module("lstm_head", torch::nn::LSTM(torch::nn::LSTMOptions(D, H)
                                                               .num_layers(o.encoder_num_layers)
                                                               .dropout(o.encoder_dropout)
                                                               .bidirectional(true)
                                                               .batch_first(true)));
      mlp_ = register_module("mlp_head", torch::nn::Sequential(torch::nn::Linear(2 * H, 2 * H), torch::nn::ReLU(),
                                                               torch::nn::Linear(2 * H, D)));
    } else {
      mlp_ = register_module("mlp_head", torch::nn::Sequential(torch::nn::Linear(D, H), torch::nn::ReLU(),
                                                               torch::nn::Linear(H, H), torch::nn::ReLU(),
                                                               torch::nn::Linear(H, D)));
    }
  }
  at::Tensor prompts() override {
    if (mlp_.is_empty()) return table;
    at::Tensor x = table.unsqueeze(0);  // (1, n, D): one row, as PEFT's get_prompt
    if (!lstm_.is_empty()) x = std::get<0>(lstm_->forward(x));
    return mlp(mlp_, x).squeeze(0);
  }
  bool table_only() const override { return mlp_.is_empty(); }

 private:
  torch::nn::LSTM lstm_{nullptr};
  torch::nn::Sequential mlp_{nullptr};
};

nlohmann::json p_tuning_defaults() {
  nlohmann::json j = prompt_learning_defaults();
  j.update({{"encoder_reparameterization_type", "MLP"},
            {"encoder_hidden_size", nullptr},
            {"encoder_num_layers", 2},
            {"encoder_dropout", 0.0}});
  return j;
}

std::shared_ptr<const MethodOptions> p_tuning_parse(const AdapterConfig & c, const std::string & src) {
  auto o = std::make_shared<PTuningOptions>();
  parse_prompt_fields(*o, c, src);
  FieldReader r(c, src);
  o->lstm = r.init("encoder_reparameterization_type", {"MLP", "LSTM"}) == "LSTM";
  o->encoder_num_layers = r.integer("encoder_num_layers", 1);
  o->encoder_dropout = r.fraction("encoder_dropout");
  return o;
}

std::shared_ptr<PromptEncoder> p_tuning_encoder(const AdapterConfig & c, const CausalLM &) {
  return std::make_shared<PTuningEncoder>(c.opts<PTuningOptions>(), c.inference_mode);
}

}  // namespace

TunerMethod p_tuning_method() {
  TunerMethod m{{"P_TUNING", "prompt_encoder", &p_tuning_defaults, &p_tuning_parse}, nullptr, nullptr};
  m.schema.absent_fields = {"target_modules"};
  m.prompt_encoder = &p_tuning_encoder;
  return m;
}

}  // namespace peft
