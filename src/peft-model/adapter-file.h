// Checks on an adapter file's tensors as read, before any of them reaches a model.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

namespace peft {

/// Every value of every floating tensor finite, else peft::Error naming `file`, the tensor, how many
/// values are NaN / Inf and the first one's index. Loading refuses what save_pretrained refuses: one Inf
/// in an adapter turns every row of a batch it meets into NaN (0 x Inf), other adapters' rows included.
void check_finite_file(const std::string & file, const std::map<std::string, at::Tensor> & tensors);

}  // namespace peft
