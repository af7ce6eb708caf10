// GGUF writer: see include/peft/io/gguf.h. Layout (GGUF v3): magic "GGUF", uint32 version, uint64
// tensor count, uint64 key/value count; each key/value: string key, uint32 type, value; each tensor
// info: string name, uint32 n_dims, uint64 dims[n_dims] (ggml order), uint32 ggml type, uint64 offset
// into the data section; padding to the alignment; the data section. Strings are a uint64 length and
// the bytes, no terminator. Everything little endian.
#include "peft/io/gguf.h"

#include <cstring>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF writer assumes a little-endian host");

template <class T> void put(std::string & out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_string(std::string & out, const std::string & s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void pad(std::string & out, uint64_t alignment) {
  const uint64_t rem = out.size() % alignment;
  if (rem) out.append(alignment - rem, '\0');
}

at::ScalarType scalar_type(GgmlType t) { return t == GgmlType::F16 ? at::kHalf : at::kFloat; }

}  // namespace

void GgufWriter::check_key(const std::string & key) const {
  PEFT_CHECK(!key.empty(), "GGUF: empty metadata key");
  for (const auto & kv : kvs_) PEFT_CHECK(kv.key != key, "GGUF: metadata key '", key, "' given twice");
}

void GgufWriter::add_string(const std::string & key, const std::string & value) {
  check_key(key);
  std::string v;
  put_string(v, value);
  kvs_.push_back({key, GgufValueType::STRING, v});
}

void GgufWriter::add_float32(const std::string & key, float value) {
  check_key(key);
  std::string v;
  put<float>(v, value);
  kvs_.push_back({key, GgufValueType::FLOAT32, v});
}

void GgufWriter::add_uint32(const std::string & key, uint32_t value) {
  check_key(key);
  std::string v;
  put<uint32_t>(v, value);
  kvs_.push_back({key, GgufValueType::UINT32, v});
}

void GgufWriter::add_tensor(const std::string & name, const at::Tensor & t, GgmlType type) {
  PEFT_CHECK(!name.empty(), "GGUF: empty tensor name");
  // ggml's tensor names are at most GGML_MAX_NAME - 1 = 63 bytes
  PEFT_CHECK(name.size() < 64, "GGUF: tensor name '", name, "' is longer than ggml's 63 bytes");
  for (const auto & x : tensors_) PEFT_CHECK(x.name != name, "GGUF: tensor '", name, "' given twice");
  PEFT_CHECK(t.dim() >= 1 && t.dim() <= 4, "GGUF: tensor '", name, "' has ", t.dim(), " dims; ggml takes 1 to 4");
  PEFT_CHECK(t.is_floating_point(), "GGUF: tensor '", name, "' is not a floating-point tensor");
  at::Tensor d = t.detach().to(at::kCPU).to(scalar_type(type)).contiguous();
  tensors_.push_back({name, d, type});
}

std::string GgufWriter::bytes() const {
  std::string out;
  out += "GGUF";
  put<uint32_t>(out, kGgufVersion);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kvs_.size());
  for (const auto & kv : kvs_) {
    put_string(out, kv.key);
    put<uint32_t>(out, static_cast<uint32_t>(kv.type));
    out += kv.value;
  }
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const auto & t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.data.dim()));
    for (int64_t i = t.data.dim() - 1; i >= 0; --i) put<uint64_t>(out, static_cast<uint64_t>(t.data.size(i)));
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offset);
    offsets.push_back(offset);
    const uint64_t n = t.data.numel() * t.data.element_size();
    offset += (n + kGgufAlignment - 1) / kGgufAlignment * kGgufAlignment;
  }
  pad(out, kGgufAlignment);
  const size_t data_start = out.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto & t = tensors_[i];
    out.append(data_start + offsets[i] - out.size(), '\0');
    out.append(static_cast<const char *>(t.data.data_ptr()), t.data.numel() * t.data.element_size());
  }
  pad(out, kGgufAlignment);
  return out;
}

void GgufWriter::write(const std::string & path) const { write_file_atomic(path, bytes()); }

}  // namespace peft
