// The decode-step ops against the ATen composition they replace: one-row attention (peft::one_row_scores,
// peft::one_row_mix; grouped heads, masked positions, fallbacks) and the mixed-adapter LoRA kernel
// (peft::lora_mixed_add against math::lora_add_mixed's two GEMMs), and the decoder layer's elementwise
// ops (peft::rms_norm, rotary, masked_softmax, silu_mul) against the ATen lines they replace.
#include <torch/torch.h>

#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/ops/attention-ops.h"
#include "peft/ops/decoder-ops.h"
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

// A bfloat16 / float16 cache (a 16-bit model): scores and mix computed in float32 from the widened values
// (exact), rounded to the dtype once; masked positions still add nothing.
TEST(OneRowAttention, SixteenBitCachesEqualTheFloat32ProductRounded) {
  at::manual_seed(6);
  at::NoGradGuard g;
  for (at::ScalarType dt : {at::kBFloat16, at::kHalf})
    for (int64_t Hkv : {4, 1}) {
      SCOPED_TRACE(std::string(c10::toString(dt)) + " Hkv " + std::to_string(Hkv));
      const int64_t B = 2, H = 4, L = 37, D = 64;
      const at::Tensor q = at::randn({B, H, 1, D}).to(dt), k = at::randn({B, Hkv, L, D}).to(dt);
      const at::Tensor v = at::randn({B, Hkv, L, D}).to(dt);
      const at::Tensor s = ops::one_row_scores(q, k);
      ASSERT_EQ(s.scalar_type(), dt);
      const at::Tensor sf = at::matmul(q.to(at::kFloat), repeat_heads(k.to(at::kFloat), H).transpose(2, 3));
      const double ulp = dt == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
      EXPECT_TRUE(all_close(s.to(at::kFloat), sf, 1e-4, ulp));
      at::Tensor p = at::softmax(at::randn({B, H, 1, L}), -1);
      p.narrow(3, 5, 10).zero_();
      p = p.to(dt);
      const at::Tensor m = ops::one_row_mix(p, v);
      ASSERT_EQ(m.scalar_type(), dt);
      const at::Tensor mf = at::matmul(p.to(at::kFloat), repeat_heads(v.to(at::kFloat), H));
      EXPECT_TRUE(all_close(m.to(at::kFloat), mf, 1e-4, ulp));
    }
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
      const at::Tensor got = ops::lora_mixed_add(y, x, m.As, m.BTs(), routing, {0, 1, 2}, at::stack(m.scales).to(at::kFloat));
      EXPECT_TRUE(all_close(got, want, 1e-4, 1e-5));
    }
  // rows that use no adapter keep y exactly
  const at::Tensor x = at::randn({B, 1, I}), y = at::randn({B, 1, O});
  const at::Tensor got = ops::lora_mixed_add(y, x, m.As, m.BTs(), one_hot, {0, 1, 2}, at::stack(m.scales).to(at::kFloat));
  EXPECT_TRUE(at::equal(got[3], y[3]));
}

TEST(MixedLora, TheLayersAdaptersAreAnyRowsOfTheModelsRouting) {
  // the model's routing has a row per adapter of the model; a layer holds some of them, in any order
  at::manual_seed(8);
  at::NoGradGuard g;
  const int64_t I = 32, O = 16, B = 4;
  const Mixed m = adapters(I, O, {4, 2, 6});
  const at::Tensor routing = at::tensor({0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0}, at::kFloat).view({5, B});
  const std::vector<int64_t> rows = {3, 0, 2};
  const at::Tensor picked = routing.index_select(0, at::tensor(rows, at::kLong));
  for (int64_t S : {1, 40}) {  // the kernel, and the GEMMs (more rows than the kernel takes)
    const at::Tensor x = at::randn({B, S, I}), y = at::randn({B, S, O});
    const at::Tensor want = math::lora_add_mixed(y, x, m.As, m.Bs, std::vector<at::Tensor>(3), m.scales, picked);
    const at::Tensor got = ops::lora_mixed_add(y, x, m.As, m.BTs(), routing, rows, at::stack(m.scales).to(at::kFloat));
    EXPECT_TRUE(all_close(got, want, 1e-4, 1e-5)) << S;
    // row 0 uses only adapter 1 of the model, which this layer does not hold: y unchanged
    EXPECT_TRUE(at::equal(got[0], y[0]));
  }
  // a routing row outside the routing tensor is refused
  const at::Tensor x = at::randn({B, 1, I}), y = at::randn({B, 1, O});
  EXPECT_THROW(ops::lora_mixed_add(y, x, m.As, m.BTs(), routing, {3, 0, 5}, at::stack(m.scales).to(at::kFloat)), std::exception);
}

TEST(MixedLora, ManyRowsAndAutogradTakeTheGemms) {
  at::manual_seed(7);
  const int64_t I = 16, O = 12, B = 2;
  const Mixed m = adapters(I, O, {2, 2});
  const at::Tensor routing = at::tensor({1, 0, 0, 1}, at::kFloat).view({2, B});
  const at::Tensor x = at::randn({B, 20, I}), y = at::randn({B, 20, O});  // 40 rows: more than the kernel takes
  {
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(ops::lora_mixed_add(y, x, m.As, m.BTs(), routing, {0, 1}, at::stack(m.scales).to(at::kFloat)),
                          math::lora_add_mixed(y, x, m.As, m.Bs, std::vector<at::Tensor>(2), m.scales, routing), 1e-5, 1e-5));
  }
  // a trainable A: the result carries its gradient
  std::vector<at::Tensor> As = {m.As[0].clone().requires_grad_(true), m.As[1]};
  const at::Tensor x1 = x.narrow(1, 0, 1).contiguous(), y1 = y.narrow(1, 0, 1).contiguous();
  ops::lora_mixed_add(y1, x1, As, m.BTs(), routing, {0, 1}, at::stack(m.scales).to(at::kFloat)).sum().backward();
  ASSERT_TRUE(As[0].grad().defined());
  EXPECT_GT(As[0].grad().abs().sum().item<double>(), 0.0);
}

// the compositions the decoder ops replace, written out as Hugging Face's modeling code has them
at::Tensor rms_norm_ref(const at::Tensor & x, const at::Tensor & w, double eps) {
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, true) + eps);
  return w * h.to(x.scalar_type());
}
at::Tensor rotary_ref(const at::Tensor & x, const at::Tensor & c, const at::Tensor & s) {
  const int64_t half = x.size(-1) / 2;
  return x * c + at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1) * s;
}
at::Tensor masked_softmax_ref(const at::Tensor & scores, const at::Tensor & mask, double scale) {
  return at::softmax((scores * scale).masked_fill(mask.logical_not(), std::numeric_limits<float>::lowest()), -1);
}

TEST(DecoderOps, RmsNormEqualsTheComposition) {
  at::manual_seed(8);
  at::NoGradGuard g;
  for (int64_t D : {1, 7, 512}) {
    const at::Tensor x = at::randn({3, 5, D}) * 3, w = at::randn({D});
    EXPECT_TRUE(all_close(ops::rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), 1e-6, 1e-5)) << D;
  }
  // a strided input and a double one take the composition
  const at::Tensor xs = at::randn({4, 6}).t(), w = at::randn({4});
  EXPECT_TRUE(all_close(ops::rms_norm(xs, w, 1e-5), rms_norm_ref(xs, w, 1e-5), 1e-6, 1e-5));
  const at::Tensor xd = at::randn({2, 4}, at::kDouble), wd = at::randn({4}, at::kDouble);
  EXPECT_TRUE(all_close(ops::rms_norm(xd, wd, 1e-5), rms_norm_ref(xd, wd, 1e-5), 1e-12, 1e-12));
}

TEST(DecoderOps, RotaryEqualsTheCompositionOnTransposedHeads) {
  at::manual_seed(9);
  at::NoGradGuard g;
  for (int64_t cb : {1, 2}) {
    const int64_t B = 2, S = 3, H = 4, Dh = 8;
    const at::Tensor x = at::randn({B, S, H, Dh}).transpose(1, 2);  // (B, H, S, Dh) as the projections give it
    const at::Tensor c = at::randn({cb, 1, S, Dh}), s = at::randn({cb, 1, S, Dh});
    const at::Tensor got = ops::rotary(x, c, s);
    EXPECT_TRUE(all_close(got, rotary_ref(x, c, s), 1e-6, 1e-6)) << cb;
    EXPECT_EQ(got.sizes(), x.sizes());
  }
}

TEST(DecoderOps, MaskedSoftmaxEqualsTheCompositionWithFullyMaskedRows) {
  at::manual_seed(10);
  at::NoGradGuard g;
  const int64_t B = 2, H = 3, S = 4, L = 9;
  const at::Tensor scores = at::randn({B, H, S, L}) * 4;
  at::Tensor mask = at::rand({B, 1, S, L}) > 0.4;
  mask[1][0][2].fill_(false);  // a row that sees nothing: uniform, as in the composition
  at::Tensor stale = scores.clone();
  stale.masked_fill_(mask.logical_not().expand_as(stale), std::numeric_limits<float>::quiet_NaN());  // unread
  const at::Tensor got = ops::masked_softmax(stale, mask, 0.125);
  EXPECT_TRUE(all_close(got, masked_softmax_ref(scores, mask, 0.125), 1e-6, 1e-5));
  EXPECT_TRUE(all_close(got[1][0][2], at::full({L}, 1.0 / L), 1e-7, 1e-6));
  // masked positions are exactly zero in every other row (one_row_mix skips them)
  EXPECT_EQ(got[0].masked_select(mask[0].logical_not().expand_as(got[0])).abs().max().item<float>(), 0.0f);
  // one query row against a (B, 1, 1, L) mask, a decode step's shapes
  const at::Tensor s1 = at::randn({B, H, 1, L}), m1 = at::rand({B, 1, 1, L}) > 0.3;
  EXPECT_TRUE(all_close(ops::masked_softmax(s1, m1, 0.5), masked_softmax_ref(s1, m1, 0.5), 1e-6, 1e-5));
}

TEST(DecoderOps, SiluMulEqualsTheComposition) {
  at::manual_seed(11);
  at::NoGradGuard g;
  for (int64_t n : {5, 1376, 10000}) {
    const at::Tensor a = at::randn({2, n}) * 5, b = at::randn({2, n});
    EXPECT_TRUE(all_close(ops::silu_mul(a, b), at::silu(a) * b, 1e-6, 1e-5)) << n;
  }
}

TEST(DecoderOps, GradModeTakesTheCompositionAndItsGradient) {
  at::manual_seed(12);
  const at::Tensor x = at::randn({2, 3, 8}).requires_grad_(true), w = at::randn({8}).requires_grad_(true);
  ops::rms_norm(x, w, 1e-6).pow(2).sum().backward();
  const at::Tensor x2 = x.detach().clone().requires_grad_(true), w2 = w.detach().clone().requires_grad_(true);
  rms_norm_ref(x2, w2, 1e-6).pow(2).sum().backward();
  EXPECT_TRUE(all_close(x.grad(), x2.grad(), 1e-6, 1e-5));
  EXPECT_TRUE(all_close(w.grad(), w2.grad(), 1e-6, 1e-5));
  const at::Tensor q = at::randn({1, 2, 3, 4}).requires_grad_(true), c = at::randn({1, 1, 3, 4}), s = at::randn({1, 1, 3, 4});
  ops::rotary(q, c, s).sum().backward();
  EXPECT_TRUE(all_close(q.grad(), (c + at::cat({s.narrow(-1, 2, 2), -s.narrow(-1, 0, 2)}, -1)).expand_as(q), 1e-6, 1e-6));
  const at::Tensor g = at::randn({3, 5}).requires_grad_(true), u = at::randn({3, 5});
  ops::silu_mul(g, u).sum().backward();
  const at::Tensor sg = at::sigmoid(g.detach());
  EXPECT_TRUE(all_close(g.grad(), u * sg * (1 + g.detach() * (1 - sg)), 1e-5, 1e-5));
  const at::Tensor sc = at::randn({1, 1, 2, 4}).requires_grad_(true);
  const at::Tensor mk = at::ones({1, 1, 2, 4}, at::kBool);
  const at::Tensor p = ops::masked_softmax(sc, mk, 1.0);
  ASSERT_TRUE(p.requires_grad());
  p.select(3, 0).sum().backward();
  const at::Tensor pd = p.detach();
  EXPECT_TRUE(all_close(sc.grad().select(3, 0), pd.select(3, 0) * (1 - pd.select(3, 0)), 1e-6, 1e-6));
}

TEST(SmallRowLora, ShrinkExpandAndFusedEqualTheLinearsForDecodeRows) {
  at::manual_seed(13);
  at::NoGradGuard g;
  const int64_t I = 48, O = 40;
  const std::vector<at::Tensor> As = {at::randn({4, I}), at::randn({8, I}), at::randn({3, I})};
  const at::Tensor B = at::randn({O, 8}), scale = at::tensor(0.75f);
  for (int64_t rows : {1, 5, 16, 17}) {  // 17: more than kSmallRows, the linears themselves
    SCOPED_TRACE("rows " + std::to_string(rows));
    const at::Tensor x = at::randn({rows, 1, I}), y = at::randn({rows, 1, O});
    const at::Tensor xa = ops::lora_shrink(x, As);
    EXPECT_TRUE(all_close(xa, at::linear(x, at::cat(As, 0)), 1e-5, 1e-5));
    const at::Tensor want = y + at::linear(xa.narrow(-1, 4, 8), B) * 0.75;
    EXPECT_TRUE(all_close(ops::lora_expand_add(y, xa, 4, B, c10::nullopt, scale), want, 1e-5, 1e-5));
    const at::Tensor fused = ops::lora_add_fused(y, x, As[1], B, c10::nullopt, scale, 0.0, false);
    EXPECT_TRUE(all_close(fused, y + at::linear(at::linear(x, As[1]), B) * 0.75, 1e-5, 1e-5));
  }
  // a bias on the expand half (VeRA/LoRA bias): the linears, with the bias inside the scale
  const at::Tensor x = at::randn({1, 1, I}), y = at::randn({1, 1, O}), B4 = at::randn({O, 4}), bias = at::randn({O});
  const at::Tensor xa = ops::lora_shrink(x, As);
  EXPECT_TRUE(all_close(ops::lora_expand_add(y, xa, 0, B4, bias, scale),
                        y + (at::linear(xa.narrow(-1, 0, 4), B4) + bias) * 0.75, 1e-5, 1e-5));
}

}  // namespace
}  // namespace peft::test
