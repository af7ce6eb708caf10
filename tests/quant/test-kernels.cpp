// The quantized-linear CPU kernels (src/kernels) under every instruction set this CPU has, against
// a reference in plain ATen: W dequantized by the bitsandbytes formulas, then at::matmul.
#include "kernels/kernels.h"
#include "kernels/linear-quant.h"

#include "peft/nn/layers.h"
#include "peft/ops/adapter-ops.h"
#include "peft/ops/linear-16bit.h"

#include <cmath>

#include "support.h"

using namespace peft::kernels;
using peft::test::error_of;
using peft::test::all_close;

namespace {

// ---- reference ----

const std::vector<float> kNF4 = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                 -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                 0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                                 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                                 0.7229568362236023f, 1.0f};

struct Quant4 {
  at::Tensor packed, absmax, code;
  int64_t O, I, blocksize;
  Weight4 weight() const { return weight4(packed, absmax, code, O, I, blocksize); }
  // element e: the high nibble of byte e/2 if e is even, else the low one; times absmax[e / blocksize]
  at::Tensor dequantized() const {
    const at::Tensor bytes = packed.to(at::kLong);
    const at::Tensor q = at::stack({at::floor_divide(bytes, 16), at::remainder(bytes, 16)}, 1).flatten();
    const at::Tensor scale = absmax.repeat_interleave(blocksize).narrow(0, 0, O * I);
    return (code.index_select(0, q) * scale).view({O, I});
  }
};

// Random nibbles and absmax (one block's absmax 0), the NF4 table or a random one.
Quant4 random4(int64_t O, int64_t I, int64_t blocksize, bool nf4) {
  Quant4 q{at::randint(0, 256, {O * I / 2}, at::kByte), at::rand({(O * I + blocksize - 1) / blocksize}) + 0.1,
           nf4 ? at::tensor(kNF4) : at::randn({16}), O, I, blocksize};
  if (q.absmax.numel() > 1) q.absmax[1] = 0.0f;
  return q;
}

struct Quant8 {
  at::Tensor CB, SCB;
  Weight8 weight() const { return weight8(CB, SCB); }
  // bitsandbytes' CPU path (MatMul8bitFp): CB * (SCB * (1/127))
  at::Tensor dequantized() const { return CB.to(at::kFloat).mul_(SCB.unsqueeze(1).mul(1.0 / 127.0)); }
};

Quant8 random8(int64_t O, int64_t I) {
  return {at::randint(-127, 128, {O, I}, at::kChar), at::rand({O}) * 3.0 + 0.01};
}

// The kernels sum the same products as x W^T in another order (and int8 applies SCB/127 after the sum),
// so they differ from the reference by float32 rounding of a length-I dot product: about sqrt(I) * 2^-24
// times sum |x| |W| for random rounding. 1e-5 * sqrt(I) leaves a wide margin for that and is still far
// below what a wrong nibble, block or row gives (an error of the order of sum |x| |W| itself).
::testing::AssertionResult dot_close(const at::Tensor & got, const at::Tensor & want, const at::Tensor & magnitude,
                                     int64_t I) {
  if (got.sizes() != want.sizes())
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " != " << want.sizes();
  const at::Tensor excess = (got - want).abs() - (1e-5 * std::sqrt(double(I)) * magnitude + 1e-30);
  const int64_t worst = excess.flatten().argmax().item<int64_t>();
  if (got.numel() == 0 || excess.flatten()[worst].item<float>() <= 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "element " << worst << ": got " << got.flatten()[worst].item<float>()
                                       << ", want " << want.flatten()[worst].item<float>() << " (sum |x||W| "
                                       << magnitude.flatten()[worst].item<float>() << ")";
}

// ---- instruction sets ----

// The instruction sets this machine can run, the portable one always included.
std::vector<std::string> available_isas() {
  std::vector<std::string> isas;
  for (const char * name : {"avx512", "avx2", "portable"})
    if (error_of([&] { force_isa(name); }).empty()) isas.push_back(name);
  force_isa(nullptr);
  return isas;
}

class IsaTest : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(7); }
  void TearDown() override { force_isa(nullptr); }
};

struct Shape4 {
  int64_t O, I, blocksize;
};
// block boundaries mid-row (1376 = 21.5 * 64; 200 rows are more than one tile of linear_forward), a block over two rows (I 32 < 64), aligned rows, blocksize
// 32, rows not a multiple of 16 long with a partial last block, a block larger than many rows, tiny rows;
// the AVX-512 128-column chunk path: blocksize 32 and 16 (several blocks per chunk), rows of whole chunks
// (1024), a row not a multiple of 8 (130: the other path), chunks straddling rows and blocks (1376, 136)
const std::vector<Shape4> kShapes4 = {{200, 1376, 64}, {37, 32, 64}, {64, 512, 128}, {19, 96, 32},
                                      {23, 200, 256}, {9, 18, 4096}, {7, 2, 64}, {11, 384, 32},
                                      {5, 130, 64},   {3, 1024, 1024}, {13, 136, 16}};
const std::vector<int64_t> kRows = {1, 2, 3, 5, 8, 16, 17, 64, 200};

// gemm_small against x W^T for every M (more than 16: in groups)
template <class Q> void check_gemm(const Q & q, int64_t O, int64_t I, bool via_linear) {
  const at::Tensor W = q.dequantized();
  for (int64_t M : kRows) {
    SCOPED_TRACE("M " + std::to_string(M) + (via_linear ? " linear_forward" : " gemm_small"));
    const at::Tensor x = at::randn({M, I});
    at::Tensor y;
    if (via_linear) {
      y = linear_forward(x, q.weight());
    } else {
      y = at::full({M, O}, NAN);
      gemm_small(x.data_ptr<float>(), M, q.weight(), y.data_ptr<float>());
    }
    EXPECT_TRUE(dot_close(y, at::matmul(x, W.t()), at::matmul(x.abs(), W.abs().t()), I));
  }
}

TEST_F(IsaTest, Gemm4EveryIsaShapeAndRowCount) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (const Shape4 & s : kShapes4)
      for (bool nf4 : {true, false}) {
        SCOPED_TRACE(name + " O " + std::to_string(s.O) + " I " + std::to_string(s.I) + " blocksize " +
                     std::to_string(s.blocksize) + (nf4 ? " nf4" : " random code"));
        const Quant4 q = random4(s.O, s.I, s.blocksize, nf4);
        check_gemm(q, s.O, s.I, false);
        check_gemm(q, s.O, s.I, true);
      }
  }
}

// ---- 4-bit times int8 activations (set_int8_activations) ----

// The arithmetic by its definition in ATen: x per 32 columns d = max|x| / 127, q = round(x * (1 / d)); the
// code as int8 round(code * (127 / max|code|)) worth max|code| / 127; y = (q d) (table[nibble] * absmax * tscale)^T.
struct Int8Reference {
  at::Tensor x, W;  // the dequantized operands whose product the kernel computes
};
Int8Reference int8_reference(const at::Tensor & x, const Quant4 & q) {
  const int64_t M = x.size(0), I = x.size(1);
  const at::Tensor xg = x.view({M, I / 32, 32});
  const at::Tensor d = std::get<0>(xg.abs().max(-1, true)) / 127.0f;
  const at::Tensor id = at::where(d != 0, 1.0f / d, at::zeros_like(d));
  const at::Tensor xq = ((xg * id).round() * d).view({M, I});
  const at::Tensor cmax = q.code.abs().max();
  const at::Tensor table = (q.code * (127.0f / cmax)).round() * (cmax / 127.0f);
  Quant4 t = q;
  t.code = table;
  return {xq, t.dequantized()};
}

class Int8ActivationsTest : public IsaTest {
 protected:
  void TearDown() override {
    set_int8_activations(false);
    IsaTest::TearDown();
  }
};

TEST_F(Int8ActivationsTest, EveryIsaEqualsTheDefinitionAndStaysNearTheFloatProduct) {
  // rows mid-block (1376 = 21.5 blocks of 64), a block over two rows (I 32 < 64), blocksize 32 and 1024,
  // and shapes the path does not take (I 130, blocksize 16: float32 kernels)
  const std::vector<Shape4> shapes = {{200, 1376, 64}, {37, 32, 64}, {64, 512, 128}, {19, 96, 32}, {11, 384, 32},
                                      {3, 1024, 1024}, {5, 130, 64}, {13, 136, 16}};
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (const Shape4 & s : shapes) {
      const bool taken = s.I % 32 == 0 && s.blocksize % 32 == 0;
      for (bool nf4 : {true, false}) {
        const Quant4 q = random4(s.O, s.I, s.blocksize, nf4);
        for (int64_t M : kRows) {
          SCOPED_TRACE(name + " O " + std::to_string(s.O) + " I " + std::to_string(s.I) + " blocksize " +
                       std::to_string(s.blocksize) + (nf4 ? " nf4" : " random code") + " M " + std::to_string(M));
          const at::Tensor x = at::randn({M, s.I});
          at::Tensor y = at::full({M, s.O}, NAN);
          set_int8_activations(true);
          gemm_small(x.data_ptr<float>(), M, q.weight(), y.data_ptr<float>());
          set_int8_activations(false);
          const at::Tensor W = q.dequantized(), magnitude = at::matmul(x.abs(), W.abs().t());
          if (!taken) {
            EXPECT_TRUE(dot_close(y, at::matmul(x, W.t()), magnitude, s.I));
            continue;
          }
          const Int8Reference r = int8_reference(x, q);
          EXPECT_TRUE(dot_close(y, at::matmul(r.x, r.W.t()), at::matmul(r.x.abs(), r.W.abs().t()), s.I));
          // and an approximation of the float product: within 2% of sum |x| |W| everywhere
          EXPECT_LE((y - at::matmul(x, W.t())).abs().div(magnitude + 1e-6).max().item<float>(), 0.02f);
        }
      }
    }
  }
}

TEST_F(IsaTest, Gemm8EveryIsaShapeAndRowCount) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (auto [O, I] : std::vector<std::pair<int64_t, int64_t>>{{200, 1376}, {37, 32}, {21, 512}, {23, 200}, {5, 37}}) {
      SCOPED_TRACE(name + " O " + std::to_string(O) + " I " + std::to_string(I));
      const Quant8 q = random8(O, I);
      check_gemm(q, O, I, false);
      check_gemm(q, O, I, true);
    }
  }
}

TEST_F(IsaTest, DequantizeRowsIsBitExact) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (const Shape4 & s : kShapes4) {
      SCOPED_TRACE(name + " O " + std::to_string(s.O) + " I " + std::to_string(s.I));
      const Quant4 q = random4(s.O, s.I, s.blocksize, false);
      const at::Tensor W = q.dequantized();
      at::Tensor all = at::empty({s.O, s.I});
      dequantize_rows(q.weight(), 0, s.O, all.data_ptr<float>());
      EXPECT_TRUE(at::equal(all, W));
      const int64_t o0 = s.O / 3, o1 = s.O - 1;
      at::Tensor part = at::empty({o1 - o0, s.I});
      dequantize_rows(q.weight(), o0, o1, part.data_ptr<float>());
      EXPECT_TRUE(at::equal(part, W.narrow(0, o0, o1 - o0)));
    }
    for (int64_t I : {1376, 32, 37, 200}) {
      const Quant8 q = random8(19, I);
      at::Tensor W = at::empty({19, I});
      dequantize_rows(q.weight(), 0, 19, W.data_ptr<float>());
      EXPECT_TRUE(at::equal(W, q.dequantized())) << name << " int8 I " << I;
    }
  }
}

// The layout by hand: byte 0x1F holds element 0 (high nibble, 1) and element 1 (low nibble, 15).
TEST_F(IsaTest, AxpyEveryIsa) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (int64_t n : {1, 15, 16, 17, 512, 1001}) {
      const at::Tensor x = at::randn({n});
      at::Tensor y = at::randn({n});
      const at::Tensor want = y + 0.37f * x;
      axpy(n, 0.37f, x.data_ptr<float>(), y.data_ptr<float>());
      EXPECT_TRUE(all_close(y, want, 1e-6, 1e-6)) << name << " n " << n;
    }
  }
}

TEST_F(IsaTest, NibbleOrderByHand) {
  const at::Tensor code = at::arange(16, at::kFloat) + 1.0, absmax = at::tensor({2.0f}), packed = at::tensor({0x1F}, at::kByte);
  const Quant4 q{packed, absmax, code, 1, 2, 64};
  const at::Tensor want = at::tensor({2.0f * 2, 16.0f * 2}).view({1, 2});
  EXPECT_TRUE(at::equal(q.dequantized(), want));
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    EXPECT_TRUE(at::equal(linear_forward(at::tensor({1.0f, 0.0f}), q.weight()), at::tensor({4.0f}))) << name;
    EXPECT_TRUE(at::equal(linear_forward(at::tensor({0.0f, 1.0f}), q.weight()), at::tensor({32.0f}))) << name;
  }
}

TEST_F(IsaTest, BackwardInputIsGradTimesW) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (int64_t M : {1, 5, 64}) {
      SCOPED_TRACE(name + " M " + std::to_string(M));
      const Quant4 q4 = random4(200, 1376, 64, true);  // 200 rows: more than one tile of dequantized rows
      const Quant8 q8 = random8(200, 1376);
      const at::Tensor g = at::randn({M, 200}), W4 = q4.dequantized(), W8 = q8.dequantized();
      EXPECT_TRUE(dot_close(linear_backward_input(g, q4.weight()), at::matmul(g, W4), at::matmul(g.abs(), W4.abs()), 200));
      EXPECT_TRUE(dot_close(linear_backward_input(g, q8.weight()), at::matmul(g, W8), at::matmul(g.abs(), W8.abs()), 200));
    }
  }
}

// ---- float32 weights (peft::linear_small) ----

TEST_F(IsaTest, GemmF32EveryIsaShapeAndRowCount) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    // odd O and I (tails of 16/8 columns, rows not a multiple of the rows-at-once), I > one x panel (1376)
    for (auto [O, I] : std::vector<std::pair<int64_t, int64_t>>{{200, 1376}, {37, 33}, {21, 512}, {23, 200}, {5, 7}, {1, 1}}) {
      const at::Tensor W = at::randn({O, I});
      for (int64_t M = 1; M <= 17; ++M) {
        SCOPED_TRACE(name + " O " + std::to_string(O) + " I " + std::to_string(I) + " M " + std::to_string(M));
        const at::Tensor x = at::randn({M, I});
        at::Tensor y = at::full({M, O}, NAN);
        gemm_small(x.data_ptr<float>(), M, WeightF32{W.data_ptr<float>(), O, I}, y.data_ptr<float>());
        EXPECT_TRUE(dot_close(y, at::linear(x, W), at::linear(x.abs(), W.abs()), I));
      }
    }
  }
}

TEST_F(IsaTest, LinearSmallOpMatchesLinear) {
  at::NoGradGuard g;
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    const int64_t O = 45, I = 77;
    const at::Tensor W = at::randn({O, I}), b = at::randn({O});
    for (int64_t M : {2, 3, 8, 9, 16, 17}) {
      for (bool bias : {false, true}) {
        SCOPED_TRACE(name + " M " + std::to_string(M) + (bias ? " bias" : ""));
        const at::Tensor x = at::randn({I, M, 1}).permute({1, 2, 0});  // (M, 1, I), not contiguous
        ASSERT_FALSE(x.is_contiguous());
        const c10::optional<at::Tensor> ob = bias ? c10::optional<at::Tensor>(b) : c10::nullopt;
        const at::Tensor y = peft::ops::linear_small(x, W, ob);
        EXPECT_EQ(y.sizes(), (std::vector<int64_t>{M, 1, O}));
        const at::Tensor mag = at::linear(x.abs(), W.abs(), bias ? b.abs() : at::Tensor());
        EXPECT_TRUE(dot_close(y, at::linear(x, W, ob), mag, I));
      }
    }
  }
}

TEST_F(IsaTest, LinearSmallFallsBackWhereTheKernelDoesNotApply) {
  const at::Tensor W = at::randn({6, 10}).requires_grad_();
  const at::Tensor x = at::randn({4, 10});
  {  // a gradient wanted: at::linear, differentiable
    const at::Tensor y = peft::ops::linear_small(x, W, c10::nullopt);
    ASSERT_TRUE(y.requires_grad());
    y.sum().backward();
    EXPECT_TRUE(at::allclose(W.grad(), x.sum(0).expand({6, 10})));
  }
  at::NoGradGuard g;
  const at::Tensor Wd = W.detach().to(at::kDouble), xd = x.to(at::kDouble);  // other dtype
  EXPECT_TRUE(at::allclose(peft::ops::linear_small(xd, Wd, c10::nullopt), at::linear(xd, Wd)));
  const at::Tensor Wt = at::randn({10, 6}).t();  // a non-contiguous weight
  EXPECT_TRUE(at::allclose(peft::ops::linear_small(x, Wt, c10::nullopt), at::linear(x, Wt), 1e-5, 1e-5));
}

// ---- 16-bit float weights (peft::linear_16bit) ----

// bfloat16 / float16 weights with values the 16-bit formats hold exactly: the kernels widen them exactly, so
// they must equal float32 arithmetic on the widened weight; float16 also with subnormals, infinities kept out
TEST_F(IsaTest, Gemm16EveryIsaShapeAndRowCountEqualsTheWidenedWeight) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
      for (auto [O, I] : std::vector<std::pair<int64_t, int64_t>>{{200, 1376}, {37, 33}, {21, 512}, {5, 7}, {1, 1}}) {
        at::Tensor W16 = at::randn({O, I}).to(dt);
        if (dt == at::kHalf) W16.view(-1).narrow(0, 0, std::min<int64_t>(O * I, 5)).fill_(3e-6);  // subnormal
        const at::Tensor W = W16.to(at::kFloat);
        const Weight16 w = weight16(W16);
        at::Tensor widened = at::full({O, I}, NAN);
        dequantize_rows(w, 0, O, widened.data_ptr<float>());
        EXPECT_TRUE(at::equal(widened, W)) << name << " " << dt << " widen";
        for (int64_t M : {1, 2, 3, 5, 8, 16, 17, 40}) {
          SCOPED_TRACE(name + " " + c10::toString(dt) + " O " + std::to_string(O) + " I " + std::to_string(I) +
                       " M " + std::to_string(M));
          const at::Tensor x = at::randn({M, I});
          at::Tensor y = at::full({M, O}, NAN);
          gemm_small(x.data_ptr<float>(), M, w, y.data_ptr<float>());
          EXPECT_TRUE(dot_close(y, at::linear(x, W), at::linear(x.abs(), W.abs()), I));
          EXPECT_TRUE(dot_close(linear_forward(x, w), at::linear(x, W), at::linear(x.abs(), W.abs()), I));
        }
      }
    }
  }
}

// The op in a model's Linear: x W^T + b accumulated in float32 and rounded to x's dtype; the gradient to x
// equals the float32 one (rounded); the weight and bias get none; a weight being trained goes to at::linear.
TEST_F(IsaTest, Linear16OpForwardBackwardAndWhereItApplies) {
  for (const std::string & name : available_isas()) {
    force_isa(name.c_str());
    for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
      for (at::ScalarType xt : {at::kFloat, dt}) {
        SCOPED_TRACE(name + " weight " + c10::toString(dt) + " x " + c10::toString(xt));
        const int64_t O = 70, I = 300;
        auto lin = std::make_shared<peft::Linear>(I, O, true);
        {
          at::NoGradGuard g;
          lin->weight.normal_();
          lin->bias.normal_();
        }
        lin->weight.set_data(lin->weight.detach().to(dt));
        lin->bias.set_data(lin->bias.detach().to(dt));
        lin->weight.set_requires_grad(false);
        lin->bias.set_requires_grad(false);
        ASSERT_TRUE(peft::ops::linear_16bit_takes(lin->weight, lin->bias));
        const at::Tensor W = lin->weight.to(at::kFloat), b = lin->bias.to(at::kFloat);
        for (int64_t M : {1, 4, 33}) {
          const at::Tensor x = at::randn({M, 1, I}).to(xt).requires_grad_();
          const at::Tensor y = lin->forward(x);
          EXPECT_EQ(y.scalar_type(), xt);
          const at::Tensor xf = x.detach().to(at::kFloat);
          const at::Tensor want = at::linear(xf, W, b);
          // rounded to x's dtype: within half a unit in the last place of the float32 result (plus the sum's rounding)
          const double ulp = xt == at::kFloat ? 0.0 : xt == at::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
          EXPECT_TRUE(dot_close(y.to(at::kFloat), want, at::linear(xf.abs(), W.abs(), b.abs()) + want.abs() * ulp * 1e5 / std::sqrt(double(I)), I))
              << "M " << M;
          const at::Tensor g = at::randn({M, 1, O}).to(xt);
          y.backward(g);
          const at::Tensor gf = g.to(at::kFloat);
          const at::Tensor gwant = at::matmul(gf, W);
          EXPECT_TRUE(dot_close(x.grad().to(at::kFloat), gwant,
                                at::matmul(gf.abs(), W.abs()) + gwant.abs() * ulp * 1e5 / std::sqrt(double(O)), O))
              << "M " << M;
          EXPECT_FALSE(lin->weight.grad().defined());
        }
        lin->weight.set_requires_grad(true);  // trained: not the op's case
        EXPECT_FALSE(peft::ops::linear_16bit_takes(lin->weight, lin->bias));
      }
    }
  }
}

// ---- the ATen wrapper ----

TEST_F(IsaTest, LinearTakesAnyLeadingDimsAndStrides) {
  const Quant4 q = random4(40, 96, 64, true);
  const at::Tensor x = at::randn({96, 2, 3}).permute({1, 2, 0});  // (2, 3, 96), not contiguous
  const at::Tensor y = linear_forward(x, q.weight());
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 40}));
  const at::Tensor W = q.dequantized();
  EXPECT_TRUE(dot_close(y, at::matmul(x, W.t()), at::matmul(x.abs(), W.abs().t()), 96));
  const at::Tensor gx = linear_backward_input(at::randn({40, 2}).t(), q.weight());
  EXPECT_EQ(gx.sizes(), (std::vector<int64_t>{2, 96}));
  EXPECT_EQ(linear_forward(at::randn({0, 96}), q.weight()).sizes(), (std::vector<int64_t>{0, 40}));
}

TEST_F(IsaTest, BadInputsAreNamed) {
  const Quant4 q = random4(8, 32, 64, true);
  EXPECT_NE(error_of([&] { linear_forward(at::randn({2, 31}), q.weight()); }).find("in_features = 32"),
            std::string::npos);
  EXPECT_NE(error_of([&] { linear_forward(at::randn({2, 32}, at::kDouble), q.weight()); }).find("float32"),
            std::string::npos);
  EXPECT_NE(error_of([&] { weight4(q.packed.to(at::kChar), q.absmax, q.code, 8, 32, 64); }).find("packed"),
            std::string::npos);
  EXPECT_NE(error_of([&] { weight4(q.packed, q.absmax, q.code, 8, 32, 32); }).find("absmax"), std::string::npos);
  EXPECT_NE(error_of([&] { weight4(q.packed, q.absmax, q.code, 16, 15, 64); }).find("even"), std::string::npos);
  const Quant8 q8 = random8(4, 8);
  EXPECT_NE(error_of([&] { weight8(q8.CB, q8.SCB.narrow(0, 0, 3)); }).find("SCB"), std::string::npos);
  EXPECT_NE(error_of([&] { weight8(q8.CB.t(), q8.SCB); }).find("contiguous"), std::string::npos);
}

TEST_F(IsaTest, ForcingAnIsaIsCheckedAndAutomaticPicksTheBest) {
  const std::vector<std::string> isas = available_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.back(), "portable");
  EXPECT_EQ(std::string(isa()), isas.front());
  EXPECT_NE(error_of([] { force_isa("sse9"); }).find("sse9"), std::string::npos);
  EXPECT_EQ(std::string(isa()), isas.front());  // a refused name changes nothing
  force_isa("portable");
  EXPECT_EQ(std::string(isa()), "portable");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    EXPECT_EQ(isas.front(), "avx512");
#endif
}

}  // namespace
