// The folder a model was loaded from, as given (transformers' `model.name_or_path`): load_model records
// it, and PeftModel::save_pretrained writes it as adapter_config.json's `base_model_name_or_path` where the
// adapter's config has none (upstream's save_pretrained does the same), so upstream's AutoPeftModel finds
// the base. Kept beside the model, not in it: a model built in memory has none.
#pragma once
#include <memory>
#include <string>

namespace peft {

class CausalLM;

/// Remember `name_or_path` for `model` (for as long as the model lives).
void set_model_name_or_path(const std::shared_ptr<CausalLM> & model, const std::string & name_or_path);
/// What load_model was given for `model` ("" when it was not loaded from a folder).
std::string model_name_or_path(const CausalLM & model);

}  // namespace peft
