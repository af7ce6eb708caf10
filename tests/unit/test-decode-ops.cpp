// The decode-step ops against the ATen composition they replace: one-row attention (peft::one_row_scores,
// peft::one_row_mix; grouped heads, masked positions, fallbacks) and the mixed-adapter LoRA kernel
// (peft::lora_mixed_add against math::lora_add_mixed's two GEMMs).
#include <torch/torch.h>

#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/ops/attention-ops.h"
#include "support.h"

namespace peft::test {
namespace {

at::Tensor repeat_heads(const at::Tensor & t, int64_t H) {
  const int64_t B = t.size(0), Hkv = t.size(1), L = t.size(2), D = t.size(3);
  return t.unsqueeze(2).expand({B, Hkv, H / Hkv, L, D}).reshape({B, H, L, D});
}

TEST(OneRowAttention, EqualsMatmulForEveryHeadGrouping) {
  at::manual_seed(3);
  at::NoGradGuard g;
  for (int64_t Hkv : {4, 2, 1})
    for (int64_t D : {16, 24, 64}) {
      SCOPED_TRACE("Hkv " + std::to_string(Hkv) + " Dh " + std::to_string(D));
      const int64_t B = 3, H = 4, L = 37;
      const at::Tensor q = at::randn({B, H, 1, D}), k = at::randn({B, Hkv, L, D}), v = at::randn({B, Hkv, L, D});
      const at::Tensor s = ops::one_row_scores(q, k);
      EXPECT_TRUE(all_close(s, at::matmul(q, repeat_heads(k, H).transpose(2, 3)), 1e-5, 1e-5));
      const at::Tensor p = at::softmax(at::randn({B, H, 1, L}), -1);
      EXPECT_TRUE(all_close(ops::one_row_mix(p, v), at::matmul(p, repeat_heads(v, H)), 1e-6, 1e-5));
    }
}

TEST(OneRowAttention, MaskedPositionsAddNothing) {
  at::manual_seed(4);
  at::NoGradGuard g;
  const at::Tensor v = at::randn({2, 2, 10, 16});
  at::Tensor p = at::softmax(at::randn({2, 2, 1, 10}), -1);
  p.narrow(3, 6, 4).zero_();
  at::Tensor stale = v.clone();
  stale.narrow(2, 6, 4).fill_(std::numeric_limits<float>::quiet_NaN());  // slots the row does not see
  const at::Tensor out = ops::one_row_mix(p, stale);
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());
  EXPECT_TRUE(all_close(out, at::matmul(p, v), 1e-6, 1e-5));
}

TEST(OneRowAttention, FallsBackWhereTheKernelDoesNotApply) {
  at::manual_seed(5);
  const at::Tensor q = at::randn({2, 2, 1, 8}), k = at::randn({2, 2, 8, 5}).transpose(2, 3);  // last dim strided
  {
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(ops::one_row_scores(q, k), at::matmul(q, k.transpose(2, 3)), 1e-6, 1e-5));
    const at::Tensor qd = q.to(at::kDouble), kd = k.contiguous().to(at::kDouble);
    EXPECT_TRUE(all_close(ops::one_row_scores(qd, kd), at::matmul(qd, kd.transpose(2, 3)), 1e-12, 1e-12));
  }
  // grad mode with an input that needs a gradient: the ATen path, whose gradient autograd gives
  const at::Tensor qg = q.clone().requires_grad_(true), kc = k.contiguous();
  ops::one_row_scores(qg, kc).sum().backward();
  EXPECT_TRUE(all_close(qg.grad(), kc.sum(2, true), 1e-6, 1e-5));
}

struct Mixed {
  std::vector<at::Tensor> As, Bs, scales;
  std::vector<at::Tensor> BTs() const {
    std::vector<at::Tensor> t;
    for (const at::Tensor & B : Bs) t.push_back(B.t().contiguous());
    return t;
  }
};

Mixed adapters(int64_t I, int64_t O, std::vector<int64_t> ranks) {
  Mixed m;
  for (size_t a = 0; a < ranks.size(); ++a) {
    m.As.push_back(at::randn({ranks[a], I}));
    m.Bs.push_back(at::randn({O, ranks[a]}));
    m.scales.push_back(at::tensor(0.5 + static_cast<double>(a)));
  }
  return m;
}

TEST(MixedLora, KernelEqualsTheTwoGemmsForEveryRouting) {
  at::manual_seed(6);
  at::NoGradGuard g;
  const int64_t I = 40, O = 24, B = 5;
  const Mixed m = adapters(I, O, {4, 8, 3});
  // one adapter per row (some rows on the base: a zero column), and weighted rows
  const at::Tensor one_hot = at::tensor({1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0}, at::kFloat).view({3, B});
  const at::Tensor weighted = at::rand({3, B});
  for (const at::Tensor & routing : {one_hot, weighted})
    for (int64_t S : {1, 3}) {
      SCOPED_TRACE("tokens per row " + std::to_string(S));
      const at::Tensor x = at::randn({B, S, I}), y = at::randn({B, S, O});
      const at::Tensor want = math::lora_add_mixed(y, x, m.As, m.Bs, std::vector<at::Tensor>(3), m.scales, routing);
      const at::Tensor got = ops::lora_mixed_add(y, x, m.As, m.BTs(), math::mixed_row_scale(m.scales, routing, at::kFloat));
      EXPECT_TRUE(all_close(got, want, 1e-4, 1e-5));
    }
  // rows that use no adapter keep y exactly
  const at::Tensor x = at::randn({B, 1, I}), y = at::randn({B, 1, O});
  const at::Tensor got = ops::lora_mixed_add(y, x, m.As, m.BTs(), math::mixed_row_scale(m.scales, one_hot, at::kFloat));
  EXPECT_TRUE(at::equal(got[3], y[3]));
}

TEST(MixedLora, ManyRowsAndAutogradTakeTheGemms) {
  at::manual_seed(7);
  const int64_t I = 16, O = 12, B = 2;
  const Mixed m = adapters(I, O, {2, 2});
  const at::Tensor routing = at::tensor({1, 0, 0, 1}, at::kFloat).view({2, B});
  const at::Tensor x = at::randn({B, 20, I}), y = at::randn({B, 20, O});  // 40 rows: more than the kernel takes
  {
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(ops::lora_mixed_add(y, x, m.As, m.BTs(), math::mixed_row_scale(m.scales, routing, at::kFloat)),
                          math::lora_add_mixed(y, x, m.As, m.Bs, std::vector<at::Tensor>(2), m.scales, routing), 1e-5, 1e-5));
  }
  // a trainable A: the result carries its gradient
  std::vector<at::Tensor> As = {m.As[0].clone().requires_grad_(true), m.As[1]};
  const at::Tensor x1 = x.narrow(1, 0, 1).contiguous(), y1 = y.narrow(1, 0, 1).contiguous();
  ops::lora_mixed_add(y1, x1, As, m.BTs(), math::mixed_row_scale(m.scales, routing, at::kFloat)).sum().backward();
  ASSERT_TRUE(As[0].grad().defined());
  EXPECT_GT(As[0].grad().abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace peft::test
