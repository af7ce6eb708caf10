// Reading and writing the safetensors format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}},
// then the raw tensor bytes. The header is validated in full before any tensor is read.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace peft {

/// An opened safetensors file: the file is memory-mapped, the header checked, tensors read on demand.
/// Example: SafeTensorsFile f("model.safetensors"); at::Tensor w = f.get("lm_head.weight");
class SafeTensorsFile {
 public:
  struct Entry {
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    size_t begin = 0;  // byte offsets inside the data section
    size_t end = 0;
  };

  explicit SafeTensorsFile(const std::string & path);
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile &) = delete;
  SafeTensorsFile & operator=(const SafeTensorsFile &) = delete;

  const std::string & path() const { return path_; }
  bool contains(const std::string & name) const { return entries_.count(name) != 0; }
  std::vector<std::string> keys() const;
  const Entry & entry(const std::string & name) const;
  const std::map<std::string, std::string> & metadata() const { return metadata_; }

  /// A new CPU tensor holding a copy of the stored bytes, in the stored dtype.
  at::Tensor get(const std::string & name) const;

 private:
  std::string path_;
  void * map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Read every tensor of a file.
std::map<std::string, at::Tensor> safetensors_load(const std::string & path);

/// The tensors of a Hugging Face checkpoint folder: model.safetensors, or the shards its
/// model.safetensors.index.json maps (shard names and keys checked). `source` gets the file read (for errors).
/// With `wanted`, only the keys it accepts are read (the others are never copied out of the files).
std::map<std::string, at::Tensor> checkpoint_load(const std::string & dir, std::string * source = nullptr,
                                                  const std::function<bool(const std::string &)> & wanted = {});

/// Write tensors (made contiguous, moved to CPU) atomically: temp file + fsync + rename.
void safetensors_save(const std::string & path, const std::map<std::string, at::Tensor> & tensors,
                      const std::map<std::string, std::string> & metadata = {{"format", "pt"}});

/// "F32" <-> at::kFloat, etc. Throws on unknown names.
at::ScalarType safetensors_dtype(const std::string & name);
std::string safetensors_dtype_name(at::ScalarType t);

}  // namespace peft
