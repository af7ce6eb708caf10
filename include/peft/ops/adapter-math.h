// The adapter formulas, each written once. The layers' merges, the custom-op kernels (eager and traced
// forwards) and compile's fold passes all call these, so a formula cannot drift between them.
// O = out features, I = in features, R = rank, V = vocab, D = embedding dim; `scale` is a 0-dim tensor.
#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <utility>

namespace peft::math {

/// LoRA's weight change: scale * B A, (O, I), in A's dtype. A (R, I), B (O, R).
at::Tensor lora_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale);

/// LoRA on an embedding: scale * (B A)^T, (V, D). A (R, V), B (D, R).
at::Tensor lora_embedding_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale);

/// The low-rank path on activations: scale * (x A^T B^T + bias), (.., O), in A's dtype.
at::Tensor lora_product(const at::Tensor & x, const at::Tensor & A, const at::Tensor & B, const at::Tensor & bias,
                        const at::Tensor & scale);

/// LoRA on an embedding, on token ids: scale * lookup(ids, A^T) B^T, (B, T, D).
at::Tensor lora_embedding_product(const at::Tensor & ids, const at::Tensor & A, const at::Tensor & B,
                                  const at::Tensor & scale, int64_t padding_idx);

/// DoRA's per-output-row norm ||W + scale B A||_2, (O), detached (PEFT treats it as a constant).
/// W is the base layer's weight (not including other adapters).
at::Tensor dora_weight_norm(const at::Tensor & W, const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale);

/// DoRA's weight: (m / norm) * (W + scale B A), rows rescaled, (O, I) in float32; `norm` from
/// dora_weight_norm on the base weight, `W` the weight the adapter is applied to.
at::Tensor dora_weight(const at::Tensor & W, const at::Tensor & A, const at::Tensor & B, const at::Tensor & m,
                       const at::Tensor & scale, const at::Tensor & norm);

/// DoRA on an embedding (PEFT's DoraEmbeddingLayer): the norm of each embedding dimension over the vocabulary,
/// ||E^T + scale B A||_rows, (D), detached. E (V, D) the base weight (not including other adapters), A (R, V), B (D, R).
at::Tensor dora_embedding_norm(const at::Tensor & E, const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale);

/// DoRA's embedding weight: (E + scale (B A)^T) with each dimension d (column) times m_d / norm_d, (V, D) in
/// float32; `norm` from dora_embedding_norm on the base weight, `E` the weight the adapter is applied to.
at::Tensor dora_embedding_weight(const at::Tensor & E, const at::Tensor & A, const at::Tensor & B, const at::Tensor & m,
                                 const at::Tensor & scale, const at::Tensor & norm);

/// VeRA's weight change: (lambda_b B) (lambda_d A), (O, I). A (R, I), B (O, R), lambda_d (R), lambda_b (O).
at::Tensor vera_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & lambda_d, const at::Tensor & lambda_b);

/// VB-LoRA's factors from the shared vector bank (N, L): each sub-vector is the softmax-weighted sum of
/// the bank vectors with the top-k logits. logits_A (r, I/L, N) -> A (r, I); logits_B (O/L, r, N) -> B (O, r).
std::pair<at::Tensor, at::Tensor> vblora_factors(const at::Tensor & logits_A, const at::Tensor & logits_B,
                                                 const at::Tensor & bank, int64_t topk);

/// RandLoRA's factors for an (out, in) layer from the shared bases A (r, 1 or more, >= min) and B (>= max,
/// >= bases, r) and the layer's lambda (r, bases), gamma (bases, min): P (k, in), Q (out, k), so that
/// dW = Q P * scale (PEFT's get_scaled_bases, its flattening orders included).
std::pair<at::Tensor, at::Tensor> randlora_factors(const at::Tensor & A, const at::Tensor & B, const at::Tensor & lambda,
                                                   const at::Tensor & gamma, int64_t in, int64_t out);

/// OFT/BOFT merged into a weight: W BD(Q)^T (each row's block i times Q_i^T), (O, R*b). Q (R, b, b).
at::Tensor rotate_weight(const at::Tensor & W, const at::Tensor & Q);

/// Mixed-adapter batch, one LoRA adapter: y + mask * scale * (x A^T B^T + bias); mask (B, 1, ..) keeps
/// the rows that use this adapter.
at::Tensor lora_add_rows(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                         const at::Tensor & bias, const at::Tensor & scale, const at::Tensor & mask);

/// Mixed-adapter batch, n LoRA adapters of one dtype at once: y + for each row b, scale_a (x_b A_a^T B_a^T +
/// bias_a) summed over the adapters a with routing[a, b] (0 or 1). Two GEMMs for all adapters, whatever
/// the assignment: h = x [A_1; ..; A_n]^T, each adapter's r_a columns of h times routing[a, b] scale_a, then
/// h [B_1 .. B_n]^T; each adapter's weights are read once. routing (n, B), x (B, .., I), y (B, .., O);
/// biases: undefined or (O) each; scales: 0-dim each.
at::Tensor lora_add_mixed(const at::Tensor & y, const at::Tensor & x, const std::vector<at::Tensor> & As,
                          const std::vector<at::Tensor> & Bs, const std::vector<at::Tensor> & biases,
                          const std::vector<at::Tensor> & scales, const at::Tensor & routing);
/// (B, n): row b's weight for adapter a, its scale included (routing^T times the scales).
at::Tensor mixed_row_scale(const std::vector<at::Tensor> & scales, const at::Tensor & routing, at::ScalarType dtype);
/// lora_add_mixed with the row weights already formed (mixed_row_scale).
at::Tensor lora_add_mixed_scaled(const at::Tensor & y, const at::Tensor & x, const std::vector<at::Tensor> & As,
                                 const std::vector<at::Tensor> & Bs, const std::vector<at::Tensor> & biases,
                                 const at::Tensor & row_scale);

/// PiSSA's initial factors of W (out, in): A = diag(sqrt(S_r / scaling)) Uh_r, B = V_r diag(sqrt(S_r / scaling))
/// from the exact SVD W = V S Uh (PEFT's pissa_init). Returns (A, B).
std::pair<at::Tensor, at::Tensor> pissa_factors(const at::Tensor & W, int64_t r, double scaling);
/// torch.svd_lowrank(A, q, niter) as PyTorch computes it (Halko et al.'s randomized SVD: one draw of a
/// (n, q) Gaussian from the global generator, then niter power iterations of QR steps): U (m, q), S (q),
/// V (n, q) with A ~ U diag(S) V^T. The same generator state gives upstream's factors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_lowrank(const at::Tensor & A, int64_t q, int64_t niter);
/// PiSSA from the randomized SVD (init_lora_weights "pissa_niter_N", PEFT's pissa_init): pissa_factors'
/// formulas on svd_lowrank(W, r, niter). Returns (A, B).
std::pair<at::Tensor, at::Tensor> pissa_lowrank_factors(const at::Tensor & W, int64_t r, int64_t niter, double scaling);
/// LoftQ's rank-r split of a residual (loftq_utils' _low_rank_decomposition): SVD res = U S Vh,
/// B = U sqrt(S)[:, :r], A = sqrt(S)[:r] Vh. Returns (A, B).
std::pair<at::Tensor, at::Tensor> loftq_low_rank(const at::Tensor & residual, int64_t r);
/// OLoRA's initial factors: W = Q R (reduced QR), A = R[:r], B = Q[:, :r] (PEFT's olora_init). Returns (A, B).
std::pair<at::Tensor, at::Tensor> olora_factors(const at::Tensor & W, int64_t r);

/// HRA's rotation of the input space from u (in, r): the product of the reflections I - 2 u_i u_i^T / |u_i|^2
/// in column order (reverse: in reverse order, the inverse); with Gram-Schmidt (apply_GS) the columns are
/// orthonormalised first and the rotation is I - 2 U U^T. PEFT's HRALinear.get_delta_weight, op for op.
at::Tensor hra_rotation(const at::Tensor & u, bool gram_schmidt, bool reverse);

/// RoAd's two columns (first, second), each (O), from road_theta / road_alpha (PEFT's _prepare_cols): variant 1
/// (O/2 values: each group's g/2 pairs share an angle and a scale, repeated for both halves), 2 (O values:
/// alpha cos(theta), alpha sin(theta)) or 4 (2*O values: per group g cos angles then g sin angles, and two scales).
std::pair<at::Tensor, at::Tensor> road_cols(const at::Tensor & theta, const at::Tensor & alpha, int64_t variant,
                                            int64_t group_size);
/// RoAd on an output y (.., O): y * first + rotate_half(y) * second, where rotate_half works on groups of
/// `group_size` outputs, pairing each group's first half with its second half: (y1, y2) -> (-y2, y1).
at::Tensor road_apply(const at::Tensor & y, const at::Tensor & first, const at::Tensor & second, int64_t group_size);
/// The (O, O) matrix R with R y = road_apply(y, first, second): first on the diagonal, and in row i the
/// partner column (i +- group_size/2) holds -second_i (first half of a group) or second_i (second half).
/// Merging is W <- R W, b <- R b (PEFT's _get_delta_weight).
at::Tensor road_matrix(const at::Tensor & first, const at::Tensor & second, int64_t group_size);

/// MiSS: the weight (out, in) whose product with x equals the sums of x's r-wide blocks times B (r, out):
/// dW[o, k r + j] = B[j, o]; a last partial block takes B's first rows (x zero-padded, as PEFT).
at::Tensor miss_delta(const at::Tensor & B, int64_t in_features);
/// MiSS "bat": W_blocks B + B for W (out, in) cut into r x r blocks, B (out / r, r, r); (out, in).
at::Tensor miss_bat_delta(const at::Tensor & W, const at::Tensor & B);
/// MiSS "bat" unmerge: the weight (W_blocks - B)(I + B)^-1 (out, in).
at::Tensor miss_bat_unmerge(const at::Tensor & W, const at::Tensor & B);

}  // namespace peft::math
