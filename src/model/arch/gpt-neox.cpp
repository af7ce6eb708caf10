// GPT-NeoX (GPTNeoXForCausalLM; Pythia): LayerNorm, one query_key_value projection laid out per head
// (q | k | v of head 0, then of head 1, ...), a partial rotary embedding (rotary_pct of each head), a GELU
// MLP, the parallel residual (x + attn(ln1(x)) + mlp(ln2(x))) or the sequential one, an untied embed_out.
#include "peft/error.h"
#include "peft/model/blocks.h"
#include "peft/nn/layers.h"

namespace peft {
namespace {

class GPTNeoXAttention : public Module {
 public:
  GPTNeoXAttention(const ModelConfig & c, int64_t layer) : cfg(c), layer_idx(layer) {
    const int64_t D = c.hidden_size;
    query_key_value = std::make_shared<Linear>(D, 3 * D, c.attention_bias);
    dense = std::make_shared<Linear>(D, D, c.attention_bias);
    register_layer("query_key_value", query_key_value);
    register_layer("dense", dense);
  }
  at::Tensor forward(const at::Tensor & x, const AttentionContext & ctx, const at::Tensor & cos, const at::Tensor & sin) {
    const int64_t B = x.size(0), S = x.size(1), H = cfg.num_heads, Dh = cfg.head_dim;
    const at::Tensor qkv = query_key_value->forward(x).view({B, S, H, 3 * Dh}).transpose(1, 2);  // (B, H, S, 3 Dh)
    const at::Tensor q = blocks::apply_rope(qkv.narrow(-1, 0, Dh), cos, sin);
    const at::Tensor k = blocks::apply_rope(qkv.narrow(-1, Dh, Dh), cos, sin);
    const at::Tensor v = qkv.narrow(-1, 2 * Dh, Dh);
    auto kv = blocks::update_cache(ctx, layer_idx, k, v);
    return dense->forward(blocks::attention(q, kv.first, kv.second, ctx.mask, 1.0 / std::sqrt(static_cast<double>(Dh))));
  }
  const ModelConfig & cfg;
  int64_t layer_idx;
  LayerPtr query_key_value, dense;
};

class GPTNeoXMLP : public Module {
 public:
  explicit GPTNeoXMLP(const ModelConfig & c) : cfg(c) {
    dense_h_to_4h = std::make_shared<Linear>(c.hidden_size, c.intermediate_size, true);
    dense_4h_to_h = std::make_shared<Linear>(c.intermediate_size, c.hidden_size, true);
    register_layer("dense_h_to_4h", dense_h_to_4h);
    register_layer("dense_4h_to_h", dense_4h_to_h);
  }
  at::Tensor forward(const at::Tensor & x) {
    at::Tensor h = dense_h_to_4h->forward(x);
    h = blocks::activation(cfg.hidden_act, h);
    return dense_4h_to_h->forward(h);
  }
  const ModelConfig & cfg;
  LayerPtr dense_h_to_4h, dense_4h_to_h;
};

class GPTNeoXLayer : public Module {
 public:
  GPTNeoXLayer(const ModelConfig & c, int64_t layer) : parallel(c.parallel_residual) {
    input_layernorm = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, true);
    post_attention_layernorm = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, true);
    register_layer("input_layernorm", input_layernorm);
    register_layer("post_attention_layernorm", post_attention_layernorm);
    attention = register_module("attention", std::make_shared<GPTNeoXAttention>(c, layer));
    mlp = register_module("mlp", std::make_shared<GPTNeoXMLP>(c));
  }
  at::Tensor forward(const at::Tensor & h, const AttentionContext & ctx, const at::Tensor & cos, const at::Tensor & sin) {
    const at::Tensor a = attention->forward(input_layernorm->forward(h), ctx, cos, sin);
    if (parallel) return mlp->forward(post_attention_layernorm->forward(h)) + a + h;
    const at::Tensor x = a + h;
    return mlp->forward(post_attention_layernorm->forward(x)) + x;
  }
  bool parallel;
  LayerPtr input_layernorm, post_attention_layernorm;
  std::shared_ptr<GPTNeoXAttention> attention;
  std::shared_ptr<GPTNeoXMLP> mlp;
};

class GPTNeoXModel : public Module {
 public:
  explicit GPTNeoXModel(const ModelConfig & c) {
    embed_in = std::make_shared<Embedding>(c.vocab_size, c.hidden_size);
    register_layer("embed_in", embed_in);
    layers = register_module("layers", std::make_shared<ModuleList>());
    for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(std::make_shared<GPTNeoXLayer>(c, i));
    final_layer_norm = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, true);
    register_layer("final_layer_norm", final_layer_norm);
  }
  LayerPtr embed_in, final_layer_norm;
  std::shared_ptr<ModuleList> layers;
};

class GPTNeoXForCausalLM : public CausalLM {
 public:
  explicit GPTNeoXForCausalLM(const ModelConfig & c) : CausalLM(c) {
    gpt_neox = register_module("gpt_neox", std::make_shared<GPTNeoXModel>(config_));
    embed_out = std::make_shared<Linear>(c.hidden_size, c.vocab_size, false);
    register_layer("embed_out", embed_out);
    tie_weights();
  }
  LayerPtr input_embedding() const override { return gpt_neox->embed_in; }
  LayerPtr output_layer() const override { return embed_out; }

 protected:
  at::Tensor forward_hidden(const at::Tensor & embeds, const AttentionContext & ctx) override {
    auto & m = *gpt_neox;
    at::Tensor h = embeds;
    const auto cs = blocks::rope_cos_sin(ctx.position_ids, config_, h.scalar_type());
    for (size_t i = 0; i < m.layers->size(); ++i) {
      h = decoder_layer(h, {ctx, cs.first, cs.second}, [l = m.layers->at<GPTNeoXLayer>(i)](const at::Tensor & x, const LayerArgs & a) {
        return l->forward(x, a.ctx, a.cos, a.sin);
      });
    }
    return m.final_layer_norm->forward(h);
  }

 public:
  std::shared_ptr<GPTNeoXModel> gpt_neox;
  LayerPtr embed_out;
};

}  // namespace

std::shared_ptr<CausalLM> build_gpt_neox(const ModelConfig & cfg) { return std::make_shared<GPTNeoXForCausalLM>(cfg); }

void read_gpt_neox_config(const ConfigReader & r, ModelConfig & c) {
  const std::string & src = r.source();
  c.intermediate_size = r.integer("intermediate_size", 0, true);
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.hidden_size / c.num_heads;
  c.layer_norm_eps = r.number("layer_norm_eps", 1e-5);
  // rotary_emb_base is the older name of rope_theta; rotary_pct of partial_rotary_factor
  c.rope_theta = r.number("rope_theta", r.number("rotary_emb_base", 10000.0));
  c.partial_rotary_factor = r.number("partial_rotary_factor", r.number("rotary_pct", 0.25));
  PEFT_CHECK(c.partial_rotary_factor <= 1.0 && c.rotary_dim() % 2 == 0 && c.rotary_dim() > 0, src, ": rotary_pct ",
             c.partial_rotary_factor, " leaves ", c.rotary_dim(), " rotated features of ", c.head_dim,
             " (it must be a positive even number)");
  c.parallel_residual = r.boolean("use_parallel_residual", true);
  c.attention_bias = r.boolean("attention_bias", true);
  c.hidden_act = r.string("hidden_act", "gelu");
  PEFT_CHECK(blocks::activation_supported(c.hidden_act), src, ": hidden_act '", c.hidden_act,
             "' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)");
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  blocks::read_rope_scaling(r, c);
}

}  // namespace peft
