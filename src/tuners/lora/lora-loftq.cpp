// LoftQ (lora-loftq.h): loftq_factors, the quantizing rounds of init_lora_weights "loftq" (PEFT's loftq_init),
// and replace_lora_weights_loftq: LoftQ's factors for LoRA adapters on 4-bit layers, from the float
// checkpoint (PEFT's loftq_utils: replace_lora_weights_loftq + _loftq_init_new).
#include "peft/tuners/lora-loftq.h"

#include <set>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/ops/adapter-math.h"
#include "peft/peft-model.h"
#include "peft/quant/formats.h"
#include "peft/quant/quantized-linear.h"
#include "peft/tuners/lora.h"

namespace peft {

LoftqFactors loftq_factors(const at::Tensor & W, int64_t r, int64_t bits, int64_t iters) {
  const at::Tensor w = W.to(at::kFloat);
  at::Tensor res = w.clone(), deq, L, R;
  for (int64_t i = 0; i < iters; ++i) {
    if (bits == 4) {
      deq = quant::dequantize_4bit(quant::quantize_4bit(res, quant::Format::nf4, 64, /*double_quant=*/false));
    } else {
      const quant::Quant8 q = quant::quantize_int8(res);  // bitsandbytes' int8_vectorwise_dequant
      deq = q.CB * q.SCB.view({-1, 1}) * 7.874015718698502e-3;
    }
    res = w - deq;
    std::tie(R, L) = math::loftq_low_rank(res, r);
    if (i + 1 == iters) break;
    res = w - at::mm(L, R);
  }
  return {R, L, deq};
}

int64_t replace_lora_weights_loftq(PeftModel & model, const std::string & model_dir, const std::string & adapter,
                                   const std::function<bool(PeftModel &, const std::string &)> & callback) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> targets;
  for (const auto & l : model.tuner_layers()) {
    auto lora = std::dynamic_pointer_cast<LoraLinear>(l.second);
    if (!lora || !lora->has_adapter(adapter)) continue;
    if (!std::dynamic_pointer_cast<quant::Linear4bit>(lora->base_layer())) continue;
    PEFT_CHECK(!lora->settings(adapter).use_dora, "replace_lora_weights_loftq: adapter '", adapter, "' is DoRA at '",
               l.first, "' (its magnitude was computed from the factors being replaced)");
    targets.emplace_back(l.first, lora);
  }
  PEFT_CHECK(!targets.empty(), "replace_lora_weights_loftq: no LoRA layer of adapter '", adapter,
             "' on a 4-bit (NF4/FP4) base layer (load the model with 4-bit quantization first)");
  int64_t kept = 0;
  std::string source;
  std::set<std::string> keys;  // only the adapted layers' weights are read (as PEFT's lazy safetensors loader)
  for (const auto & t : targets) keys.insert(t.first + ".weight");
  const auto tensors = checkpoint_load(model_dir, &source, [&](const std::string & k) { return keys.count(k) != 0; });
  for (const auto & t : targets) {
    const std::string key = t.first + ".weight";
    auto it = tensors.find(key);
    PEFT_CHECK(it != tensors.end(), source, ": no tensor '", key, "' (the float weight of a quantized LoRA layer)");
    LinearBase & base = t.second->linear();
    PEFT_CHECK(it->second.dim() == 2 && it->second.size(0) == base.out_features() && it->second.size(1) == base.in_features(),
               source, ": tensor '", key, "' has shape ", it->second.sizes(), ", the layer is ", base.out_features(), "x",
               base.in_features());
    at::NoGradGuard g;
    const at::Tensor residual = it->second.to(at::kFloat) - base.dense_weight().to(at::kFloat);
    auto [A, B] = math::loftq_low_rank(residual, t.second->settings(adapter).r);
    at::Tensor a = t.second->lora_A(adapter), b = t.second->lora_B(adapter);
    const at::Tensor a_before = a.clone(), b_before = b.clone();
    a.copy_(A);
    b.copy_(B);
    if (callback && !callback(model, t.first)) {
      a.copy_(a_before);
      b.copy_(b_before);
    } else {
      ++kept;
    }
  }
  return kept;
}

}  // namespace peft
