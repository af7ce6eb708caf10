// A checkpoint folder's tensors as views of its memory-mapped files (model.safetensors, or the shards that
// model.safetensors.index.json maps), nothing copied: the loader converts or quantizes them one at a time
// (issue 23, streaming loads). When the last reference to a view goes, its pages are handed back to the
// kernel (MADV_DONTNEED), so the file's pages do not pile up in the resident set while a large model loads.
// Views are read-only (writing into one faults) and keep their file mapped for as long as they live.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace peft {

struct MappedCheckpoint {
  std::string source;                         // the file errors name: model.safetensors or the index
  std::map<std::string, at::Tensor> tensors;  // views into the mappings
  std::vector<std::pair<uintptr_t, uintptr_t>> mapped;  // the mappings' address ranges

  /// Hand the pages of `part` (a piece of one of the views, already used) back to the kernel now, before
  /// the whole view goes: a large tensor copied slice by slice then never has all its pages resident.
  /// Anything outside the mappings is left alone.
  void release(const at::Tensor & part) const;
};

/// The tensors of `dir` as checkpoint_load finds them (same files, keys and checks), mapped, not read.
MappedCheckpoint checkpoint_map(const std::string & dir);

}  // namespace peft
