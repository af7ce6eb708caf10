// A token embedding whose table is stored quantized (issue 23): the rows of a quantized Linear's weight
// (V, D), each looked-up row dequantized on the gather (bit for bit the dequantized weight's row). On a model
// with tie_word_embeddings whose output layer is quantized (`--quantize-skip ""`), the embedding reads the
// output layer's own codes: ONE quantized matrix serves the lookup and the output projection, and a merge
// into the head (rewriting its codes in place) changes both, as a tied weight does.
//
// transformers + bitsandbytes never quantize embeddings (bitsandbytes replaces nn.Linear only), so no
// checkpoint they read holds one: saving a model with a quantized embedding is refused, naming it (keep
// lm_head in float, the default skip list, or dequantize first: peft merge --dtype float32).
#pragma once
#include <map>
#include <memory>
#include <string>

#include "peft/quant/quantize.h"
#include "peft/quant/quantized-linear.h"

namespace peft {
class CausalLM;
}

namespace peft::quant {

class QuantizedEmbedding : public Layer {
 public:
  /// The rows of `table`'s weight (out_features = V rows of in_features = D); the output in `dtype`.
  QuantizedEmbedding(std::shared_ptr<QuantizedLinear> table, int64_t padding_idx, at::ScalarType dtype = at::kFloat);
  at::Tensor forward(const at::Tensor & ids) override;  // (B, T) int64 -> (B, T, D)
  /// A standalone copy (its own codes, not tied to anything).
  LayerPtr clone_layer() const override;
  int64_t num_embeddings() const { return table_->out_features(); }
  int64_t embedding_dim() const { return table_->in_features(); }
  /// The dequantized table (V, D) float32.
  at::Tensor dense_weight() const { return table_->dense_weight(); }
  /// The quantized matrix read (the tied output layer itself when tied).
  const std::shared_ptr<QuantizedLinear> & table() const { return table_; }
  at::ScalarType dtype() const { return dtype_; }
  int64_t padding_idx;

 private:
  std::shared_ptr<QuantizedLinear> table_;  // (not a child module: the head owns it, or this layer alone)
  at::ScalarType dtype_;
};

/// With tie_word_embeddings and a quantized output layer: make the input embedding (a float Embedding,
/// not wrapped) read the head's quantized matrix, dropping its float table. Returns whether the embedding
/// is now (or already was) the head's. Called by load_model and quant::quantize_modules.
bool tie_quantized_embedding(CausalLM & model);

/// load_model's step for a tied model quantized with the output layer not skipped: the checkpoint's
/// embedding weight (erased from `tensors`) is quantized once into the output layer, and the embedding
/// reads it (tie_quantized_embedding). Returns whether it did.
bool load_tied_quantized(CausalLM & model, std::map<std::string, at::Tensor> & tensors, const QuantOptions & opts,
                         const std::string & source);

/// The error saving refuses a quantized embedding with (`path`: its module path).
std::string quantized_embedding_save_error(const std::string & path);

}  // namespace peft::quant
