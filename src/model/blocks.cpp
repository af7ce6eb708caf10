#include "peft/model/blocks.h"

#include "peft/error.h"
#include "peft/ops/attention-ops.h"
#include "peft/ops/decoder-ops.h"

namespace peft::blocks {

at::Tensor apply_rope(const at::Tensor & x, const at::Tensor & cos, const at::Tensor & sin) {
  const int64_t R = cos.size(-1), Dh = x.size(-1);
  if (R == Dh) return ops::rotary(x, cos, sin);  // x * cos + cat(-x2, x1) * sin
  // a partial rotary embedding: the first R features of each head rotate, the rest pass
  return at::cat({ops::rotary(x.narrow(-1, 0, R), cos, sin), x.narrow(-1, R, Dh - R)}, -1);
}

at::Tensor activation(const std::string & name, const at::Tensor & x) {
  if (name == "relu") return at::relu(x);
  if (name == "gelu") return at::gelu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh
}

void read_layer_types(const ConfigReader & r, ModelConfig & c) {
  if (!r.has("layer_types") || r.json()["layer_types"].is_null()) return;
  const auto & t = r.json()["layer_types"];
  PEFT_CHECK(t.is_array() && static_cast<int64_t>(t.size()) == c.num_layers, r.source(),
             ": field 'layer_types' must list one type per layer (", c.num_layers, ")");
  c.sliding_layers.clear();
  for (const auto & x : t) {
    PEFT_CHECK(x == "sliding_attention" || x == "full_attention", r.source(), ": field 'layer_types' holds ", x.dump(),
               " (sliding_attention or full_attention)");
    c.sliding_layers.push_back(x == "sliding_attention");
  }
}

bool activation_supported(const std::string & name) {
  return name == "relu" || name == "gelu" || name == "gelu_new" || name == "gelu_pytorch_tanh";
}

std::pair<at::Tensor, at::Tensor> update_cache(const AttentionContext & ctx, int64_t layer, const at::Tensor & k,
                                               const at::Tensor & v) {
  if (ctx.cache == nullptr) return {k, v};
  at::Tensor & kc = ctx.cache->k[layer];
  at::Tensor & vc = ctx.cache->v[layer];
  kc.index_copy_(2, ctx.cache_position, k.to(kc.scalar_type()));
  vc.index_copy_(2, ctx.cache_position, v.to(vc.scalar_type()));
  return {kc, vc};
}

namespace {
// Gemma 2: scores * scale, then tanh(scores / cap) * cap (before the mask); the softmax's scale is then 1
at::Tensor softcapped(const at::Tensor & scores, double & scale, double cap) {
  if (cap <= 0) return scores;
  const at::Tensor s = scores * scale;
  scale = 1.0;
  return at::tanh(s / cap) * cap;
}

// a b, for 16-bit operands on the CPU (a bfloat16 model) computed in float32 and rounded to their dtype:
// LibTorch 1.13's bfloat16 matmul goes to oneDNN, which has no kernel for it without AVX-512
at::Tensor matmul_wide(const at::Tensor & a, const at::Tensor & b) {
  const auto t = a.scalar_type();
  if (a.is_cpu() && (t == at::kBFloat16 || t == at::kHalf)) return at::matmul(a.to(at::kFloat), b.to(at::kFloat)).to(t);
  return at::matmul(a, b);
}
}  // namespace

at::Tensor attention(const at::Tensor & q, const at::Tensor & k, const at::Tensor & v, const at::Tensor & mask,
                     double scale, double softcap) {
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), Dh = q.size(3);
  if (S == 1) {
    // a decode step (one query row): the products as B*H matrix-vector products on the cache in place,
    // grouped heads read where they are (peft::one_row_*), not B*H GEMM calls
    const at::Tensor scores = softcapped(ops::one_row_scores(q, k), scale, softcap);
    const at::Tensor probs = ops::masked_softmax(scores, mask, scale);  // (B, H, 1, L)
    return ops::one_row_mix(probs, v).transpose(1, 2).reshape({B, S, H * Dh});
  }
  const at::Tensor kk = ops::repeat_heads(k, H), vv = ops::repeat_heads(v, H);  // grouped-query attention
  // softmax(where(mask, q k^T * scale, lowest)) in float32
  const at::Tensor scores = softcapped(matmul_wide(q, kk.transpose(2, 3)), scale, softcap);
  const at::Tensor probs = ops::masked_softmax(scores, mask, scale);  // (B, H, S, L)
  at::Tensor out = matmul_wide(probs, vv);  // (B, H, S, Dh)
  return out.transpose(1, 2).reshape({B, S, H * Dh});
}

}  // namespace peft::blocks
