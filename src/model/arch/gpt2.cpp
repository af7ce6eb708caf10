// GPT-2 (GPT2LMHeadModel): learned positions, pre-LayerNorm blocks, one fused c_attn projection (q | k | v),
// transformers' Conv1D layers (weights stored (in, out)), a GELU MLP (gelu_new: the tanh form), lm_head
// tied to wte.
#include "peft/error.h"
#include "peft/model/blocks.h"
#include "peft/nn/layers.h"

namespace peft {
namespace {

class GPT2Attention : public Module {
 public:
  GPT2Attention(const ModelConfig & c, int64_t layer) : cfg(c), layer_idx(layer) {
    const int64_t D = c.hidden_size;
    c_attn = std::make_shared<Conv1D>(D, 3 * D, true);
    c_proj = std::make_shared<Conv1D>(D, D, true);
    register_layer("c_attn", c_attn);
    register_layer("c_proj", c_proj);
  }
  at::Tensor forward(const at::Tensor & x, const AttentionContext & ctx) {
    const int64_t B = x.size(0), S = x.size(1), H = cfg.num_heads, Dh = cfg.head_dim, D = cfg.hidden_size;
    const auto qkv = c_attn->forward(x).split(D, -1);
    const at::Tensor q = qkv[0].reshape({B, S, H, Dh}).transpose(1, 2);
    const at::Tensor k = qkv[1].reshape({B, S, H, Dh}).transpose(1, 2);
    const at::Tensor v = qkv[2].reshape({B, S, H, Dh}).transpose(1, 2);
    auto kv = blocks::update_cache(ctx, layer_idx, k, v);
    return c_proj->forward(blocks::attention(q, kv.first, kv.second, ctx.mask, 1.0 / std::sqrt(static_cast<double>(Dh))));
  }
  const ModelConfig & cfg;
  int64_t layer_idx;
  LayerPtr c_attn, c_proj;
};

class GPT2MLP : public Module {
 public:
  explicit GPT2MLP(const ModelConfig & c) : cfg(c) {
    c_fc = std::make_shared<Conv1D>(c.hidden_size, c.intermediate_size, true);
    c_proj = std::make_shared<Conv1D>(c.intermediate_size, c.hidden_size, true);
    register_layer("c_fc", c_fc);
    register_layer("c_proj", c_proj);
  }
  at::Tensor forward(const at::Tensor & x) {
    at::Tensor h = c_fc->forward(x);
    h = blocks::activation(cfg.hidden_act, h);
    return c_proj->forward(h);
  }
  const ModelConfig & cfg;
  LayerPtr c_fc, c_proj;
};

class GPT2Block : public Module {
 public:
  GPT2Block(const ModelConfig & c, int64_t layer) {
    ln_1 = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, true);
    ln_2 = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, true);
    register_layer("ln_1", ln_1);
    attn = register_module("attn", std::make_shared<GPT2Attention>(c, layer));
    register_layer("ln_2", ln_2);
    mlp = register_module("mlp", std::make_shared<GPT2MLP>(c));
  }
  at::Tensor forward(const at::Tensor & h, const AttentionContext & ctx) {
    at::Tensor x = h + attn->forward(ln_1->forward(h), ctx);
    return x + mlp->forward(ln_2->forward(x));
  }
  LayerPtr ln_1, ln_2;
  std::shared_ptr<GPT2Attention> attn;
  std::shared_ptr<GPT2MLP> mlp;
};

class GPT2Model : public Module {
 public:
  explicit GPT2Model(const ModelConfig & c) {
    wte = std::make_shared<Embedding>(c.vocab_size, c.hidden_size);
    wpe = std::make_shared<Embedding>(c.max_position_embeddings, c.hidden_size);
    register_layer("wte", wte);
    register_layer("wpe", wpe);
    h = register_module("h", std::make_shared<ModuleList>());
    for (int64_t i = 0; i < c.num_layers; ++i) h->push_back(std::make_shared<GPT2Block>(c, i));
    ln_f = std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, true);
    register_layer("ln_f", ln_f);
  }
  LayerPtr wte, wpe, ln_f;
  std::shared_ptr<ModuleList> h;
};

class GPT2LMHeadModel : public CausalLM {
 public:
  explicit GPT2LMHeadModel(const ModelConfig & c) : CausalLM(c) {
    transformer = register_module("transformer", std::make_shared<GPT2Model>(config_));
    lm_head = std::make_shared<Linear>(c.hidden_size, c.vocab_size, false);
    register_layer("lm_head", lm_head);
    tie_weights();
  }
  LayerPtr input_embedding() const override { return transformer->wte; }
  LayerPtr output_layer() const override { return lm_head; }

 protected:
  at::Tensor forward_hidden(const at::Tensor & embeds, const AttentionContext & ctx) override {
    auto & t = *transformer;
    at::Tensor x = embeds + t.wpe->forward(ctx.position_ids);
    for (size_t i = 0; i < t.h->size(); ++i) {
      x = decoder_layer(x, {ctx}, [l = t.h->at<GPT2Block>(i)](const at::Tensor & y, const LayerArgs & a) {
        return l->forward(y, a.ctx);
      });
    }
    return t.ln_f->forward(x);
  }

 public:
  std::shared_ptr<GPT2Model> transformer;
  LayerPtr lm_head;
};

}  // namespace

std::shared_ptr<CausalLM> build_gpt2(const ModelConfig & cfg) { return std::make_shared<GPT2LMHeadModel>(cfg); }

// GPT2Config's own names (transformers maps hidden_size and the others onto them)
void rename_gpt2_config(nlohmann::json & j) {
  for (const auto & [mine, theirs] : std::vector<std::pair<const char *, const char *>>{
           {"hidden_size", "n_embd"}, {"num_hidden_layers", "n_layer"}, {"num_attention_heads", "n_head"},
           {"max_position_embeddings", "n_positions"}}) {
    if ((!j.contains(mine) || j[mine].is_null()) && j.contains(theirs)) j[mine] = j[theirs];
  }
}

void read_gpt2_config(const ConfigReader & r, ModelConfig & c) {
  c.learned_positions = true;
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.hidden_size / c.num_heads;
  c.intermediate_size = r.integer("n_inner", 4 * c.hidden_size, false, 1);
  c.layer_norm_eps = r.number("layer_norm_epsilon", 1e-5);
  c.hidden_act = r.string("activation_function", "gelu_new");
  PEFT_CHECK(blocks::activation_supported(c.hidden_act), r.source(), ": activation_function '", c.hidden_act,
             "' is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu)");
  PEFT_CHECK(r.boolean("scale_attn_weights", true), r.source(), ": scale_attn_weights false is not supported");
  PEFT_CHECK(!r.boolean("scale_attn_by_inverse_layer_idx", false), r.source(),
             ": scale_attn_by_inverse_layer_idx is not supported");
  PEFT_CHECK(!r.boolean("add_cross_attention", false), r.source(), ": add_cross_attention is not supported");
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", true);
}

}  // namespace peft
