// The architecture table (see include/peft/model/architectures.h).
#include "peft/model/architectures.h"

namespace peft {

// Defined in src/model/arch/<name>.cpp.
void read_llama_config(const ConfigReader & r, ModelConfig & c);
std::shared_ptr<CausalLM> build_llama(const ModelConfig & c);
void read_opt_config(const ConfigReader & r, ModelConfig & c);
std::shared_ptr<CausalLM> build_opt(const ModelConfig & c);
void read_gpt2_config(const ConfigReader & r, ModelConfig & c);
std::shared_ptr<CausalLM> build_gpt2(const ModelConfig & c);
void rename_gpt2_config(nlohmann::json & j);
void read_gpt_neox_config(const ConfigReader & r, ModelConfig & c);
std::shared_ptr<CausalLM> build_gpt_neox(const ModelConfig & c);
void read_gemma_config(const ConfigReader & r, ModelConfig & c);
std::shared_ptr<CausalLM> build_gemma(const ModelConfig & c);

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

// PEFT's rows for gpt2 (Conv1D layers: c_attn is q | k | v in one)
const DefaultTargets kGpt2Targets = {
    /*lora=*/{"c_attn"},
    /*ia3=*/{"c_attn", "mlp.c_proj"},
    /*ia3_feedforward=*/{"mlp.c_proj"},
    /*adalora=*/{"c_attn"},
    /*ln_tuning=*/{"ln_1", "ln_2", "ln_f"},
};

const DefaultTargets kGptNeoXTargets = {
    /*lora=*/{"query_key_value"},
    /*ia3=*/{"query_key_value", "dense_4h_to_h"},
    /*ia3_feedforward=*/{"dense_4h_to_h"},
    /*adalora=*/{"query_key_value"},
    /*ln_tuning=*/{},  // PEFT has none for gpt_neox
};

// PEFT's rows for gemma2 and gemma3_text
const DefaultTargets kGemmaTargets = {
    /*lora=*/{"q_proj", "v_proj"},
    /*ia3=*/{"q_proj", "v_proj", "down_proj"},
    /*ia3_feedforward=*/{"down_proj"},
    /*adalora=*/{"q_proj", "v_proj"},
    /*ln_tuning=*/{"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
                   "norm"},
};

}  // namespace

const std::vector<Architecture> & architectures() {
  static const std::vector<Architecture> table = {
      {"llama", "LlamaForCausalLM", &read_llama_config, &build_llama, kLlamaTargets, nullptr, "llama", true},
      {"mistral", "MistralForCausalLM", &read_llama_config, &build_llama, kLlamaTargets, nullptr, "llama", true},
      {"qwen2", "Qwen2ForCausalLM", &read_llama_config, &build_llama, kQwenTargets, nullptr, "qwen2"},
      {"qwen3", "Qwen3ForCausalLM", &read_llama_config, &build_llama, kQwenTargets, nullptr, "qwen3"},
      {"phi3", "Phi3ForCausalLM", &read_llama_config, &build_llama, kNoTargets, nullptr, "phi3"},
      {"opt", "OPTForCausalLM", &read_opt_config, &build_opt, kOptTargets},
      {"gpt2", "GPT2LMHeadModel", &read_gpt2_config, &build_gpt2, kGpt2Targets, &rename_gpt2_config, "gpt2"},
      {"gpt_neox", "GPTNeoXForCausalLM", &read_gpt_neox_config, &build_gpt_neox, kGptNeoXTargets, nullptr, "gptneox"},
      {"gemma2", "Gemma2ForCausalLM", &read_gemma_config, &build_gemma, kGemmaTargets, nullptr, "gemma2"},
      {"gemma3_text", "Gemma3ForCausalLM", &read_gemma_config, &build_gemma, kGemmaTargets, nullptr, "gemma3"},
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
