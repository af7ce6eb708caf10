// Shared building blocks of decoder-only transformers: rotary embeddings, masks, scaled dot-product
// attention over the (optional) KV cache. Architecture files compose these; they never mention adapters.
#pragma once
#include <ATen/ATen.h>

#include "peft/model/causal-lm.h"

namespace peft::blocks {

/// cos, sin of shape (B, 1, S, Dh) for rotary embeddings at `position_ids` (B, S): rope_theta, head_dim and
/// rope_scaling of `c` (src/model/rope.cpp).
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor & position_ids, const ModelConfig & c, at::ScalarType dtype);
/// Read config.json's rope_scaling into c.rope_scaling (an error names any field or type not supported).
void read_rope_scaling(const ConfigReader & r, ModelConfig & c);
/// x * cos + rotate_half(x) * sin, x: (B, H, S, Dh); with cos narrower than Dh (a partial rotary embedding)
/// only the first cos.size(-1) features of each head rotate.
at::Tensor apply_rope(const at::Tensor & x, const at::Tensor & cos, const at::Tensor & sin);

/// An MLP's activation by its config.json name: relu, gelu (exact), gelu_new / gelu_pytorch_tanh (the
/// tanh form). Config readers check the name with activation_supported().
at::Tensor activation(const std::string & name, const at::Tensor & x);
bool activation_supported(const std::string & name);

/// config.json's layer_types (sliding_attention / full_attention per layer) into c.sliding_layers, when given.
void read_layer_types(const ConfigReader & r, ModelConfig & c);

/// Write k, v (B, Hkv, S, Dh) into the cache of layer `layer` (if any) and return the full keys/values.
std::pair<at::Tensor, at::Tensor> update_cache(const AttentionContext & ctx, int64_t layer, const at::Tensor & k,
                                               const at::Tensor & v);

/// softmax(q k^T * scale + mask) v with grouped-query heads; q (B, H, S, Dh), k/v (B, Hkv, L, Dh).
/// softcap > 0 (Gemma 2): the scaled scores become tanh(scores / softcap) * softcap before the mask.
/// Returns (B, S, H*Dh).
at::Tensor attention(const at::Tensor & q, const at::Tensor & k, const at::Tensor & v, const at::Tensor & mask,
                     double scale, double softcap = 0);

}  // namespace peft::blocks
