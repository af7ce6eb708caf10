#include "quant-options.h"

#include <sstream>

#include "common.h"

namespace peft::cli {

void add_quant_options(CLI::App & cmd, QuantFlags & q) {
  cmd.add_option("--quantize", q.quantize,
                 "quantize the base's Linear layers at load: nf4, fp4 or int8 (bitsandbytes' formats; default none)");
  cmd.add_option("--quantize-skip", q.skip, "comma-separated modules kept in float (default lm_head)");
  cmd.add_flag("--double-quant", q.double_quant, "4-bit: quantize the block scales too (bnb_4bit_use_double_quant)");
  cmd.add_option("--blocksize", q.blocksize, "4-bit block size (default 64)");
  cmd.add_option("--int8-threshold", q.int8_threshold, "int8: llm_int8_threshold written to quantization_config (default 6.0)");
}

quant::QuantOptions quant_options(const QuantFlags & q) {
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
  PEFT_USAGE(!q.double_quant || o.format == quant::Format::nf4 || o.format == quant::Format::fp4,
             "--double-quant applies to --quantize nf4 or fp4");
  const bool pow2 = q.blocksize >= 32 && q.blocksize <= 4096 && (q.blocksize & (q.blocksize - 1)) == 0;
  PEFT_USAGE(pow2, "--blocksize ", q.blocksize, " is not one of 32, 64, 128, ..., 4096");
  return o;
}

std::shared_ptr<CausalLM> load_model_with(const std::string & dir, at::ScalarType dtype, const QuantFlags & q) {
  LoadOptions o;
  o.dtype = dtype;
  o.quantize = quant_options(q);
  return load_model(dir, o);
}

}  // namespace peft::cli
