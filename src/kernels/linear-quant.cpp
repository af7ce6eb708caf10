// linear-quant.h (quantized and 16-bit weights alike): shape and dtype checks, then gemm_small for up to 16 rows, else W in tiles of rows
// dequantized into one cache-sized buffer (dequantize_rows splits each tile over threads) and BLAS
// writing straight into the tile's columns of the output (or accumulating into grad_x).
#include "kernels/linear-quant.h"

#include <algorithm>

#include "peft/error.h"

namespace peft::kernels {
namespace {

constexpr int64_t kSmallM = 16;             // up to this many rows: the fused kernels
constexpr int64_t kTileBytes = 512 * 1024;  // dequantized W rows per tile, at least
constexpr int64_t kMaxTileBytes = 32 << 20;  // and at most

void check_cpu_float(const at::Tensor & t, const char * what, int64_t last, const char * dim) {
  PEFT_CHECK(t.defined(), "quantized linear: ", what, " is undefined");
  PEFT_CHECK(t.device().is_cpu(), "quantized linear: ", what, " is on ", t.device(),
             ", the CPU kernels take CPU tensors");
  PEFT_CHECK(t.scalar_type() == at::kFloat, "quantized linear: ", what, " has dtype ", t.scalar_type(),
             ", expected float32");
  PEFT_CHECK(t.dim() >= 1 && t.size(-1) == last, "quantized linear: ", what, " has shape ", t.sizes(),
             ", expected the last dimension to be ", dim, " = ", last);
}

// Rows of W per tile: ~512 KB, or as many bytes as the M rows of x for larger M (up to 32 MB), so that BLAS
// packs x again about once per weight's worth of tile, not once per 512 KB of W
int64_t tile_rows(int64_t I, int64_t M) {
  const int64_t bytes = std::min<int64_t>(std::max<int64_t>(kTileBytes, 4 * M * I), kMaxTileBytes);
  return std::max<int64_t>(1, bytes / (4 * std::max<int64_t>(1, I)));
}

// (.., in) -> (.., out): y = x W^T, with x as rows x (M, in) contiguous.
template <class W> at::Tensor forward(const at::Tensor & x, const W & w) {
  check_cpu_float(x, "input", w.I, "in_features");
  const at::Tensor x2 = x.reshape({-1, w.I}).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, w.O}, x2.options());
  if (M <= kSmallM) {
    if (M > 0) gemm_small(x2.data_ptr<float>(), M, w, y.data_ptr<float>());
  } else {
    const int64_t T = tile_rows(w.I, M);
    at::Tensor buf = at::empty({std::min(T, w.O), w.I}, x2.options());
    for (int64_t o0 = 0; o0 < w.O; o0 += T) {
      const int64_t t = std::min(T, w.O - o0);
      at::Tensor tile = buf.narrow(0, 0, t);
      dequantize_rows(w, o0, o0 + t, tile.data_ptr<float>());
      at::Tensor out = y.narrow(1, o0, t);  // row stride O: BLAS writes it in place
      at::mm_out(out, x2, tile.t());
    }
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = w.O;
  return y.view(shape);
}

// (.., out) -> (.., in): grad_x = grad_y W, summed over tiles of W rows.
template <class W> at::Tensor backward_input(const at::Tensor & grad_y, const W & w) {
  check_cpu_float(grad_y, "grad_output", w.O, "out_features");
  const at::Tensor g2 = grad_y.reshape({-1, w.O}).contiguous();
  at::Tensor gx = at::zeros({g2.size(0), w.I}, g2.options());
  if (g2.size(0) > 0) {
    const int64_t T = tile_rows(w.I, g2.size(0));
    at::Tensor buf = at::empty({std::min(T, w.O), w.I}, g2.options());
    for (int64_t o0 = 0; o0 < w.O; o0 += T) {
      const int64_t t = std::min(T, w.O - o0);
      at::Tensor tile = buf.narrow(0, 0, t);
      dequantize_rows(w, o0, o0 + t, tile.data_ptr<float>());
      gx.addmm_(g2.narrow(1, o0, t), tile);
    }
  }
  std::vector<int64_t> shape = grad_y.sizes().vec();
  shape.back() = w.I;
  return gx.view(shape);
}

void check_weight_tensor(const at::Tensor & t, const char * what, at::ScalarType dtype, int64_t numel) {
  PEFT_CHECK(t.defined(), "quantized weight: ", what, " is undefined");
  PEFT_CHECK(t.device().is_cpu(), "quantized weight: ", what, " is on ", t.device(),
             ", the CPU kernels take CPU tensors");
  PEFT_CHECK(t.scalar_type() == dtype, "quantized weight: ", what, " has dtype ", t.scalar_type(), ", expected ",
             dtype);
  PEFT_CHECK(t.is_contiguous(), "quantized weight: ", what, " is not contiguous");
  PEFT_CHECK(t.numel() == numel, "quantized weight: ", what, " has ", t.numel(), " elements, expected ", numel);
}

}  // namespace

at::Tensor linear_forward(const at::Tensor & x, const Weight4 & w) { return forward(x, w); }
at::Tensor linear_forward(const at::Tensor & x, const Weight8 & w) { return forward(x, w); }
at::Tensor linear_backward_input(const at::Tensor & grad_y, const Weight4 & w) { return backward_input(grad_y, w); }
at::Tensor linear_backward_input(const at::Tensor & grad_y, const Weight8 & w) { return backward_input(grad_y, w); }
at::Tensor linear_forward(const at::Tensor & x, const Weight16 & w) { return forward(x, w); }
at::Tensor linear_backward_input(const at::Tensor & grad_y, const Weight16 & w) { return backward_input(grad_y, w); }

Weight4 weight4(const at::Tensor & packed, const at::Tensor & absmax, const at::Tensor & code, int64_t O, int64_t I,
                int64_t blocksize) {
  PEFT_CHECK(O >= 0 && I >= 0 && I % 2 == 0, "4-bit weight: shape (", O, ", ", I,
             ") is not supported, in_features must be even");
  PEFT_CHECK(blocksize > 0 && blocksize % 2 == 0, "4-bit weight: blocksize ", blocksize, " must be positive and even");
  const int64_t n = O * I;
  check_weight_tensor(packed, "packed 4-bit data", at::kByte, n / 2);
  check_weight_tensor(absmax, "absmax", at::kFloat, (n + blocksize - 1) / blocksize);
  check_weight_tensor(code, "code (quantization table)", at::kFloat, 16);
  return {packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), code.data_ptr<float>(), O, I, blocksize};
}

Weight8 weight8(const at::Tensor & CB, const at::Tensor & SCB) {
  PEFT_CHECK(CB.defined() && CB.dim() == 2, "int8 weight: CB must be a matrix (out_features, in_features)");
  check_weight_tensor(CB, "CB", at::kChar, CB.numel());
  check_weight_tensor(SCB, "SCB", at::kFloat, CB.size(0));
  return {CB.data_ptr<int8_t>(), SCB.data_ptr<float>(), CB.size(0), CB.size(1)};
}

Weight16 weight16(const at::Tensor & W) {
  PEFT_CHECK(W.defined() && W.dim() == 2, "16-bit weight: W must be a matrix (out_features, in_features)");
  const bool half = W.scalar_type() == at::kHalf;
  check_weight_tensor(W, "W", half ? at::kHalf : at::kBFloat16, W.numel());
  return {reinterpret_cast<const uint16_t *>(W.data_ptr()), W.size(0), W.size(1), half};
}

}  // namespace peft::kernels
