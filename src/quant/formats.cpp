// bitsandbytes' formats. Each function mirrors the corresponding op of bitsandbytes' "default" backend
// (backends/default/ops.py) and functional.py with the same ATen operations in the same order, which is
// what makes the results bit-identical (the reference data in tests/data/quant checks it). quantize_4bit and
// quantize_int8 work in chunks on the kernel threads (loading quantizes every Linear of a model): the same
// arithmetic per block or row, checked against the whole-tensor ATen ops in tests/model/test-streaming-load.cpp.
#include "peft/quant/formats.h"

#include <ATen/core/grad_mode.h>  // at::NoGradGuard (ATen/ATen.h brings it in 1.13, not in 2.x)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>

#include "peft/error.h"
#include "kernels/kernels.h"
#include "util/worker-pool.h"

namespace peft::quant {

std::string format_name(Format f) {
  switch (f) {
    case Format::nf4: return "nf4";
    case Format::fp4: return "fp4";
    case Format::int8: return "int8";
    case Format::none: break;
  }
  return "none";
}

Format parse_format(const std::string & name, const std::string & what) {
  if (name == "nf4") return Format::nf4;
  if (name == "fp4") return Format::fp4;
  if (name == "int8") return Format::int8;
  if (name == "none" || name.empty()) return Format::none;
  fail(str(what, ": unknown quantization '", name, "' (expected nf4, fp4, int8 or none)"));
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: fail(str("quantized weights: unsupported dtype ", c10::toString(t)));
  }
}

at::ScalarType parse_dtype_name(const std::string & name, const std::string & what) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  fail(str(what, ": unknown dtype '", name, "' (expected float32, bfloat16 or float16)"));
}

at::Tensor code_4bit(Format f) {
  std::vector<float> data;
  if (f == Format::nf4) {
    // quantiles of N(0, 1) (QLoRA), as bitsandbytes lists them
    data = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
            -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
            0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
            0.7229568362236023f, 1.0f};
  } else if (f == Format::fp4) {
    // 1 sign, 2 exponent, 1 mantissa bit, in bit-pattern order (sign is bit 3), normalised below; code 8
    // is +0 (bitsandbytes writes it as the integer -0)
    data = {0, 0.0625f, 8, 12, 4, 6, 2, 3, 0, -0.0625f, -8, -12, -4, -6, -2, -3};
  } else {
    fail(str("code_4bit: ", format_name(f), " is not a 4-bit format"));
  }
  at::Tensor t = at::tensor(data, at::kFloat);
  t.div_(t.abs().max());
  return t;
}

at::Tensor dynamic_map() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for each exponent 10^(i-6),
  // 2^i + 1 linearly spaced fractions in [0.1, 1] (torch.linspace, float32), their midpoints, both signs;
  // then 0 and 1. The values are bitsandbytes' own, computed on PyTorch 1.13 (tests/data/quant). They are
  // listed rather than recomputed with at::linspace: its float32 rounding depends on the LibTorch version
  // (2.x computes the second half from the end, 1.13 from the start in SIMD-width runs): on LibTorch 2.6, 44
  // of these entries would move by 1 or 2 ulp, and with them the bytes of double-quantized checkpoints.
  static const float kTable[256] = {
      -0.992968738f, -0.978906214f, -0.96484375f, -0.950781226f, -0.936718702f, -0.922656238f, -0.908593774f, -0.89453125f,
      -0.880468726f, -0.866406202f, -0.852343738f, -0.838281214f, -0.82421875f, -0.810156226f, -0.796093702f, -0.782031238f,
      -0.767968774f, -0.75390625f, -0.739843786f, -0.725781262f, -0.711718798f, -0.697656274f, -0.68359375f, -0.669531286f,
      -0.655468762f, -0.641406238f, -0.627343774f, -0.61328125f, -0.599218726f, -0.585156262f, -0.571093798f, -0.557031274f,
      -0.54296875f, -0.528906226f, -0.514843762f, -0.500781238f, -0.486718774f, -0.47265625f, -0.458593726f, -0.444531262f,
      -0.430468738f, -0.416406214f, -0.40234375f, -0.388281226f, -0.374218762f, -0.360156238f, -0.346093714f, -0.33203125f,
      -0.317968726f, -0.303906262f, -0.289843738f, -0.275781274f, -0.26171875f, -0.247656256f, -0.233593762f, -0.219531253f,
      -0.205468744f, -0.19140625f, -0.177343741f, -0.163281247f, -0.149218753f, -0.135156244f, -0.12109375f, -0.107031256f,
      -0.0985937491f, -0.0957812443f, -0.0929687545f, -0.0901562497f, -0.0873437524f, -0.0845312476f, -0.0817187428f, -0.078906253f,
      -0.0760937482f, -0.0732812509f, -0.0704687461f, -0.0676562563f, -0.0648437515f, -0.0620312467f, -0.0592187531f, -0.0564062484f,
      -0.053593751f, -0.05078125f, -0.047968749f, -0.0451562516f, -0.0423437469f, -0.0395312496f, -0.0367187522f, -0.0339062475f,
      -0.0310937501f, -0.0282812472f, -0.0254687499f, -0.0226562507f, -0.0198437497f, -0.0170312505f, -0.0142187504f, -0.0114062503f,
      -0.00971874967f, -0.00915624946f, -0.00859375019f, -0.00803124998f, -0.00746874977f, -0.00690625003f, -0.00634374982f, -0.00578125007f,
      -0.00521875033f, -0.00465624966f, -0.00409374991f, -0.00353124971f, -0.00296874996f, -0.00240624999f, -0.00184375001f, -0.00128124992f,
      -0.000943750085f, -0.000831249985f, -0.00071875006f, -0.000606250076f, -0.000493750034f, -0.000381250022f, -0.000268750038f, -0.000156250011f,
      -8.87499991e-05f, -6.62500024e-05f, -4.37499984e-05f, -2.12499981e-05f, -7.7499999e-06f, -3.25000019e-06f, -5.50000038e-07f, 0.0f,
      5.50000038e-07f, 3.25000019e-06f, 7.7499999e-06f, 2.12499981e-05f, 4.37499984e-05f, 6.62500024e-05f, 8.87499991e-05f, 0.000156250011f,
      0.000268750038f, 0.000381250022f, 0.000493750034f, 0.000606250076f, 0.00071875006f, 0.000831249985f, 0.000943750085f, 0.00128124992f,
      0.00184375001f, 0.00240624999f, 0.00296874996f, 0.00353124971f, 0.00409374991f, 0.00465624966f, 0.00521875033f, 0.00578125007f,
      0.00634374982f, 0.00690625003f, 0.00746874977f, 0.00803124998f, 0.00859375019f, 0.00915624946f, 0.00971874967f, 0.0114062503f,
      0.0142187504f, 0.0170312505f, 0.0198437497f, 0.0226562507f, 0.0254687499f, 0.0282812472f, 0.0310937501f, 0.0339062475f,
      0.0367187522f, 0.0395312496f, 0.0423437469f, 0.0451562516f, 0.047968749f, 0.05078125f, 0.053593751f, 0.0564062484f,
      0.0592187531f, 0.0620312467f, 0.0648437515f, 0.0676562563f, 0.0704687461f, 0.0732812509f, 0.0760937482f, 0.078906253f,
      0.0817187428f, 0.0845312476f, 0.0873437524f, 0.0901562497f, 0.0929687545f, 0.0957812443f, 0.0985937491f, 0.107031256f,
      0.12109375f, 0.135156244f, 0.149218753f, 0.163281247f, 0.177343741f, 0.19140625f, 0.205468744f, 0.219531253f,
      0.233593762f, 0.247656256f, 0.26171875f, 0.275781274f, 0.289843738f, 0.303906262f, 0.317968726f, 0.33203125f,
      0.346093714f, 0.360156238f, 0.374218762f, 0.388281226f, 0.40234375f, 0.416406214f, 0.430468738f, 0.444531262f,
      0.458593726f, 0.47265625f, 0.486718774f, 0.500781238f, 0.514843762f, 0.528906226f, 0.54296875f, 0.557031274f,
      0.571093798f, 0.585156262f, 0.599218726f, 0.61328125f, 0.627343774f, 0.641406238f, 0.655468762f, 0.669531286f,
      0.68359375f, 0.697656274f, 0.711718798f, 0.725781262f, 0.739843786f, 0.75390625f, 0.767968774f, 0.782031238f,
      0.796093702f, 0.810156226f, 0.82421875f, 0.838281214f, 0.852343738f, 0.866406202f, 0.880468726f, 0.89453125f,
      0.908593774f, 0.922656238f, 0.936718702f, 0.950781226f, 0.96484375f, 0.978906214f, 0.992968738f, 1.0f,
  };
  return at::tensor(std::vector<float>(std::begin(kTable), std::end(kTable)), at::kFloat);
}

namespace {

void check_blocksize(int64_t blocksize, const char * what) {
  bool pow2 = blocksize > 0 && (blocksize & (blocksize - 1)) == 0;
  PEFT_CHECK(pow2 && blocksize >= 32 && blocksize <= 4096, what, ": blocksize ", blocksize,
             " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096");
}

// (scaled values in [-1, 1], absmax per block) of a flat float32 tensor, as the default backend computes
// them: full blocks scaled by the reciprocal of their absmax, a partial last block divided by its own
std::pair<at::Tensor, at::Tensor> scale_blocks(const at::Tensor & flat, int64_t blocksize) {
  const int64_t n = flat.numel(), rem = n % blocksize, full = n - rem, blocks = full / blocksize;
  at::Tensor com = flat.slice(0, 0, full).reshape({blocks, blocksize});
  at::Tensor absmax = std::get<0>(com.abs().max(-1));
  at::Tensor scaled = at::clamp(com * at::reciprocal(absmax.clamp_min(1e-38)).view({-1, 1}), -1, 1).reshape(-1);
  if (rem) {
    at::Tensor tail = flat.slice(0, full);
    at::Tensor am = tail.abs().max().clamp_min(1e-38);
    absmax = at::cat({absmax, am.unsqueeze(0)});
    scaled = at::cat({scaled, at::clamp(tail / am, -1, 1)});
  }
  return {scaled, absmax};
}

// code[codes] scaled by each block's absmax, (n) float32
at::Tensor scale_back(const at::Tensor & values, const at::Tensor & absmax, int64_t blocksize, int64_t n) {
  const int64_t rem = n % blocksize, full = n - rem, blocks = full / blocksize;
  if (!rem) return (values.view({-1, blocksize}) * absmax.view({-1, 1})).reshape(n);
  at::Tensor out = at::empty({n}, at::kFloat);
  out.slice(0, 0, full).copy_((values.slice(0, 0, full).view({-1, blocksize}) * absmax.slice(0, 0, blocks).view({-1, 1})).reshape(full));
  out.slice(0, full).copy_(values.slice(0, full) * absmax[blocks]);
  return out;
}

}  // namespace

Blockwise8 quantize_blockwise(const at::Tensor & A, const at::Tensor & code, int64_t blocksize) {
  check_blocksize(blocksize, "quantize_blockwise");
  at::NoGradGuard g;
  auto [scaled, absmax] = scale_blocks(A.reshape(-1).to(at::kFloat), blocksize);
  at::Tensor bounds = (code.slice(0, 0, -1) + code.slice(0, 1)) / 2;
  at::Tensor q = at::bucketize(scaled, bounds, /*out_int32=*/true).to(at::kByte);
  return {q.reshape(A.sizes()), absmax, code, blocksize};
}

at::Tensor dequantize_blockwise(const Blockwise8 & q) {
  at::NoGradGuard g;
  at::Tensor flat = q.codes.reshape(-1);
  at::Tensor values = q.code.index({flat.to(at::kLong)});
  return scale_back(values, q.absmax, q.blocksize, flat.numel()).reshape(q.codes.sizes());
}

int64_t Quant4::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

at::Tensor Quant4::absmax_float() const {
  if (!nested) return absmax;
  at::Tensor a = dequantize_blockwise({absmax, nested_absmax, nested_code, nested_blocksize});
  return a + offset;
}

int64_t Quant4::nbytes() const {
  int64_t b = packed.numel() + absmax.numel() * absmax.element_size() + code.numel() * 4;
  if (nested) b += nested_absmax.numel() * 4 + nested_code.numel() * 4;
  return b;
}

namespace {

// Elements a chunk of quantize_4bit/quantize_int8 handles at once (a multiple of any blocksize): chunks run on
// the kernel threads, each converting only its own slice of the weight to float32 (a checkpoint's bf16 tensor
// is read straight from the mapped file; nothing of the weight's size is allocated but the codes)
constexpr int64_t kChunk = 1 << 16;

// Elements [a, b) of the flat weight (a on a block boundary) as scale_blocks + bucketize compute them, block by
// block (kernels::quantize_block4: the reciprocal or, for a partial last block, the division of scale_blocks,
// then bucketize with right=False), FP4's codes mapped through `order`. Codes go to `codes` (one byte each),
// absmax to `absmax` (one per block). A weight not in float32 is converted into `buf` (b - a floats).
void quantize_4bit_range(const at::Tensor & flat, int64_t a, int64_t b, int64_t blocksize, const float * bounds,
                         const int64_t * order, float * buf, uint8_t * codes, float * absmax) {
  const float * v = buf;
  if (flat.scalar_type() == at::kFloat) {
    v = flat.data_ptr<float>() + a;
  } else {
    at::from_blob(buf, {b - a}, at::kFloat).copy_(flat.slice(0, a, b));
  }
  for (int64_t s = 0; s < b - a; s += blocksize) {
    const int64_t len = std::min(blocksize, b - a - s);  // (only the last block can be short)
    absmax[(a + s) / blocksize] = kernels::quantize_block4(v + s, len, len < blocksize, bounds, codes + s);
  }
  if (order) {
    for (int64_t i = 0; i < b - a; ++i) codes[i] = static_cast<uint8_t>(order[codes[i]]);
  }
}

}  // namespace

Quant4 quantize_4bit(const at::Tensor & W, Format f, int64_t blocksize, bool double_quant) {
  check_blocksize(blocksize, "quantize_4bit");
  PEFT_CHECK(W.is_floating_point(), "quantize_4bit: the weight must be a floating tensor, not ", W.scalar_type());
  at::NoGradGuard g;
  Quant4 q;
  q.format = f;
  q.blocksize = blocksize;
  q.shape = W.sizes().vec();
  q.dtype = W.scalar_type();
  q.code = code_4bit(f);
  // _get_4bit_quantize_bounds: midpoints of the sorted code; FP4's codes are not sorted, `order` maps back.
  // FP4's two zeros (codes 0 and 8) tie in bitsandbytes' argsort; its order on PyTorch 1.13 is fixed here
  // so that the codes do not depend on a sort's tie-breaking
  at::Tensor order = f == Format::nf4 ? at::arange(16, at::kLong)
                                      : at::tensor(std::vector<int64_t>{11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3});
  at::Tensor sorted = q.code.index({order});
  const at::Tensor bounds = ((sorted.slice(0, 0, -1) + sorted.slice(0, 1)) / 2).contiguous();
  const float * bp = bounds.data_ptr<float>();
  const int64_t * op = f == Format::nf4 ? nullptr : order.data_ptr<int64_t>();
  const at::Tensor flat = W.reshape(-1).contiguous();
  const int64_t n = flat.numel(), blocks = (n + blocksize - 1) / blocksize;
  const int64_t chunk = std::max(blocksize, kChunk), chunks = (n + chunk - 1) / chunk;
  at::Tensor absmax = at::empty({blocks}, at::kFloat);
  q.packed = at::empty({(n + 1) / 2, 1}, at::kByte);
  uint8_t * packed = q.packed.data_ptr<uint8_t>();
  float * am = absmax.data_ptr<float>();
  parallel_rows(chunks, 1, [&](int64_t c0, int64_t c1) {
    at::NoGradGuard ng;  // (a thread of its own)
    std::vector<uint8_t> codes(chunk + 1);
    std::vector<float> buf(flat.scalar_type() == at::kFloat ? 0 : chunk);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t a = c * chunk, b = std::min(n, a + chunk);
      quantize_4bit_range(flat, a, b, blocksize, bp, op, buf.data(), codes.data(), am);
      // an odd count is padded with a zero (its code: the bound count below 0), as the default backend pads
      if ((b - a) % 2) {
        int idx = 0;
        for (int j = 0; j < 15; ++j) idx += bp[j] < 0.0f;
        codes[b - a] = static_cast<uint8_t>(op ? op[idx] : idx);
      }
      // two codes a byte, the first in the high nibble (read as one little-endian 16-bit pair: vectorizes)
      static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the code pairs are read little-endian");
      uint8_t * out = packed + a / 2;
      for (int64_t i = 0; i < (b - a + 1) / 2; ++i) {
        uint16_t pair;
        std::memcpy(&pair, codes.data() + 2 * i, 2);
        out[i] = static_cast<uint8_t>((pair & 0xF) << 4 | pair >> 8);
      }
    }
  });
  if (double_quant) {
    at::Tensor mean = absmax.mean();
    Blockwise8 b = quantize_blockwise(absmax - mean, dynamic_map(), 256);
    q.nested = true;
    q.absmax = b.codes;
    q.nested_absmax = b.absmax;
    q.nested_code = b.code;
    q.offset = mean;
  } else {
    q.absmax = absmax;
  }
  return q;
}

at::Tensor dequantize_4bit(const Quant4 & q) {
  at::NoGradGuard g;
  const int64_t n = q.numel();
  at::Tensor bytes = q.packed.reshape(-1).to(at::kInt);
  at::Tensor idx = at::stack({at::bitwise_right_shift(bytes, 4), at::bitwise_and(bytes, 0xF)}, 1).reshape(-1).slice(0, 0, n);
  at::Tensor values = q.code.index({idx.to(at::kLong)});
  return scale_back(values, q.absmax_float(), q.blocksize, n).reshape(q.shape);
}

int64_t Quant8::nbytes() const { return CB.numel() + SCB.numel() * 4; }

Quant8 quantize_int8(const at::Tensor & W) {
  PEFT_CHECK(W.dim() == 2 && W.is_floating_point(), "quantize_int8: expected a 2-D floating weight, got ", W.sizes(),
             " ", W.scalar_type());
  at::NoGradGuard g;
  const int64_t O = W.size(0), I = W.size(1);
  Quant8 q{at::empty({O, I}, at::kChar), at::empty({O}, at::kFloat)};
  // rows are independent: a few rows at a time on the kernel threads (each converts only its rows)
  parallel_rows(O, std::max<int64_t>(1, kChunk / std::max<int64_t>(I, 1)), [&](int64_t r0, int64_t r1) {
    at::NoGradGuard ng;
    // Int8Params quantizes the float16 copy of the weight: int8_vectorwise_quant(W.to(float16))
    at::Tensor A = W.slice(0, r0, r1).to(at::kHalf);
    at::Tensor row_stats = std::get<0>(at::max(A.abs(), 1)).to(at::kFloat);
    q.CB.slice(0, r0, r1).copy_(at::round(A * (at::reciprocal(row_stats.unsqueeze(-1)) * 127.0)).to(at::kChar));
    q.SCB.slice(0, r0, r1).copy_(row_stats);
  });
  return q;
}

at::Tensor dequantize_int8(const Quant8 & q) {
  at::NoGradGuard g;
  // as bitsandbytes' CPU path (MatMul8bitFp) forms the weight it multiplies by: CB * (SCB * (1/127))
  return q.CB.to(at::kFloat).mul(q.SCB.unsqueeze(1).mul(1.0 / 127.0));
}

}  // namespace peft::quant
