// add_weighted_adapter for IA3 adapters (called from lora-weighted.cpp's entry point, which decides by the
// sources' peft_type).
#pragma once
#include <string>
#include <vector>

#include "peft/tuners/lora-weighted.h"

namespace peft {

/// PEFT's IA3Model.add_weighted_adapter: the new adapter's config is the first source's with the union of the
/// sources' target_modules and feedforward_modules (lists: union; strings: "(a)|(b)"; mixed: refused), and
/// on every layer l_new = sum_i w_i l_i over the sources that adapt that layer.
void add_weighted_ia3(PeftModel & model, const std::vector<std::string> & adapters, const std::vector<double> & weights,
                      const std::string & name);

}  // namespace peft
