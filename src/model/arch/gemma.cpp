// Gemma 2 and Gemma 3 (Gemma2ForCausalLM, Gemma3ForCausalLM: model_type gemma2 / gemma3_text), from
// transformers' modeling code: token embeddings times sqrt(hidden_size) (Gemma 3: inside the embedding
// module, so inputs_embeds are taken as given), RMSNorm with a (1 + w) weight computed in float32, four norms
// per layer (before and after attention and MLP), a gated MLP with the tanh GELU, attention scaled by
// query_pre_attn_scalar^-0.5 with optional logit soft-capping, sliding-window layers (Gemma 2: every other,
// from the first; Gemma 3: all but every sliding_window_pattern-th, or layer_types), Gemma 3's q/k norms and
// its own rope theta for sliding layers (rope_local_base_freq, no scaling), final logit soft-capping, tied
// lm_head by default.
#include "peft/error.h"
#include "peft/model/blocks.h"
#include "peft/nn/layers.h"

namespace peft {
namespace {

class GemmaAttention : public Module {
 public:
  GemmaAttention(const ModelConfig & c, int64_t layer) : cfg(c), layer_idx(layer) {
    const int64_t D = c.hidden_size, Dh = c.head_dim;
    q_proj = std::make_shared<Linear>(D, c.num_heads * Dh, c.attention_bias);
    k_proj = std::make_shared<Linear>(D, c.num_kv_heads * Dh, c.attention_bias);
    v_proj = std::make_shared<Linear>(D, c.num_kv_heads * Dh, c.attention_bias);
    o_proj = std::make_shared<Linear>(c.num_heads * Dh, D, c.attention_bias);
    register_layer("q_proj", q_proj);
    register_layer("k_proj", k_proj);
    register_layer("v_proj", v_proj);
    register_layer("o_proj", o_proj);
    if (c.qk_norm) {  // Gemma 3
      q_norm = std::make_shared<RMSNorm>(Dh, c.rms_norm_eps, true);
      k_norm = std::make_shared<RMSNorm>(Dh, c.rms_norm_eps, true);
      register_layer("q_norm", q_norm);
      register_layer("k_norm", k_norm);
    }
  }

  at::Tensor forward(const at::Tensor & x, const AttentionContext & ctx, const std::pair<at::Tensor, at::Tensor> & rope) {
    const int64_t B = x.size(0), S = x.size(1), Dh = cfg.head_dim;
    at::Tensor q = q_proj->forward(x).view({B, S, cfg.num_heads, Dh});
    at::Tensor k = k_proj->forward(x).view({B, S, cfg.num_kv_heads, Dh});
    at::Tensor v = v_proj->forward(x).view({B, S, cfg.num_kv_heads, Dh}).transpose(1, 2);
    if (q_norm) {
      q = q_norm->forward(q);
      k = k_norm->forward(k);
    }
    q = blocks::apply_rope(q.transpose(1, 2), rope.first, rope.second);
    k = blocks::apply_rope(k.transpose(1, 2), rope.first, rope.second);
    auto kv = blocks::update_cache(ctx, layer_idx, k, v);
    const double scale = cfg.attention_scale > 0 ? cfg.attention_scale : 1.0 / std::sqrt(static_cast<double>(Dh));
    at::Tensor out = blocks::attention(q, kv.first, kv.second, ctx.mask_for(cfg.layer_slides(layer_idx)), scale,
                                       cfg.attn_logit_softcapping);
    return o_proj->forward(out);
  }

  const ModelConfig & cfg;
  int64_t layer_idx;
  LayerPtr q_proj, k_proj, v_proj, o_proj, q_norm, k_norm;
};

class GemmaMLP : public Module {
 public:
  explicit GemmaMLP(const ModelConfig & c) : act(c.hidden_act) {
    gate_proj = std::make_shared<Linear>(c.hidden_size, c.intermediate_size, false);
    up_proj = std::make_shared<Linear>(c.hidden_size, c.intermediate_size, false);
    down_proj = std::make_shared<Linear>(c.intermediate_size, c.hidden_size, false);
    register_layer("gate_proj", gate_proj);
    register_layer("up_proj", up_proj);
    register_layer("down_proj", down_proj);
  }
  at::Tensor forward(const at::Tensor & x) {
    return down_proj->forward(blocks::activation(act, gate_proj->forward(x)) * up_proj->forward(x));
  }
  std::string act;
  LayerPtr gate_proj, up_proj, down_proj;
};

class GemmaDecoderLayer : public Module {
 public:
  GemmaDecoderLayer(const ModelConfig & c, int64_t layer) {
    self_attn = register_module("self_attn", std::make_shared<GemmaAttention>(c, layer));
    mlp = register_module("mlp", std::make_shared<GemmaMLP>(c));
    for (auto * n : {&input_layernorm, &post_attention_layernorm, &pre_feedforward_layernorm, &post_feedforward_layernorm}) {
      *n = std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, true);
    }
    register_layer("input_layernorm", input_layernorm);
    register_layer("post_attention_layernorm", post_attention_layernorm);
    register_layer("pre_feedforward_layernorm", pre_feedforward_layernorm);
    register_layer("post_feedforward_layernorm", post_feedforward_layernorm);
  }
  at::Tensor forward(const at::Tensor & h, const AttentionContext & ctx, const std::pair<at::Tensor, at::Tensor> & rope) {
    at::Tensor x = h + post_attention_layernorm->forward(self_attn->forward(input_layernorm->forward(h), ctx, rope));
    return x + post_feedforward_layernorm->forward(mlp->forward(pre_feedforward_layernorm->forward(x)));
  }
  std::shared_ptr<GemmaAttention> self_attn;
  std::shared_ptr<GemmaMLP> mlp;
  LayerPtr input_layernorm, post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm;
};

class GemmaModel : public Module {
 public:
  explicit GemmaModel(const ModelConfig & c) {
    embed_tokens = std::make_shared<Embedding>(c.vocab_size, c.hidden_size, c.pad_token_id);
    register_layer("embed_tokens", embed_tokens);
    layers = register_module("layers", std::make_shared<ModuleList>());
    for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(std::make_shared<GemmaDecoderLayer>(c, i));
    norm = std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, true);
    register_layer("norm", norm);
  }
  LayerPtr embed_tokens, norm;
  std::shared_ptr<ModuleList> layers;
};

class GemmaForCausalLM : public CausalLM {
 public:
  explicit GemmaForCausalLM(const ModelConfig & c) : CausalLM(c) {
    model = register_module("model", std::make_shared<GemmaModel>(config_));
    lm_head = std::make_shared<Linear>(c.hidden_size, c.vocab_size, false);
    register_layer("lm_head", lm_head);
    tie_weights();
  }
  LayerPtr input_embedding() const override { return model->embed_tokens; }
  LayerPtr output_layer() const override { return lm_head; }

 protected:
  at::Tensor forward_hidden(const at::Tensor & embeds, const AttentionContext & ctx) override {
    at::Tensor h = embeds;
    if (!config_.multiplier_in_lookup) {  // Gemma 2: the model multiplies, in the hidden states' dtype
      h = h * at::scalar_tensor(config_.embedding_multiplier, h.options());
    }
    const auto global = blocks::rope_cos_sin(ctx.position_ids, config_, h.scalar_type());
    std::pair<at::Tensor, at::Tensor> local = global;
    if (config_.rope_local_base_freq > 0) {  // Gemma 3's sliding layers: their own theta, no scaling
      ModelConfig lc = config_;
      lc.rope_theta = config_.rope_local_base_freq;
      lc.rope_scaling = RopeScaling{};
      local = blocks::rope_cos_sin(ctx.position_ids, lc, h.scalar_type());
    }
    for (size_t i = 0; i < model->layers->size(); ++i) {
      const bool sliding = config_.layer_slides(static_cast<int64_t>(i));
      const auto & cs = sliding ? local : global;
      h = decoder_layer(h, {ctx, cs.first, cs.second}, [l = model->layers->at<GemmaDecoderLayer>(i)](const at::Tensor & x, const LayerArgs & a) {
        return l->forward(x, a.ctx, {a.cos, a.sin});
      });
    }
    return model->norm->forward(h);  // (the head's final_logit_softcapping: CausalLM::logits)
  }

 public:
  std::shared_ptr<GemmaModel> model;
  LayerPtr lm_head;
};

}  // namespace

std::shared_ptr<CausalLM> build_gemma(const ModelConfig & cfg) { return std::make_shared<GemmaForCausalLM>(cfg); }

void read_gemma_config(const ConfigReader & r, ModelConfig & c) {
  const std::string & src = r.source();
  const bool gemma3 = c.model_type == "gemma3_text";
  c.intermediate_size = r.integer("intermediate_size", 0, true);
  c.num_kv_heads = r.integer("num_key_value_heads", c.num_heads, false);
  c.head_dim = r.integer("head_dim", c.hidden_size / c.num_heads, false);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.rope_theta = r.number("rope_theta", gemma3 ? 1e6 : 10000.0);
  c.hidden_act = r.string("hidden_activation", "gelu_pytorch_tanh");
  PEFT_CHECK(c.hidden_act == "gelu_pytorch_tanh" || c.hidden_act == "gelu" || c.hidden_act == "gelu_new", src,
             ": hidden_activation '", c.hidden_act, "' is not supported (gelu_pytorch_tanh, gelu)");
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", true);
  c.attention_bias = r.boolean("attention_bias", false);
  c.qk_norm = gemma3;
  c.embedding_multiplier = std::sqrt(static_cast<double>(c.hidden_size));
  c.multiplier_in_lookup = gemma3;
  c.attention_scale = 1.0 / std::sqrt(r.number("query_pre_attn_scalar", static_cast<double>(c.head_dim)));
  auto optional_number = [&](const char * k, double def) {
    return r.has(k) && r.json()[k].is_null() ? 0.0 : r.number(k, def);
  };
  c.attn_logit_softcapping = optional_number("attn_logit_softcapping", gemma3 ? 0.0 : 50.0);
  c.final_logit_softcapping = optional_number("final_logit_softcapping", gemma3 ? 0.0 : 30.0);
  c.sliding_window = r.has("sliding_window") && r.json()["sliding_window"].is_null()
                         ? 0
                         : r.integer("sliding_window", 4096, false);
  // transformers' default layer_types: Gemma 2 slides on every other layer from the first; Gemma 3 on all but
  // every sliding_window_pattern-th
  const int64_t pattern = gemma3 ? r.integer("sliding_window_pattern", 6, false) : 2;
  for (int64_t i = 0; i < c.num_layers; ++i) c.sliding_layers.push_back((i + 1) % pattern != 0);
  blocks::read_layer_types(r, c);
  if (gemma3) c.rope_local_base_freq = r.number("rope_local_base_freq", 10000.0);
  PEFT_CHECK(c.num_heads % c.num_kv_heads == 0, src, ": num_attention_heads ", c.num_heads,
             " is not a multiple of num_key_value_heads ", c.num_kv_heads);
  PEFT_CHECK(c.head_dim % 2 == 0, src, ": head_dim ", c.head_dim, " must be even for rotary embeddings");
  blocks::read_rope_scaling(r, c);
}

}  // namespace peft
