// Llama family (LlamaForCausalLM; Mistral and Qwen2 checkpoints use the same layout): RMSNorm, rotary
// embeddings, grouped-query attention, SiLU-gated MLP, optional tied embeddings, optional q/k/v bias.
#include "peft/error.h"
#include "peft/model/blocks.h"
#include "peft/nn/layers.h"
#include "peft/ops/decoder-ops.h"

namespace peft {
namespace {

class LlamaAttention : public Module {
 public:
  LlamaAttention(const ModelConfig & c, int64_t layer) : cfg(c), layer_idx(layer) {
    const int64_t D = c.hidden_size, Dh = c.head_dim;
    q_proj = std::make_shared<Linear>(D, c.num_heads * Dh, c.attention_bias);
    k_proj = std::make_shared<Linear>(D, c.num_kv_heads * Dh, c.attention_bias);
    v_proj = std::make_shared<Linear>(D, c.num_kv_heads * Dh, c.attention_bias);
    o_proj = std::make_shared<Linear>(c.num_heads * Dh, D, c.o_proj_bias);
    register_layer("q_proj", q_proj);
    register_layer("k_proj", k_proj);
    register_layer("v_proj", v_proj);
    register_layer("o_proj", o_proj);
  }

  at::Tensor forward(const at::Tensor & x, const AttentionContext & ctx, const at::Tensor & cos,
                     const at::Tensor & sin) {
    const int64_t B = x.size(0), S = x.size(1), Dh = cfg.head_dim;
    at::Tensor q = q_proj->forward(x).view({B, S, cfg.num_heads, Dh}).transpose(1, 2);
    at::Tensor k = k_proj->forward(x).view({B, S, cfg.num_kv_heads, Dh}).transpose(1, 2);
    at::Tensor v = v_proj->forward(x).view({B, S, cfg.num_kv_heads, Dh}).transpose(1, 2);
    q = blocks::apply_rope(q, cos, sin);
    k = blocks::apply_rope(k, cos, sin);
    auto kv = blocks::update_cache(ctx, layer_idx, k, v);
    at::Tensor out = blocks::attention(q, kv.first, kv.second, ctx.mask, 1.0 / std::sqrt(static_cast<double>(Dh)));
    return o_proj->forward(out);
  }

  const ModelConfig & cfg;
  int64_t layer_idx;
  LayerPtr q_proj, k_proj, v_proj, o_proj;
};

class LlamaMLP : public Module {
 public:
  explicit LlamaMLP(const ModelConfig & c) {
    gate_proj = std::make_shared<Linear>(c.hidden_size, c.intermediate_size, c.mlp_bias);
    up_proj = std::make_shared<Linear>(c.hidden_size, c.intermediate_size, c.mlp_bias);
    down_proj = std::make_shared<Linear>(c.intermediate_size, c.hidden_size, c.mlp_bias);
    register_layer("gate_proj", gate_proj);
    register_layer("up_proj", up_proj);
    register_layer("down_proj", down_proj);
  }
  at::Tensor forward(const at::Tensor & x) {
    return down_proj->forward(ops::silu_mul(gate_proj->forward(x), up_proj->forward(x)));
  }
  LayerPtr gate_proj, up_proj, down_proj;
};

class LlamaDecoderLayer : public Module {
 public:
  LlamaDecoderLayer(const ModelConfig & c, int64_t layer) {
    self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(c, layer));
    mlp = register_module("mlp", std::make_shared<LlamaMLP>(c));
    input_layernorm = std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps);
    post_attention_layernorm = std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps);
    register_layer("input_layernorm", input_layernorm);
    register_layer("post_attention_layernorm", post_attention_layernorm);
  }
  at::Tensor forward(const at::Tensor & h, const AttentionContext & ctx, const at::Tensor & cos, const at::Tensor & sin) {
    at::Tensor x = h + self_attn->forward(input_layernorm->forward(h), ctx, cos, sin);
    return x + mlp->forward(post_attention_layernorm->forward(x));
  }
  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<LlamaMLP> mlp;
  LayerPtr input_layernorm, post_attention_layernorm;
};

class LlamaModel : public Module {
 public:
  explicit LlamaModel(const ModelConfig & c) {
    embed_tokens = std::make_shared<Embedding>(c.vocab_size, c.hidden_size, c.pad_token_id);
    register_layer("embed_tokens", embed_tokens);
    layers = register_module("layers", std::make_shared<ModuleList>());
    for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(std::make_shared<LlamaDecoderLayer>(c, i));
    norm = std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps);
    register_layer("norm", norm);
  }
  LayerPtr embed_tokens, norm;
  std::shared_ptr<ModuleList> layers;
};

class LlamaForCausalLM : public CausalLM {
 public:
  explicit LlamaForCausalLM(const ModelConfig & c) : CausalLM(c) {
    model = register_module("model", std::make_shared<LlamaModel>(config_));
    lm_head = std::make_shared<Linear>(c.hidden_size, c.vocab_size, false);
    register_layer("lm_head", lm_head);
    tie_weights();
  }

  LayerPtr input_embedding() const override { return model->embed_tokens; }
  LayerPtr output_layer() const override { return lm_head; }

 protected:
  at::Tensor forward_impl(const at::Tensor & ids, const AttentionContext & ctx) override {
    at::Tensor h = model->embed_tokens->forward(ids);
    auto cs = blocks::rope_cos_sin(ctx.position_ids, config_.head_dim, config_.rope_theta, h.scalar_type());
    for (size_t i = 0; i < model->layers->size(); ++i) {
      h = model->layers->at<LlamaDecoderLayer>(i)->forward(h, ctx, cs.first, cs.second);
    }
    return lm_head->forward(model->norm->forward(h));
  }

 public:
  std::shared_ptr<LlamaModel> model;
  LayerPtr lm_head;
};

}  // namespace

std::shared_ptr<CausalLM> build_llama(const ModelConfig & cfg) { return std::make_shared<LlamaForCausalLM>(cfg); }

void read_llama_config(const ConfigReader & r, ModelConfig & c) {
  const std::string & src = r.source();
  c.intermediate_size = r.integer("intermediate_size", 0, true);
  c.num_kv_heads = r.integer("num_key_value_heads", c.num_heads, false);
  c.head_dim = r.integer("head_dim", c.hidden_size / c.num_heads, false);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.rope_theta = r.number("rope_theta", 10000.0);
  c.hidden_act = r.string("hidden_act", "silu");
  PEFT_CHECK(c.hidden_act == "silu", src, ": hidden_act '", c.hidden_act, "' is not supported (only silu)");
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.attention_bias = r.boolean("attention_bias", c.model_type == "qwen2");  // Qwen2: q/k/v bias, none on o_proj
  c.o_proj_bias = c.model_type == "qwen2" ? false : c.attention_bias;
  c.mlp_bias = r.boolean("mlp_bias", false);
  PEFT_CHECK(c.num_heads % c.num_kv_heads == 0, src, ": num_attention_heads ", c.num_heads,
             " is not a multiple of num_key_value_heads ", c.num_kv_heads);
  PEFT_CHECK(c.head_dim % 2 == 0, src, ": head_dim ", c.head_dim, " must be even for rotary embeddings");
  PEFT_CHECK(!r.has("rope_scaling"), src, ": field 'rope_scaling' is not supported yet");
}

}  // namespace peft
