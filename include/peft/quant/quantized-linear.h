// Linear layers whose weight is stored quantized (bitsandbytes' Linear4bit / Linear8bitLt): the base
// layers of QLoRA. They are LinearBase, so every adapter that wraps a Linear wraps them unchanged; their
// forward is one peft:: custom op (fused dequantize-GEMV/GEMM kernels, gradients to the input only) that
// a compiled graph calls directly. Compute is float32; inputs in another dtype are cast and cast back.
#pragma once
#include <map>
#include <string>

#include "peft/nn/layers.h"
#include "peft/quant/formats.h"

namespace peft::quant {

class QuantizedLinear : public LinearBase {
 public:
  virtual Format format() const = 0;
  /// The tensors of this layer under bitsandbytes' checkpoint keys, prefixed by `prefix` ("...q_proj.").
  virtual void export_tensors(const std::string & prefix, std::map<std::string, at::Tensor> & out) const = 0;
  /// Bytes of the stored weight (codes and scales, not the bias).
  virtual int64_t weight_bytes() const = 0;
  at::Tensor bias_tensor() const override { return bias; }
  void store_bias(const at::Tensor & b) override;
  at::Tensor forward(const at::Tensor & x) override;
  at::Tensor bias;  // (O) float, a parameter (frozen unless a tuner trains biases), or undefined
  /// |dequantized - written| of the last store_weight (max, sum, count): what a merge lost to rounding.
  double store_error_max = 0, store_error_sum = 0;
  int64_t store_error_count = 0;

 protected:
  void record_store_error(const at::Tensor & written, const at::Tensor & now);
  void init_bias(const at::Tensor & b);
};

/// 4-bit (NF4/FP4) weight. Tensors are registered as buffers ("weight" = the packed codes, "absmax",
/// "quant_map", and when double-quantized "nested_absmax", "nested_quant_map", "nested_offset") so that
/// compiled graphs read them live; merging rewrites them in place.
class Linear4bit : public QuantizedLinear {
 public:
  Linear4bit(Quant4 q, const at::Tensor & bias);
  Format format() const override { return q_.format; }
  int64_t in_features() const override { return q_.shape[1]; }
  int64_t out_features() const override { return q_.shape[0]; }
  at::Tensor apply_weight(const at::Tensor & x) override;
  at::Tensor dense_weight() const override { return dequantize_4bit(q_); }
  at::TensorOptions dense_options() const override { return q_.packed.options().dtype(at::kFloat); }
  void store_weight(const at::Tensor & w) override;
  LayerPtr clone_layer() const override;
  void export_tensors(const std::string & prefix, std::map<std::string, at::Tensor> & out) const override;
  int64_t weight_bytes() const override { return q_.nbytes(); }
  const Quant4 & quantized() const { return q_; }

 private:
  Quant4 q_;
};

/// LLM.int8 weight (CB int8 codes, SCB row absmax), buffers "weight" and "SCB". Computed as
/// bitsandbytes' CPU path does (MatMul8bitFp: the dequantized weight times float activations).
class Linear8bit : public QuantizedLinear {
 public:
  Linear8bit(Quant8 q, const at::Tensor & bias);
  Format format() const override { return Format::int8; }
  int64_t in_features() const override { return q_.CB.size(1); }
  int64_t out_features() const override { return q_.CB.size(0); }
  at::Tensor apply_weight(const at::Tensor & x) override;
  at::Tensor dense_weight() const override { return dequantize_int8(q_); }
  at::TensorOptions dense_options() const override { return q_.CB.options().dtype(at::kFloat); }
  void store_weight(const at::Tensor & w) override;
  LayerPtr clone_layer() const override;
  void export_tensors(const std::string & prefix, std::map<std::string, at::Tensor> & out) const override;
  int64_t weight_bytes() const override { return q_.nbytes(); }
  const Quant8 & quantized() const { return q_; }

 private:
  Quant8 q_;
};

}  // namespace peft::quant
