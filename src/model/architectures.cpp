// The architecture table (see include/peft/model/architectures.h).
#include "peft/model/architectures.h"

namespace peft {

// Defined in src/model/arch/<name>.cpp.
void read_llama_config(const ConfigReader & r, ModelConfig & c);
std::shared_ptr<CausalLM> build_llama(const ModelConfig & c);
void read_opt_config(const ConfigReader & r, ModelConfig & c);
std::shared_ptr<CausalLM> build_opt(const ModelConfig & c);

namespace {

const DefaultTargets kLlamaTargets = {
    /*lora=*/{"q_proj", "v_proj"},
    /*ia3=*/{"k_proj", "v_proj", "down_proj"},
    /*ia3_feedforward=*/{"down_proj"},
    /*adalora=*/{"q_proj", "v_proj"},
    /*ln_tuning=*/{"input_layernorm", "post_attention_layernorm", "norm"},
};

// PEFT's rows for qwen2 / qwen3 differ from Llama's for IA3 and LN tuning
const DefaultTargets kQwenTargets = {
    /*lora=*/{"q_proj", "v_proj"},
    /*ia3=*/{"q_proj", "v_proj", "down_proj"},
    /*ia3_feedforward=*/{"down_proj"},
    /*adalora=*/{"q_proj", "v_proj"},
    /*ln_tuning=*/{"post_attention_layernorm"},
};

// PEFT has no default targets for phi3 (target_modules must be given)
const DefaultTargets kNoTargets = {{}, {}, {}, {}, {}};

const DefaultTargets kOptTargets = {
    /*lora=*/{"q_proj", "v_proj"},
    /*ia3=*/{"q_proj", "k_proj", "fc2"},
    /*ia3_feedforward=*/{"fc2"},
    /*adalora=*/{"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    /*ln_tuning=*/{},  // PEFT has none for OPT
};

}  // namespace

const std::vector<Architecture> & architectures() {
  static const std::vector<Architecture> table = {
      {"llama", "LlamaForCausalLM", &read_llama_config, &build_llama, kLlamaTargets},
      {"mistral", "MistralForCausalLM", &read_llama_config, &build_llama, kLlamaTargets},
      {"qwen2", "Qwen2ForCausalLM", &read_llama_config, &build_llama, kQwenTargets},
      {"qwen3", "Qwen3ForCausalLM", &read_llama_config, &build_llama, kQwenTargets},
      {"phi3", "Phi3ForCausalLM", &read_llama_config, &build_llama, kNoTargets},
      {"opt", "OPTForCausalLM", &read_opt_config, &build_opt, kOptTargets},
  };
  return table;
}

const Architecture * find_architecture(const std::string & model_type) {
  for (const auto & a : architectures()) {
    if (a.model_type == model_type) return &a;
  }
  return nullptr;
}

}  // namespace peft
