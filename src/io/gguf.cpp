// GGUF writer: see include/peft/io/gguf.h. Layout (GGUF v3): magic "GGUF", uint32 version, uint64
// tensor count, uint64 key/value count; each key/value: string key, uint32 type, value (an array: uint32
// element type, uint64 count, the elements); each tensor info: string name, uint32 n_dims, uint64
// dims[n_dims] (ggml order), uint32 ggml type, uint64 offset into the data section; padding to the
// alignment; the data section. Strings are a uint64 length and the bytes, no terminator. Everything
// little endian.
#include "peft/io/gguf.h"

#include <algorithm>
#include <cstring>

#include "peft/error.h"
#include "peft/io/atomic-file.h"
#include "peft/io/ggml-quants.h"

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

uint64_t padded(uint64_t n) { return (n + kGgufAlignment - 1) / kGgufAlignment * kGgufAlignment; }

std::string array_header(GgufValueType element, size_t n) {
  std::string v;
  put<uint32_t>(v, static_cast<uint32_t>(element));
  put<uint64_t>(v, n);
  return v;
}

constexpr int64_t kChunkValues = 1 << 22;  // values encoded at a time while streaming a tensor

}  // namespace

void GgufWriter::check_key(const std::string & key) const {
  PEFT_CHECK(!key.empty(), "GGUF: empty metadata key");
  for (const auto & kv : kvs_) PEFT_CHECK(kv.key != key, "GGUF: metadata key '", key, "' given twice");
}

void GgufWriter::add_kv(const std::string & key, GgufValueType type, std::string value) {
  check_key(key);
  kvs_.push_back({key, type, std::move(value)});
}

void GgufWriter::add_string(const std::string & key, const std::string & value) {
  std::string v;
  put_string(v, value);
  add_kv(key, GgufValueType::STRING, std::move(v));
}

void GgufWriter::add_float32(const std::string & key, float value) {
  std::string v;
  put<float>(v, value);
  add_kv(key, GgufValueType::FLOAT32, std::move(v));
}

void GgufWriter::add_uint32(const std::string & key, uint32_t value) {
  std::string v;
  put<uint32_t>(v, value);
  add_kv(key, GgufValueType::UINT32, std::move(v));
}

void GgufWriter::add_bool(const std::string & key, bool value) {
  add_kv(key, GgufValueType::BOOL, std::string(1, value ? '\1' : '\0'));
}

void GgufWriter::add_string_array(const std::string & key, const std::vector<std::string> & values) {
  std::string v = array_header(GgufValueType::STRING, values.size());
  for (const auto & s : values) put_string(v, s);
  add_kv(key, GgufValueType::ARRAY, std::move(v));
}

void GgufWriter::add_int32_array(const std::string & key, const std::vector<int32_t> & values) {
  std::string v = array_header(GgufValueType::INT32, values.size());
  for (int32_t x : values) put<int32_t>(v, x);
  add_kv(key, GgufValueType::ARRAY, std::move(v));
}

void GgufWriter::add_float32_array(const std::string & key, const std::vector<float> & values) {
  std::string v = array_header(GgufValueType::FLOAT32, values.size());
  for (float x : values) put<float>(v, x);
  add_kv(key, GgufValueType::ARRAY, std::move(v));
}

void GgufWriter::add_tensor(const std::string & name, const at::Tensor & t, GgmlType type) {
  PEFT_CHECK(t.is_floating_point(), "GGUF: tensor '", name, "' is not a floating-point tensor");
  at::Tensor d = t.detach().to(at::kCPU).contiguous();
  add_tensor(name, d.sizes().vec(), type, [d]() { return d; });
}

void GgufWriter::add_tensor(const std::string & name, const std::vector<int64_t> & shape, GgmlType type,
                            std::function<at::Tensor()> load) {
  PEFT_CHECK(!name.empty(), "GGUF: empty tensor name");
  // ggml's tensor names are at most GGML_MAX_NAME - 1 = 63 bytes
  PEFT_CHECK(name.size() < 64, "GGUF: tensor name '", name, "' is longer than ggml's 63 bytes");
  for (const auto & x : tensors_) PEFT_CHECK(x.name != name, "GGUF: tensor '", name, "' given twice");
  PEFT_CHECK(!shape.empty() && shape.size() <= 4, "GGUF: tensor '", name, "' has ", shape.size(), " dims; ggml takes 1 to 4");
  for (int64_t d : shape) PEFT_CHECK(d >= 1, "GGUF: tensor '", name, "' has an empty dim");
  PEFT_CHECK(shape.back() % ggml_block_values(type) == 0, "GGUF: tensor '", name, "': its rows of ", shape.back(),
             " values are not whole ", ggml_type_name(type), " blocks of ", ggml_block_values(type));
  tensors_.push_back({name, shape, type, std::move(load)});
}

void GgufWriter::write_to(const std::function<void(const std::string &)> & sink) const {
  std::string head;
  head += "GGUF";
  put<uint32_t>(head, kGgufVersion);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kvs_.size());
  for (const auto & kv : kvs_) {
    put_string(head, kv.key);
    put<uint32_t>(head, static_cast<uint32_t>(kv.type));
    head += kv.value;
  }
  uint64_t offset = 0;
  for (const auto & t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(head, static_cast<uint64_t>(*it));
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offset);
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    offset += padded(ggml_nbytes(n, t.type));
  }
  head.append(padded(head.size()) - head.size(), '\0');
  sink(head);
  for (const auto & t : tensors_) {
    at::Tensor v = t.load();
    PEFT_CHECK(v.defined() && v.sizes().vec() == t.shape, "GGUF: tensor '", t.name, "': its data has shape ",
               v.defined() ? v.sizes() : at::IntArrayRef{}, ", declared ", at::IntArrayRef(t.shape));
    PEFT_CHECK(v.is_floating_point(), "GGUF: tensor '", t.name, "' is not a floating-point tensor");
    at::Tensor rows = v.reshape({-1, t.shape.back()});
    const int64_t step = std::max<int64_t>(1, kChunkValues / t.shape.back());
    uint64_t written = 0;
    for (int64_t r = 0; r < rows.size(0); r += step) {
      const std::string b = ggml_encode(rows.slice(0, r, std::min(r + step, rows.size(0))), t.type);
      sink(b);
      written += b.size();
    }
    sink(std::string(padded(written) - written, '\0'));
  }
}

std::string GgufWriter::bytes() const {
  std::string out;
  write_to([&](const std::string & b) { out += b; });
  return out;
}

void GgufWriter::write(const std::string & path) const {
  AtomicFile f(path);
  write_to([&](const std::string & b) { f.write(b); });
  f.commit();
}

}  // namespace peft
