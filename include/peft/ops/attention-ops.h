// The two products of attention for one query row (a decode step) as custom ops (namespace "peft"): per
// (batch, head), scores = q K^T and out = p V as matrix-vector work on the cache in place. at::matmul
// runs these as B*H separate GEMM calls (at batch 8 with 8 heads, 12% of a compiled decode step).
// With grad mode on and an input that requires grad, or for other dtypes/devices/layouts: at::matmul.
#pragma once
#include <ATen/ATen.h>

namespace peft::ops {

/// q (B, H, 1, Dh), k (B, Hkv, L, Dh) -> (B, H, 1, L) = q k^T; Hkv divides H (grouped-query attention:
/// query head h reads key head h / (H / Hkv), as the repeated heads of Hugging Face's repeat_kv).
at::Tensor one_row_scores(const at::Tensor & q, const at::Tensor & k);
/// p (B, H, 1, L), v (B, Hkv, L, Dh) -> (B, H, 1, Dh) = p v (heads grouped as for one_row_scores). Positions whose p is exactly 0 (masked) are skipped.
at::Tensor one_row_mix(const at::Tensor & p, const at::Tensor & v);

/// Grouped-query attention: t (B, Hkv, L, Dh) with each key/value head repeated H/Hkv times -> (B, H, L, Dh)
/// (Hugging Face's repeat_kv; t itself when Hkv == H).
at::Tensor repeat_heads(const at::Tensor & t, int64_t H);

}  // namespace peft::ops
