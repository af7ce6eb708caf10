#include "quant-options.h"

#include <algorithm>
#include <sstream>

#include "common.h"

namespace peft::cli {

void add_quant_options(CLI::App & cmd, QuantFlags & q, bool writes_config) {
  cmd.add_option("--quantize", q.quantize,
                 "quantize the base's Linear layers at load: nf4, fp4 or int8 (bitsandbytes' formats; default none)");
  cmd.add_option("--quantize-skip", q.skip, "comma-separated modules kept in float (default lm_head)");
  cmd.add_flag("--double-quant", q.double_quant, "4-bit: quantize the block scales too (bnb_4bit_use_double_quant)");
  cmd.add_option("--blocksize", q.blocksize, "4-bit block size (default 64)");
  if (writes_config) {
    cmd.add_option("--int8-threshold", q.int8_threshold, "int8: llm_int8_threshold written to quantization_config (default 6.0)");
  }
}

std::string quant_flag(const std::string & field) {
  if (field == "format") return "--quantize";
  if (field == "skip") return "--quantize-skip";
  std::string flag = "--" + field;  // double_quant -> --double-quant
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

quant::QuantOptions parse_quant_flags(const QuantFlags & q) {
  quant::QuantOptions o;
  o.format = quant::parse_format(q.quantize, "--quantize");
  o.double_quant = q.double_quant;
  o.blocksize = q.blocksize;
  o.int8_threshold = q.int8_threshold;
  o.skip.clear();
  std::stringstream ss(q.skip);
  for (std::string s; std::getline(ss, s, ',');) {
    if (!s.empty()) o.skip.push_back(s);
  }
  return o;
}

quant::QuantOptions quant_options(const QuantFlags & q) {
  quant::QuantOptions o = parse_quant_flags(q);
  quant::check_options(o, quant_flag);  // (an OptionError: a usage error)
  return o;
}

std::shared_ptr<CausalLM> load_model_with(const std::string & dir, at::ScalarType dtype, const QuantFlags & q) {
  LoadOptions o;
  o.dtype = dtype;
  o.quantize = quant_options(q);
  return load_model(dir, o);
}

}  // namespace peft::cli
