#include "peft/ops/adapter-math.h"


#include <algorithm>

namespace peft::math {

at::Tensor lora_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale) {
  return at::matmul(B, A) * scale;
}

at::Tensor lora_embedding_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale) {
  return at::matmul(B, A).t() * scale;
}

at::Tensor lora_product(const at::Tensor & x, const at::Tensor & A, const at::Tensor & B, const at::Tensor & bias,
                        const at::Tensor & scale) {
  at::Tensor lora = at::linear(at::linear(x.to(A.scalar_type()), A), B);
  if (bias.defined()) lora = lora + bias;
  return lora * scale;
}

at::Tensor lora_embedding_product(const at::Tensor & ids, const at::Tensor & A, const at::Tensor & B,
                                  const at::Tensor & scale, int64_t padding_idx) {
  at::Tensor h = at::embedding(A.t(), ids, padding_idx);  // (B, T, R)
  return at::matmul(h, B.t()) * scale;
}

at::Tensor dora_weight_norm(const at::Tensor & W, const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale) {
  return (W.to(A.scalar_type()) + lora_delta(A, B, scale).detach()).norm(2, {1}).detach();
}

at::Tensor dora_weight(const at::Tensor & W, const at::Tensor & A, const at::Tensor & B, const at::Tensor & m,
                       const at::Tensor & scale, const at::Tensor & norm) {
  at::Tensor V = W.to(at::kFloat) + lora_delta(A, B, scale).to(at::kFloat);
  return (m / norm).unsqueeze(1) * V;
}

at::Tensor dora_embedding_norm(const at::Tensor & E, const at::Tensor & A, const at::Tensor & B, const at::Tensor & scale) {
  return (E.to(A.scalar_type()).t() + lora_delta(A, B, scale).detach()).norm(2, {1}).detach();
}

at::Tensor dora_embedding_weight(const at::Tensor & E, const at::Tensor & A, const at::Tensor & B, const at::Tensor & m,
                                 const at::Tensor & scale, const at::Tensor & norm) {
  at::Tensor V = E.to(at::kFloat) + lora_embedding_delta(A, B, scale).to(at::kFloat);
  return (m / norm).unsqueeze(0) * V;
}

at::Tensor vera_delta(const at::Tensor & A, const at::Tensor & B, const at::Tensor & lambda_d, const at::Tensor & lambda_b) {
  return at::matmul(lambda_b.unsqueeze(1) * B, lambda_d.unsqueeze(1) * A);
}

std::pair<at::Tensor, at::Tensor> vblora_factors(const at::Tensor & logits_A, const at::Tensor & logits_B,
                                                 const at::Tensor & bank, int64_t topk) {
  const auto combine = [&](const at::Tensor & logits) {  // (..., N) -> (..., L)
    auto top = logits.topk(topk, -1);
    const at::Tensor w = at::softmax(std::get<0>(top), -1);
    return (w.unsqueeze(-1) * at::embedding(bank, std::get<1>(top))).sum(-2);  // bank rows at the top-k
  };
  const int64_t r = logits_A.size(0);
  at::Tensor A = combine(logits_A).reshape({r, -1});
  at::Tensor B = combine(logits_B).transpose(1, 2).reshape({-1, logits_B.size(1)});
  return {A, B};
}

std::pair<at::Tensor, at::Tensor> randlora_factors(const at::Tensor & A, const at::Tensor & B, const at::Tensor & lambda,
                                                   const at::Tensor & gamma, int64_t in, int64_t out) {
  const int64_t lo = std::min(in, out), hi = std::max(in, out), bases = lambda.size(1);
  const at::Tensor sA = A.narrow(1, 0, std::min(bases, A.size(1))).narrow(2, 0, lo);  // (r, 1 or bases, lo)
  const at::Tensor sB = B.narrow(0, 0, hi).narrow(1, 0, bases);                        // (hi, bases, r)
  const at::Tensor U = (lambda.unsqueeze(2) * sA * gamma.unsqueeze(0)).flatten(0, 1);  // (r*bases, lo)
  const at::Tensor V = sB.flatten(1);                                                  // (hi, bases*r)
  if (lo == in) return {U, V};
  return {V.t(), U.t()};
}

at::Tensor rotate_weight(const at::Tensor & W, const at::Tensor & Q) {
  const int64_t O = W.size(0), R = Q.size(0), b = Q.size(1);
  return at::einsum("oib,icb->oic", {W.view({O, R, b}), Q}).reshape({O, R * b});
}

at::Tensor lora_add_rows(const at::Tensor & y, const at::Tensor & x, const at::Tensor & A, const at::Tensor & B,
                         const at::Tensor & bias, const at::Tensor & scale, const at::Tensor & mask) {
  return y + (lora_product(x, A, B, bias, scale) * mask).to(y.scalar_type());
}

at::Tensor mixed_row_scale(const std::vector<at::Tensor> & scales, const at::Tensor & routing, at::ScalarType dtype) {
  const int64_t n = static_cast<int64_t>(scales.size());
  return (routing.to(dtype) * at::stack(scales).to(dtype).view({n, 1})).t().contiguous();
}

at::Tensor lora_add_mixed(const at::Tensor & y, const at::Tensor & x, const std::vector<at::Tensor> & As,
                          const std::vector<at::Tensor> & Bs, const std::vector<at::Tensor> & biases,
                          const std::vector<at::Tensor> & scales, const at::Tensor & routing) {
  return lora_add_mixed_scaled(y, x, As, Bs, biases, mixed_row_scale(scales, routing, As.front().scalar_type()));
}

at::Tensor lora_add_mixed_scaled(const at::Tensor & y, const at::Tensor & x, const std::vector<at::Tensor> & As,
                                 const std::vector<at::Tensor> & Bs, const std::vector<at::Tensor> & biases,
                                 const at::Tensor & row_scale) {
  const auto dtype = As.front().scalar_type();
  const int64_t n = static_cast<int64_t>(As.size()), batch = row_scale.size(0);
  // (B, sum r): each adapter's weight repeated over its rank columns (views and shapes only: no index
  // tensor, which a traced graph would have to carry as data)
  const int64_t r0 = As.front().size(0);
  at::Tensor cols;
  if (std::all_of(As.begin(), As.end(), [&](const at::Tensor & A) { return A.size(0) == r0; })) {
    cols = row_scale.unsqueeze(-1).expand({batch, n, r0}).reshape({batch, n * r0});
  } else {
    std::vector<at::Tensor> parts;
    for (int64_t a = 0; a < n; ++a) parts.push_back(row_scale.narrow(1, a, 1).expand({batch, As[a].size(0)}));
    cols = at::cat(parts, 1);
  }
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape.front() = batch;
  shape.back() = cols.size(1);
  at::Tensor h = at::linear(x.to(dtype), at::cat(As, 0)) * cols.view(shape);
  at::Tensor lora = at::linear(h, at::cat(Bs, 1));
  if (std::any_of(biases.begin(), biases.end(), [](const at::Tensor & b) { return b.defined(); })) {
    std::vector<at::Tensor> bs;
    for (size_t a = 0; a < biases.size(); ++a)
      bs.push_back(biases[a].defined() ? biases[a].to(dtype) : at::zeros({Bs[a].size(0)}, Bs[a].options()));
    shape.back() = Bs.front().size(0);
    lora = lora + at::matmul(row_scale, at::stack(bs)).view(shape);
  }
  return y + lora.to(y.scalar_type());
}

std::pair<at::Tensor, at::Tensor> pissa_factors(const at::Tensor & W, int64_t r, double scaling) {
  auto [V, S, Uh] = at::linalg_svd(W, /*full_matrices=*/false);
  const at::Tensor Sr = S.narrow(0, 0, r) / scaling;
  const at::Tensor root = at::diag(at::sqrt(Sr));
  return {at::mm(root, Uh.narrow(0, 0, r)), at::mm(V.narrow(1, 0, r), root)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_lowrank(const at::Tensor & A, int64_t q, int64_t niter) {
  // torch/_lowrank.py (_svd_lowrank, get_approximate_basis) op for op, M = None, real tensors
  auto basis = [&](const at::Tensor & X) {
    const at::Tensor R = at::randn({X.size(-1), q}, X.options());
    const at::Tensor XH = X.transpose(-2, -1);
    at::Tensor Q = std::get<0>(at::linalg_qr(at::matmul(X, R)));
    for (int64_t i = 0; i < niter; ++i) {
      Q = std::get<0>(at::linalg_qr(at::matmul(XH, Q)));
      Q = std::get<0>(at::linalg_qr(at::matmul(X, Q)));
    }
    return Q;
  };
  const int64_t m = A.size(-2), n = A.size(-1);
  const at::Tensor At = A.transpose(-2, -1);
  if (m < n || n > q) {
    const at::Tensor Q = basis(At);
    auto [U, S, Vh] = at::linalg_svd(at::matmul(A, Q), /*full_matrices=*/false);
    return {U, S, Q.matmul(Vh.transpose(-2, -1))};
  }
  const at::Tensor Q = basis(A);
  auto [U, S, Vh] = at::linalg_svd(at::matmul(At, Q).transpose(-2, -1), /*full_matrices=*/false);
  return {Q.matmul(U), S, Vh.transpose(-2, -1)};
}

std::pair<at::Tensor, at::Tensor> pissa_lowrank_factors(const at::Tensor & W, int64_t r, int64_t niter, double scaling) {
  auto [V, S, U] = svd_lowrank(W, r, niter);
  const at::Tensor root = at::diag(at::sqrt(S / scaling));
  return {at::mm(root, U.t()), at::mm(V, root)};
}

std::pair<at::Tensor, at::Tensor> loftq_low_rank(const at::Tensor & residual, int64_t r) {
  auto [U, S, Vh] = at::linalg_svd(residual, /*full_matrices=*/false);
  const at::Tensor D = at::diag(S);
  return {at::matmul(at::sqrt(D.slice(0, 0, r)), Vh), at::matmul(U, at::sqrt(D.slice(1, 0, r)))};
}

std::pair<at::Tensor, at::Tensor> olora_factors(const at::Tensor & W, int64_t r) {
  auto [Q, R] = at::linalg_qr(W);
  return {R.narrow(0, 0, r).contiguous(), Q.narrow(1, 0, r).contiguous()};
}

at::Tensor hra_rotation(const at::Tensor & u, bool gram_schmidt, bool reverse) {
  const int64_t in = u.size(0), r = u.size(1);
  if (gram_schmidt) {
    std::vector<at::Tensor> cols = {(u.select(1, 0) / u.select(1, 0).norm()).view({-1, 1})};
    for (int64_t i = 1; i < r; ++i) {
      at::Tensor ui = u.select(1, i).view({-1, 1});
      for (int64_t j = 0; j < i; ++j) ui = ui - at::mm(cols[j].t(), ui) * cols[j];
      cols.push_back((ui / ui.norm()).view({-1, 1}));
    }
    const at::Tensor U = at::cat(cols, 1);
    return at::eye(in, u.options()) - 2 * at::mm(U, U.t());
  }
  const at::Tensor un = u / u.norm(2, {0});
  at::Tensor H = at::eye(in, u.options());
  for (int64_t k = 0; k < r; ++k) {
    const at::Tensor ui = un.select(1, reverse ? r - 1 - k : k).view({-1, 1});
    H = H - 2 * at::mm(at::mm(H, ui), ui.t());
  }
  return H;
}

std::pair<at::Tensor, at::Tensor> road_cols(const at::Tensor & theta_, const at::Tensor & alpha_, int64_t variant,
                                            int64_t group_size) {
  at::Tensor theta = theta_, alpha = alpha_;
  if (variant == 1) {  // one angle and scale per pair: each group's g/2 values serve both halves
    theta = theta.reshape({-1, group_size / 2}).repeat_interleave(2, 0).flatten();
    alpha = alpha.reshape({-1, group_size / 2}).repeat_interleave(2, 0).flatten();
  }
  if (variant == 1 || variant == 2) return {alpha * theta.cos(), alpha * theta.sin()};
  TORCH_CHECK(variant == 4, "RoAd variant road_", variant, " (road_1, road_2 or road_4)");
  const at::Tensor t = theta.reshape({-1, 2, group_size}), a = alpha.reshape({-1, 2, group_size});
  return {a.select(1, 0).flatten() * t.select(1, 0).cos().flatten(), a.select(1, 1).flatten() * t.select(1, 1).sin().flatten()};
}

at::Tensor road_apply(const at::Tensor & y, const at::Tensor & first, const at::Tensor & second, int64_t group_size) {
  const at::Tensor g = y.reshape({-1, 2, group_size / 2});
  const at::Tensor rotated = at::stack({-g.select(1, 1), g.select(1, 0)}, 1).reshape(y.sizes());
  return y * first + rotated * second;
}

at::Tensor road_matrix(const at::Tensor & first, const at::Tensor & second, int64_t group_size) {
  const int64_t O = first.size(0), half = group_size / 2;
  const at::Tensor i = at::arange(O, first.options().dtype(at::kLong));
  const at::Tensor lower = at::remainder(i, group_size) < half;  // first half of its group
  const at::Tensor partner = at::where(lower, i + half, i - half);
  const at::Tensor signed_second = at::where(lower, -second, second);
  // diag(v) with its columns permuted by the (involutive) partner map: entry (i, partner_i) = v_i
  return at::diag(first) + at::diag(signed_second).index_select(1, partner);
}

at::Tensor miss_delta(const at::Tensor & B, int64_t in_features) {
  const int64_t r = B.size(0), tiles = (in_features + r - 1) / r;
  return B.t().repeat({1, tiles}).narrow(1, 0, in_features);
}

namespace {
// W (out, in) as (in / r, out / r, r, r) blocks, PEFT's reshape and permute; and back
at::Tensor miss_blocks(const at::Tensor & W, int64_t r) {
  return W.reshape({W.size(0) / r, r, W.size(1) / r, r}).permute({2, 0, 1, 3});
}
at::Tensor miss_unblock(const at::Tensor & blocks, const at::IntArrayRef shape) {
  return blocks.permute({1, 2, 0, 3}).reshape(shape);
}
}  // namespace

at::Tensor miss_bat_delta(const at::Tensor & W, const at::Tensor & B) {
  const at::Tensor Wb = miss_blocks(W.to(B.scalar_type()), B.size(-1));
  return miss_unblock(at::matmul(Wb, B) + B, W.sizes());
}

at::Tensor miss_bat_unmerge(const at::Tensor & W, const at::Tensor & B) {
  const int64_t r = B.size(-1);
  const at::Tensor Wb = miss_blocks(W.to(B.scalar_type()), r);
  const at::Tensor inv = at::inverse(at::eye(r, B.options().dtype(at::kFloat)) + B.to(at::kFloat)).to(B.scalar_type());
  return miss_unblock(at::matmul(Wb - B, inv), W.sizes());
}

}  // namespace peft::math
