// The adapter math as LibTorch custom ops (namespace "peft"), so that eager mode and the compile layer
// share one implementation and a captured graph holds each adapter computation as a single node that
// passes can recognise. Kernels are CompositeImplicitAutograd: autograd comes from their ATen ops.
// B = batch, T = seq, I = in, O = out, R = rank, V = vocab, D = embedding dim.
#pragma once
#include <ATen/ATen.h>

namespace peft::ops {

/// y + scale * (drop(x) A^T B^T + bias)      y (.., O), x (.., I), A (R, I), B (O, R), scale 0-dim
at::Tensor lora_add(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                    const c10::optional<at::Tensor> & bias, const at::Tensor & scale, double dropout, bool train);

/// DoRA on top of y = base(x) (+ the adapters before it): y + (g - 1) (y - bias) + g * scale * (x~ A^T B^T),
/// g = m / ||W + s B A||_rows (norm detached, W the base weight); with dropout in training, x~ = drop(x)
/// and the base term is x~ W^T instead of y - bias (PEFT's DoRA forward).
at::Tensor dora_add(const at::Tensor & y, const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & bias,
                    const at::Tensor & A, const at::Tensor & B, const at::Tensor & m, const at::Tensor & scale,
                    double dropout, bool train);

/// y + scale * lookup(ids, A^T) B^T          y (B, T, D), A (R, V), B (D, R)
at::Tensor lora_embedding_add(const at::Tensor & y, const at::Tensor & ids, const at::Tensor & A, const at::Tensor & B,
                              const at::Tensor & scale, int64_t padding_idx);

/// DoRA on an embedding on top of y = base(ids) (+ the adapters before it): g * y + g * scale * lookup(ids, A^T) B^T,
/// g = m / ||E^T + s B A||_rows (D, norm detached, E the base weight): PEFT's DoraEmbeddingVariant.forward, which
/// rescales the running output, earlier adapters' contributions included.
at::Tensor dora_embedding_add(const at::Tensor & y, const at::Tensor & ids, const at::Tensor & E, const at::Tensor & A,
                              const at::Tensor & B, const at::Tensor & m, const at::Tensor & scale, int64_t padding_idx);

/// VeRA: y + lambda_b * ((lambda_d * (drop(x) A^T)) B^T)     A (R, I), B (O, R), lambda_d (R), lambda_b (O)
at::Tensor vera_add(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                    const at::Tensor & lambda_d, const at::Tensor & lambda_b, double dropout, bool train);

/// Mixed-adapter batch of LoRA adapters without biases: y + for each row b, sum over adapters a of
/// routing[rows[a], b] * scales[a] * x_b A_a^T B_a^T, with BTs[a] = B_a^T (R_a, O) contiguous, routing the
/// model's (adapters, B) routing tensor (RowRouting::rows) and scales (n) the adapters' scalings. For a few
/// rows (decode: B * tokens <= kSmallRows) of float32 on the CPU, each row multiplies only by the adapters
/// it uses (Punica's BGMV; a zero weight skips the adapter); otherwise, and where autograd may need the
/// result, math::lora_add_mixed's two GEMMs over all adapters.
at::Tensor lora_mixed_add(const at::Tensor & y, const at::Tensor & x, at::TensorList As, at::TensorList BTs,
                          const at::Tensor & routing, at::IntArrayRef rows, const at::Tensor & scales);

/// Block-diagonal rotation of the input (OFT, BOFT): x (.., R*b) viewed as (.., R, b), block i times Q[i].
/// Q (R, b, b).
at::Tensor block_rotate(const at::Tensor & x, const at::Tensor & Q);

/// RoAd on a layer's output (road_theta / road_alpha of `variant` 1, 2 or 4): y * first + rotate_half(y) * second
/// per group of `group_size` outputs (math::road_cols, math::road_apply). y (.., O) in theta's dtype.
at::Tensor road_rotate(const at::Tensor & y, const at::Tensor & theta, const at::Tensor & alpha, int64_t variant,
                       int64_t group_size);

// ---- ops that only compile passes emit ----

/// lora_add with the low-rank product accumulated into y by one GEMM (addmm), no separate add.
at::Tensor lora_add_fused(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                          const c10::optional<at::Tensor> & bias, const at::Tensor & scale, double dropout, bool train);
/// x (.., I) times the row-stacked A's of sibling adapters that share x: (.., sum R).
at::Tensor lora_shrink(const at::Tensor & x, at::TensorList As);
/// y + scale * (xa[..., offset:offset+R] B^T + bias): the expand half after lora_shrink.
at::Tensor lora_expand_add(const at::Tensor & y, const at::Tensor & xa, int64_t offset, const at::Tensor & B,
                           const c10::optional<at::Tensor> & bias, const at::Tensor & scale);
/// linear for a single row (decode at batch 1): a matrix-vector product, the BLAS GEMV path.
at::Tensor linear_gemv(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b);
/// Rows in a linear layer taken by linear_small's kernel (more: at::linear).
constexpr int64_t kSmallRows = 16;
/// linear for 2..kSmallRows rows (batched decode), float32 on the CPU: each weight read once for all rows
/// (src/kernels, float32 weight kind). Not differentiable through the kernel: with grad mode on and
/// an input that requires grad, and for other dtypes, devices or more rows, at::linear.
at::Tensor linear_small(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b);

}  // namespace peft::ops
