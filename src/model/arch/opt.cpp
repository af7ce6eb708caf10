// OPT (OPTForCausalLM): learned positions with offset 2, pre- or post-LayerNorm, ReLU MLP, biases,
// lm_head tied to the token embedding, project_in/out when word_embed_proj_dim != hidden_size.
#include "peft/error.h"
#include "peft/model/blocks.h"
#include "peft/nn/layers.h"

namespace peft {
namespace {

constexpr int64_t kPositionOffset = 2;

class OPTAttention : public Module {
 public:
  OPTAttention(const ModelConfig & c, int64_t layer) : cfg(c), layer_idx(layer) {
    const int64_t D = c.hidden_size;
    q_proj = std::make_shared<Linear>(D, D, c.enable_bias);
    k_proj = std::make_shared<Linear>(D, D, c.enable_bias);
    v_proj = std::make_shared<Linear>(D, D, c.enable_bias);
    out_proj = std::make_shared<Linear>(D, D, c.enable_bias);
    register_layer("k_proj", k_proj);
    register_layer("v_proj", v_proj);
    register_layer("q_proj", q_proj);
    register_layer("out_proj", out_proj);
  }
  at::Tensor forward(const at::Tensor & x, const AttentionContext & ctx) {
    const int64_t B = x.size(0), S = x.size(1), H = cfg.num_heads, Dh = cfg.head_dim;
    const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
    at::Tensor q = (q_proj->forward(x) * scale).view({B, S, H, Dh}).transpose(1, 2);
    at::Tensor k = k_proj->forward(x).view({B, S, H, Dh}).transpose(1, 2);
    at::Tensor v = v_proj->forward(x).view({B, S, H, Dh}).transpose(1, 2);
    auto kv = blocks::update_cache(ctx, layer_idx, k, v);
    return out_proj->forward(blocks::attention(q, kv.first, kv.second, ctx.mask, 1.0));
  }
  const ModelConfig & cfg;
  int64_t layer_idx;
  LayerPtr q_proj, k_proj, v_proj, out_proj;
};

class OPTDecoderLayer : public Module {
 public:
  OPTDecoderLayer(const ModelConfig & c, int64_t layer) : cfg(c) {
    self_attn = register_module("self_attn", std::make_shared<OPTAttention>(c, layer));
    self_attn_layer_norm = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, c.layer_norm_elementwise_affine);
    fc1 = std::make_shared<Linear>(c.hidden_size, c.intermediate_size, c.enable_bias);
    fc2 = std::make_shared<Linear>(c.intermediate_size, c.hidden_size, c.enable_bias);
    final_layer_norm = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, c.layer_norm_elementwise_affine);
    register_layer("self_attn_layer_norm", self_attn_layer_norm);
    register_layer("fc1", fc1);
    register_layer("fc2", fc2);
    register_layer("final_layer_norm", final_layer_norm);
  }
  at::Tensor forward(const at::Tensor & h, const AttentionContext & ctx) {
    const bool pre = cfg.do_layer_norm_before;
    at::Tensor x = pre ? self_attn_layer_norm->forward(h) : h;
    x = h + self_attn->forward(x, ctx);
    if (!pre) x = self_attn_layer_norm->forward(x);
    at::Tensor y = pre ? final_layer_norm->forward(x) : x;
    y = fc1->forward(y);
    y = blocks::activation(cfg.hidden_act, y);
    y = x + fc2->forward(y);
    return pre ? y : final_layer_norm->forward(y);
  }
  const ModelConfig & cfg;
  std::shared_ptr<OPTAttention> self_attn;
  LayerPtr self_attn_layer_norm, fc1, fc2, final_layer_norm;
};

class OPTDecoder : public Module {
 public:
  explicit OPTDecoder(const ModelConfig & c) {
    const int64_t E = c.word_embed_proj_dim, D = c.hidden_size;
    embed_tokens = std::make_shared<Embedding>(c.vocab_size, E, c.pad_token_id);
    embed_positions = std::make_shared<Embedding>(c.max_position_embeddings + kPositionOffset, D);
    register_layer("embed_tokens", embed_tokens);
    register_layer("embed_positions", embed_positions);
    if (E != D) {
      project_in = std::make_shared<Linear>(E, D, false);
      project_out = std::make_shared<Linear>(D, E, false);
      register_layer("project_in", project_in);
      register_layer("project_out", project_out);
    }
    if (c.do_layer_norm_before) {
      final_layer_norm = std::make_shared<LayerNorm>(D, c.layer_norm_eps, c.layer_norm_elementwise_affine);
      register_layer("final_layer_norm", final_layer_norm);
    }
    layers = register_module("layers", std::make_shared<ModuleList>());
    for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(std::make_shared<OPTDecoderLayer>(c, i));
  }
  LayerPtr embed_tokens, embed_positions, project_in, project_out, final_layer_norm;
  std::shared_ptr<ModuleList> layers;
};

class OPTModel : public Module {
 public:
  explicit OPTModel(const ModelConfig & c) { decoder = register_module("decoder", std::make_shared<OPTDecoder>(c)); }
  std::shared_ptr<OPTDecoder> decoder;
};

class OPTForCausalLM : public CausalLM {
 public:
  explicit OPTForCausalLM(const ModelConfig & c) : CausalLM(c) {
    model = register_module("model", std::make_shared<OPTModel>(config_));
    lm_head = std::make_shared<Linear>(c.word_embed_proj_dim, c.vocab_size, false);
    register_layer("lm_head", lm_head);
    tie_weights();
  }
  LayerPtr input_embedding() const override { return model->decoder->embed_tokens; }
  LayerPtr output_layer() const override { return lm_head; }

 protected:
  at::Tensor forward_hidden(const at::Tensor & embeds, const AttentionContext & ctx) override {
    auto & d = *model->decoder;
    at::Tensor h = embeds;
    if (d.project_in) h = d.project_in->forward(h);
    h = h + d.embed_positions->forward(ctx.position_ids + kPositionOffset);
    for (size_t i = 0; i < d.layers->size(); ++i) {
      h = decoder_layer(h, {ctx}, [l = d.layers->at<OPTDecoderLayer>(i)](const at::Tensor & x, const LayerArgs & a) {
        return l->forward(x, a.ctx);
      });
    }
    if (d.final_layer_norm) h = d.final_layer_norm->forward(h);
    if (d.project_out) h = d.project_out->forward(h);
    return h;
  }

 public:
  std::shared_ptr<OPTModel> model;
  LayerPtr lm_head;
};

}  // namespace

std::shared_ptr<CausalLM> build_opt(const ModelConfig & cfg) { return std::make_shared<OPTForCausalLM>(cfg); }

void read_opt_config(const ConfigReader & r, ModelConfig & c) {
  c.intermediate_size = r.integer("ffn_dim", 0, true);
  c.learned_positions = true;
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.hidden_size / c.num_heads;
  c.word_embed_proj_dim = r.integer("word_embed_proj_dim", c.hidden_size, false);
  c.do_layer_norm_before = r.boolean("do_layer_norm_before", true);
  c.enable_bias = r.boolean("enable_bias", true);
  c.layer_norm_elementwise_affine = r.boolean("layer_norm_elementwise_affine", true);
  c.hidden_act = r.string("activation_function", "relu");
  PEFT_CHECK(c.hidden_act == "relu" || c.hidden_act == "gelu", r.source(), ": activation_function '", c.hidden_act,
             "' is not supported (relu, gelu)");
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", true);
}

}  // namespace peft
