// Writing GGUF files (ggml's container, version 3, little endian): the header, typed key/value
// metadata, the tensor infos, then the tensor data, each tensor at an offset that is a multiple of the
// alignment (32, GGUF's default for general.alignment). Dims are stored in ggml's order: the reverse of
// a row-major (PyTorch) shape, so a (rows, cols) tensor is written with ne = [cols, rows] and its bytes
// as they are. Tensors are F32 or F16. The file is written atomically (write_file_atomic).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace peft {

/// ggml's tensor types that the writer produces (values of enum ggml_type).
enum class GgmlType : uint32_t { F32 = 0, F16 = 1 };

/// GGUF's metadata value types (values of enum gguf_type) that the writer produces.
enum class GgufValueType : uint32_t { UINT32 = 4, FLOAT32 = 6, STRING = 8 };

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
  /// A tensor in PyTorch's row-major shape (1 to 4 dims); converted to `type` when written.
  void add_tensor(const std::string & name, const at::Tensor & t, GgmlType type);
  /// The whole file's bytes.
  std::string bytes() const;
  /// Write bytes() to `path` atomically.
  void write(const std::string & path) const;

 private:
  struct Kv {
    std::string key;
    GgufValueType type;
    std::string value;  // the encoded value
  };
  struct Tensor {
    std::string name;
    at::Tensor data;  // contiguous CPU, already of the stored dtype
    GgmlType type;
  };
  void check_key(const std::string & key) const;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace peft
