// Writing GGUF files (ggml's container, version 3, little endian): the header, typed key/value
// metadata, the tensor infos, then the tensor data, each tensor at an offset that is a multiple of the
// alignment (32, GGUF's default for general.alignment). Dims are stored in ggml's order: the reverse of
// a row-major (PyTorch) shape, so a (rows, cols) tensor is written with ne = [cols, rows] and its bytes
// as they are. Tensors are F32, F16, BF16, Q8_0 or Q4_0 (ggml-quants.h encodes them). write() streams
// the data to the file one tensor at a time (a tensor given as a loader is read only then), atomically.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace peft {

/// ggml's tensor types that the writer produces (values of enum ggml_type).
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };

/// GGUF's metadata value types (values of enum gguf_type) that the writer produces.
enum class GgufValueType : uint32_t { UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8, ARRAY = 9 };

constexpr uint32_t kGgufVersion = 3;
constexpr uint64_t kGgufAlignment = 32;

/// Collects metadata and tensors, then writes them as one GGUF file. Keys and tensor names must be
/// unique (an error names the duplicate). Example:
///   GgufWriter w; w.add_string("general.architecture", "llama"); w.add_tensor("t", x, GgmlType::F16);
///   w.write("out.gguf");
class GgufWriter {
 public:
  void add_string(const std::string & key, const std::string & value);
  void add_float32(const std::string & key, float value);
  void add_uint32(const std::string & key, uint32_t value);
  void add_bool(const std::string & key, bool value);
  void add_string_array(const std::string & key, const std::vector<std::string> & values);
  void add_int32_array(const std::string & key, const std::vector<int32_t> & values);
  void add_float32_array(const std::string & key, const std::vector<float> & values);
  /// A tensor in PyTorch's row-major shape (1 to 4 dims); converted to `type` when written.
  void add_tensor(const std::string & name, const at::Tensor & t, GgmlType type);
  /// A tensor of `shape` whose values `load` returns when the file is written (then dropped): only one
  /// such tensor is in memory at a time. Q8_0 / Q4_0 need the last dim to be a multiple of 32.
  void add_tensor(const std::string & name, const std::vector<int64_t> & shape, GgmlType type,
                  std::function<at::Tensor()> load);
  size_t tensor_count() const { return tensors_.size(); }
  /// The whole file's bytes (small files: tests).
  std::string bytes() const;
  /// Write the file to `path` atomically (temp file + rename), the tensor data streamed.
  void write(const std::string & path) const;

 private:
  struct Kv {
    std::string key;
    GgufValueType type;
    std::string value;  // the encoded value
  };
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;  // PyTorch order
    GgmlType type;
    std::function<at::Tensor()> load;
  };
  void check_key(const std::string & key) const;
  void add_kv(const std::string & key, GgufValueType type, std::string value);
  void write_to(const std::function<void(const std::string &)> & sink) const;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace peft
