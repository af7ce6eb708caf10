// LoftQ for a model that is already quantized (PEFT's replace_lora_weights_loftq): the LoRA factors of an
// adapter on 4-bit layers recomputed from the float checkpoint, so that base + B A comes closest to the
// weight before quantization. (init_lora_weights "loftq" is the other way: quantizing a float base itself.)
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <string>

namespace peft {

class PeftModel;

/// LoftQ (init_lora_weights "loftq", PEFT's loftq_init as it runs with bitsandbytes): `iters` rounds of
/// quantizing W - B A (bits 4: bitsandbytes' NF4 in blocks of 64, absmax in float32; bits 8: LLM.int8 rows)
/// and taking the rank-r SVD of what quantization lost, B = U sqrt(S), A = sqrt(S) Vh (no scaling).
/// (The quantizing half of LoftQ; the rank-r split is math::loftq_low_rank.) Returns A (r, in), B (out, r) and the dequantized weight the base keeps.
struct LoftqFactors {
  at::Tensor A, B, base;
};
LoftqFactors loftq_factors(const at::Tensor & W, int64_t r, int64_t bits, int64_t iters);


/// For every LoRA layer of adapter `adapter` whose base is a 4-bit layer (NF4/FP4): read the float weight of
/// that module from the checkpoint folder `model_dir` (model.safetensors or a sharded index), take the rank-r
/// SVD of (float - dequantized) as LoftQ's factors (A = sqrt(S) Vh, B = U sqrt(S)), and write them into the
/// adapter's tensors in place (a compiled model sees them without recompiling). `callback(model, module)`,
/// when given, is asked after each module; false puts that module's previous factors back (PEFT's greedy
/// check). Throws peft::Error when no LoRA layer sits on a 4-bit base, on a missing or mis-shaped checkpoint
/// tensor, or for a DoRA adapter (its magnitude was computed from the old factors). Returns the modules replaced.
int64_t replace_lora_weights_loftq(PeftModel & model, const std::string & model_dir, const std::string & adapter = "default",
                                   const std::function<bool(PeftModel &, const std::string &)> & callback = {});

}  // namespace peft
