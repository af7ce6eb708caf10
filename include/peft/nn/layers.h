// The plain layers that architectures are built from. Parameter names follow torch.nn
// (weight, bias) so that module paths + parameter names equal Hugging Face checkpoint keys.
// Shapes: Linear weight (O, I), bias (O); Embedding weight (V, D); norms weight/bias (D).
#pragma once
#include "peft/nn/module.h"

#include <optional>

namespace peft {

/// What adapters ask of a linear base layer, whatever stores its weight (a float Linear today, quantized
/// kinds next): its shape, y = x W^T (+ b), the weight as a dense floating tensor, and writing a changed
/// weight back (merging). Adapter layers and merges use only this; compile's folds rewrite aten::linear
/// over a weight input, so a base kind whose forward is another op is left unfolded, never miscomputed.
class LinearBase : public Layer {
 public:
  using Layer::Layer;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  /// x W^T, without the bias.
  virtual at::Tensor apply_weight(const at::Tensor & x) = 0;
  /// W (O, I) as a dense floating tensor: the parameter itself for a float layer (so a traced graph
  /// sees the live weight), a dequantized copy for others.
  virtual at::Tensor dense_weight() const = 0;
  /// dense_weight()'s dtype and device, without forming it (a quantized layer would dequantize).
  virtual at::TensorOptions dense_options() const = 0;
  /// The bias (O), or undefined.
  virtual at::Tensor bias_tensor() const = 0;
  /// Store `w` (O, I) / `b` (O) as the new weight / bias, in the layer's own format (merge, unmerge).
  virtual void store_weight(const at::Tensor & w) = 0;
  virtual void store_bias(const at::Tensor & b) = 0;
};

class Linear : public LinearBase {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias);
  at::Tensor forward(const at::Tensor & x) override;  // (.., I) -> (.., O)
  LayerPtr clone_layer() const override;
  int64_t in_features() const override { return weight.size(1); }
  int64_t out_features() const override { return weight.size(0); }
  at::Tensor apply_weight(const at::Tensor & x) override;  // (a 16-bit weight as forward computes it)
  at::Tensor dense_weight() const override { return weight; }
  at::TensorOptions dense_options() const override { return weight.options(); }
  at::Tensor bias_tensor() const override { return bias; }
  void store_weight(const at::Tensor & w) override;
  void store_bias(const at::Tensor & b) override;
  /// Make this layer use `w` as its weight (tied embeddings); the parameter is re-registered.
  void tie_weight(const at::Tensor & w);
  at::Tensor weight;  // (O, I)
  at::Tensor bias;    // (O) or undefined
};

/// transformers' Conv1D (GPT-2): y = x W + b with W stored (in, out), the transpose of Linear's layout
/// (checkpoints hold it so). As a LinearBase it shows W^T (O, I): adapters see a Linear, and merging
/// writes back through the transpose (PEFT's fan_in_fan_out).
class Conv1D : public LinearBase {
 public:
  Conv1D(int64_t in_features, int64_t out_features, bool bias);
  at::Tensor forward(const at::Tensor & x) override;  // (.., I) -> (.., O)
  LayerPtr clone_layer() const override;
  int64_t in_features() const override { return weight.size(0); }
  int64_t out_features() const override { return weight.size(1); }
  at::Tensor apply_weight(const at::Tensor & x) override { return at::linear(x, weight.t()); }
  at::Tensor dense_weight() const override { return weight.t(); }
  at::TensorOptions dense_options() const override { return weight.options(); }
  at::Tensor bias_tensor() const override { return bias; }
  void store_weight(const at::Tensor & w) override;
  void store_bias(const at::Tensor & b) override;
  at::Tensor weight;  // (I, O)
  at::Tensor bias;    // (O) or undefined
};

class Embedding : public Layer {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, int64_t padding_idx = -1);
  at::Tensor forward(const at::Tensor & ids) override;  // (B, T) int64 -> (B, T, D)
  LayerPtr clone_layer() const override;
  at::Tensor weight;  // (V, D)
  int64_t padding_idx;
};

/// Llama's RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32.
class RMSNorm : public Layer {
 public:
  /// unit_offset (Gemma): the weight is stored as w - 1 and applied as (1 + w) in float32 before the cast
  /// back (transformers' GemmaRMSNorm; Llama's casts first, then multiplies).
  RMSNorm(int64_t dim, double eps, bool unit_offset = false);
  at::Tensor forward(const at::Tensor & x) override;
  LayerPtr clone_layer() const override;
  at::Tensor weight;
  double eps;
  bool unit_offset;
};

class LayerNorm : public Layer {
 public:
  LayerNorm(int64_t dim, double eps, bool affine);
  at::Tensor forward(const at::Tensor & x) override;
  LayerPtr clone_layer() const override;
  at::Tensor weight;  // undefined when not affine
  at::Tensor bias;
  double eps;
};

/// An ordered list of modules named "0", "1", ... (torch.nn.ModuleList).
class ModuleList : public Module {
 public:
  void push_back(ModulePtr m) {
    register_module(std::to_string(items_.size()), m);
    items_.push_back(std::move(m));
  }
  size_t size() const { return items_.size(); }
  template <class T> std::shared_ptr<T> at(size_t i) const { return std::static_pointer_cast<T>(items_[i]); }

 private:
  std::vector<ModulePtr> items_;
};

}  // namespace peft
