// Llama family (LlamaForCausalLM; Mistral, Qwen2, Qwen3 and Phi-3 checkpoints use the same layout): RMSNorm, rotary
// embeddings (rope_scaling: src/model/rope.cpp), grouped-query attention, SiLU-gated MLP, optional tied
// embeddings, optional q/k/v bias; Qwen3's RMSNorm of each q/k head (q_norm, k_norm); Phi-3's fused qkv_proj
// and gate_up_proj; Mistral's and Phi-3's sliding window (the attention mask, src/model/causal-lm.cpp).
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
    if (c.fused_projections) {  // Phi-3: q | k | v in one projection
      qkv_proj = std::make_shared<Linear>(D, (c.num_heads + 2 * c.num_kv_heads) * Dh, c.attention_bias);
      register_layer("qkv_proj", qkv_proj);
    } else {
      q_proj = std::make_shared<Linear>(D, c.num_heads * Dh, c.attention_bias);
      k_proj = std::make_shared<Linear>(D, c.num_kv_heads * Dh, c.attention_bias);
      v_proj = std::make_shared<Linear>(D, c.num_kv_heads * Dh, c.attention_bias);
      register_layer("q_proj", q_proj);
      register_layer("k_proj", k_proj);
      register_layer("v_proj", v_proj);
    }
    o_proj = std::make_shared<Linear>(c.num_heads * Dh, D, c.o_proj_bias);
    register_layer("o_proj", o_proj);
    if (c.qk_norm) {
      q_norm = std::make_shared<RMSNorm>(Dh, c.rms_norm_eps);
      k_norm = std::make_shared<RMSNorm>(Dh, c.rms_norm_eps);
      register_layer("q_norm", q_norm);
      register_layer("k_norm", k_norm);
    }
  }

  at::Tensor forward(const at::Tensor & x, const AttentionContext & ctx, const at::Tensor & cos,
                     const at::Tensor & sin) {
    const int64_t B = x.size(0), S = x.size(1), Dh = cfg.head_dim, H = cfg.num_heads, Hkv = cfg.num_kv_heads;
    at::Tensor q, k, v;
    if (qkv_proj) {
      const at::Tensor qkv = qkv_proj->forward(x);
      q = qkv.narrow(-1, 0, H * Dh).view({B, S, H, Dh});
      k = qkv.narrow(-1, H * Dh, Hkv * Dh).view({B, S, Hkv, Dh});
      v = qkv.narrow(-1, (H + Hkv) * Dh, Hkv * Dh).view({B, S, Hkv, Dh});
    } else {
      q = q_proj->forward(x).view({B, S, H, Dh});
      k = k_proj->forward(x).view({B, S, Hkv, Dh});
      v = v_proj->forward(x).view({B, S, Hkv, Dh});
    }
    if (q_norm) {  // Qwen3: over each head, before the rotary embedding
      q = q_norm->forward(q);
      k = k_norm->forward(k);
    }
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    v = v.transpose(1, 2);
    q = blocks::apply_rope(q, cos, sin);
    k = blocks::apply_rope(k, cos, sin);
    auto kv = blocks::update_cache(ctx, layer_idx, k, v);
    at::Tensor out = blocks::attention(q, kv.first, kv.second, ctx.mask_for(cfg.layer_slides(layer_idx)),
                                       1.0 / std::sqrt(static_cast<double>(Dh)));
    return o_proj->forward(out);
  }

  const ModelConfig & cfg;
  int64_t layer_idx;
  LayerPtr q_proj, k_proj, v_proj, o_proj;
  LayerPtr qkv_proj;        // Phi-3 only (instead of q/k/v_proj)
  LayerPtr q_norm, k_norm;  // Qwen3 only
};

class LlamaMLP : public Module {
 public:
  explicit LlamaMLP(const ModelConfig & c) : I(c.intermediate_size) {
    if (c.fused_projections) {  // Phi-3: gate | up in one projection
      gate_up_proj = std::make_shared<Linear>(c.hidden_size, 2 * I, c.mlp_bias);
      register_layer("gate_up_proj", gate_up_proj);
    } else {
      gate_proj = std::make_shared<Linear>(c.hidden_size, I, c.mlp_bias);
      up_proj = std::make_shared<Linear>(c.hidden_size, I, c.mlp_bias);
      register_layer("gate_proj", gate_proj);
      register_layer("up_proj", up_proj);
    }
    down_proj = std::make_shared<Linear>(I, c.hidden_size, c.mlp_bias);
    register_layer("down_proj", down_proj);
  }
  at::Tensor forward(const at::Tensor & x) {
    if (gate_up_proj) {
      const at::Tensor gu = gate_up_proj->forward(x);
      return down_proj->forward(ops::silu_mul(gu.narrow(-1, 0, I), gu.narrow(-1, I, I)));
    }
    return down_proj->forward(ops::silu_mul(gate_proj->forward(x), up_proj->forward(x)));
  }
  int64_t I;
  LayerPtr gate_proj, up_proj, down_proj;
  LayerPtr gate_up_proj;  // Phi-3 only (instead of gate/up_proj)
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
  at::Tensor forward_hidden(const at::Tensor & embeds, const AttentionContext & ctx) override {
    at::Tensor h = embeds;
    auto cs = blocks::rope_cos_sin(ctx.position_ids, config_, h.scalar_type());
    for (size_t i = 0; i < model->layers->size(); ++i) {
      h = decoder_layer(h, {ctx, cs.first, cs.second}, [l = model->layers->at<LlamaDecoderLayer>(i)](const at::Tensor & x, const LayerArgs & a) {
        return l->forward(x, a.ctx, a.cos, a.sin);
      });
    }
    return model->norm->forward(h);
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
  const bool qwen = c.model_type == "qwen2" || c.model_type == "qwen3";
  c.attention_bias = r.boolean("attention_bias", c.model_type == "qwen2");  // Qwen2: q/k/v bias, none on o_proj
  c.o_proj_bias = c.model_type == "qwen2" ? false : c.attention_bias;  // Qwen3 and the rest: as q/k/v
  c.qk_norm = c.model_type == "qwen3";
  c.fused_projections = c.model_type == "phi3";
  // Phi-3 rotates the first partial_rotary_factor of each head (Phi3's apply_rotary_pos_emb); Llama's own
  // code has no partial rotation
  c.partial_rotary_factor = r.number("partial_rotary_factor", 1.0);
  PEFT_CHECK(c.partial_rotary_factor == 1.0 || c.model_type == "phi3", src, ": field 'partial_rotary_factor' other than 1 ",
             "is not supported for model_type '", c.model_type, "' (transformers' ", c.model_type, " has no partial rotation)");
  PEFT_CHECK(c.partial_rotary_factor <= 1.0 && c.rotary_dim() % 2 == 0 && c.rotary_dim() > 0, src,
             ": partial_rotary_factor ", c.partial_rotary_factor, " leaves ", c.rotary_dim(), " rotated features of ", c.head_dim,
             " (it must be a positive even number)");
  if ((c.model_type == "mistral" || c.model_type == "phi3") && r.has("sliding_window") &&
      !r.json()["sliding_window"].is_null()) {
    c.sliding_window = r.integer("sliding_window", 0, false);
  }
  // Qwen2/3 configs carry a sliding_window that only use_sliding_window turns on, for the layers from
  // max_window_layers on (transformers' layer_types, which a config may also give itself)
  if (qwen && r.boolean("use_sliding_window", false)) {
    c.sliding_window = r.integer("sliding_window", 0, true);
    const int64_t from = r.integer("max_window_layers", c.num_layers, false, 0);
    for (int64_t i = 0; i < c.num_layers; ++i) c.sliding_layers.push_back(i >= from);
    blocks::read_layer_types(r, c);
  }
  c.mlp_bias = r.boolean("mlp_bias", false);
  PEFT_CHECK(c.num_heads % c.num_kv_heads == 0, src, ": num_attention_heads ", c.num_heads,
             " is not a multiple of num_key_value_heads ", c.num_kv_heads);
  PEFT_CHECK(c.head_dim % 2 == 0, src, ": head_dim ", c.head_dim, " must be even for rotary embeddings");
  blocks::read_rope_scaling(r, c);
}

}  // namespace peft
