// ggml encodings of float data: see include/peft/io/ggml-quants.h. The block layouts (ggml-common.h):
//   block_q8_0 { ggml_half d; int8_t  qs[32]; }   34 bytes, x = d * qs[j]
//   block_q4_0 { ggml_half d; uint8_t qs[16]; }   18 bytes, x[j] = d * ((qs[j] & 15) - 8),
//                                                 x[j + 16] = d * ((qs[j] >> 4) - 8)
// The arithmetic below is float as in ggml's reference C code (1.0f / d, roundf, the (int8_t) cast).
#include "peft/io/ggml-quants.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "peft/error.h"

namespace peft {

namespace {

uint16_t half_bits(float x) { return c10::Half(x).x; }  // round to nearest even, as ggml's fp32_to_fp16

void quantize_block_q8_0(const float * x, char * out) {
  float amax = 0.0f;
  for (int j = 0; j < kGgmlBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint16_t dh = half_bits(d);
  std::memcpy(out, &dh, 2);
  for (int j = 0; j < kGgmlBlock; ++j) out[2 + j] = static_cast<char>(static_cast<int8_t>(std::roundf(x[j] * id)));
}

void quantize_block_q4_0(const float * x, char * out) {
  float amax = 0.0f, max = 0.0f;  // max: the signed value of the first largest |x|
  for (int j = 0; j < kGgmlBlock; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint16_t dh = half_bits(d);
  std::memcpy(out, &dh, 2);
  for (int j = 0; j < kGgmlBlock / 2; ++j) {
    const uint8_t q0 = std::min<int8_t>(15, static_cast<int8_t>(x[j] * id + 8.5f));
    const uint8_t q1 = std::min<int8_t>(15, static_cast<int8_t>(x[j + kGgmlBlock / 2] * id + 8.5f));
    out[2 + j] = static_cast<char>(q0 | (q1 << 4));
  }
}

}  // namespace

int64_t ggml_block_values(GgmlType type) { return type == GgmlType::Q8_0 || type == GgmlType::Q4_0 ? kGgmlBlock : 1; }

int64_t ggml_block_bytes(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return 4;
    case GgmlType::F16: return 2;
    case GgmlType::BF16: return 2;
    case GgmlType::Q8_0: return 2 + kGgmlBlock;
    case GgmlType::Q4_0: return 2 + kGgmlBlock / 2;
  }
  fail(str("unknown ggml type ", static_cast<uint32_t>(type)));
}

uint64_t ggml_nbytes(uint64_t n, GgmlType type) {
  const uint64_t bv = static_cast<uint64_t>(ggml_block_values(type));
  PEFT_CHECK(n % bv == 0, "ggml ", ggml_type_name(type), ": ", n, " values are not whole blocks of ", bv);
  return n / bv * static_cast<uint64_t>(ggml_block_bytes(type));
}

std::string ggml_type_name(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return "f32";
    case GgmlType::F16: return "f16";
    case GgmlType::BF16: return "bf16";
    case GgmlType::Q8_0: return "q8_0";
    case GgmlType::Q4_0: return "q4_0";
  }
  return "?";
}

std::string ggml_encode(const at::Tensor & values, GgmlType type) {
  const int64_t n = values.numel();
  std::string out(ggml_nbytes(static_cast<uint64_t>(n), type), '\0');
  if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) {
    const at::ScalarType st = type == GgmlType::F32 ? at::kFloat : type == GgmlType::F16 ? at::kHalf : at::kBFloat16;
    at::Tensor t = values.detach().to(at::kCPU).to(st).contiguous();
    std::memcpy(&out[0], t.data_ptr(), out.size());
    return out;
  }
  at::Tensor f = values.detach().to(at::kCPU).to(at::kFloat).contiguous();
  const float * x = f.data_ptr<float>();
  const int64_t bb = ggml_block_bytes(type);
  for (int64_t b = 0; b < n / kGgmlBlock; ++b) {
    if (type == GgmlType::Q8_0) quantize_block_q8_0(x + b * kGgmlBlock, &out[b * bb]);
    else quantize_block_q4_0(x + b * kGgmlBlock, &out[b * bb]);
  }
  return out;
}

at::Tensor ggml_decode(const std::string & bytes, GgmlType type, int64_t n) {
  PEFT_CHECK(bytes.size() == ggml_nbytes(static_cast<uint64_t>(n), type), "ggml_decode: ", bytes.size(),
             " bytes are not ", n, " values of ", ggml_type_name(type));
  at::Tensor out = at::empty({n}, at::kFloat);
  float * y = out.data_ptr<float>();
  if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) {
    const at::ScalarType st = type == GgmlType::F32 ? at::kFloat : type == GgmlType::F16 ? at::kHalf : at::kBFloat16;
    at::Tensor t = at::empty({n}, st);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t.to(at::kFloat);
  }
  const int64_t bb = ggml_block_bytes(type);
  for (int64_t b = 0; b < n / kGgmlBlock; ++b) {
    const char * blk = bytes.data() + b * bb;
    c10::Half dh;
    std::memcpy(&dh.x, blk, 2);
    const float d = static_cast<float>(dh);
    for (int j = 0; j < kGgmlBlock; ++j) {
      float v;
      if (type == GgmlType::Q8_0) {
        v = d * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
      } else {
        const uint8_t q = static_cast<uint8_t>(blk[2 + j % (kGgmlBlock / 2)]);
        v = d * static_cast<float>((j < kGgmlBlock / 2 ? (q & 15) : (q >> 4)) - 8);
      }
      y[b * kGgmlBlock + j] = v;
    }
  }
  return out;
}

}  // namespace peft
