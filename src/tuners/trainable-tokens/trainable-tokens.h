// Trainable tokens (PEFT's TRAINABLE_TOKENS, tuners/trainable_tokens): rows token_indices of an embedding
// (or of a Linear's weight: an output layer) replaced by a trained delta, "trainable_tokens_delta.<adapter>"
// (n, D). Forward uses W with those rows swapped in (index_copy), the embedding's or linear's own math on it;
// merging writes the rows into the weight and unmerging puts back the values they had when the adapter was
// added. A layer whose weight is tied to the adapted embedding's (lm_head with tie_word_embeddings) follows
// the embedding's adapter and holds no tensors of its own (PEFT's tied TrainableTokensLayer).
#pragma once
#include <map>
#include <vector>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

struct TrainableTokensOptions : MethodOptions {
  std::vector<int64_t> token_indices;
  bool init_from_weight = true;  // init_weights: the rows' current values (false: standard normal)
};

class TrainableTokensLayer : public TunerLayer {
 public:
  /// `wrapped`: PEFT's TrainableTokensWrapper layout (trainable_token_indices of another method): the
  /// tensors under "token_adapter.", and a tied layer's file holds nothing.
  explicit TrainableTokensLayer(LayerPtr base, bool wrapped = false);
  void add_adapter(const std::string & name, const std::vector<int64_t> & indices, bool init_from_weight);
  /// Follow `source`'s adapter `name` (this layer's weight is source's weight).
  void follow(const std::string & name, std::shared_ptr<TrainableTokensLayer> source);

  std::string adapter_signature(const std::string & name) const override;
  std::string mixed_batch_refusal(const std::string &) const override { return ""; }
  /// A tied layer's file entry: PEFT saves the shared delta under the tied layer's name too.
  std::vector<std::pair<std::string, at::Tensor>> adapter_buffers(const std::string & name) const override;
  /// The rows of adapter `name` (int64) and their trained values (n, D).
  at::Tensor indices(const std::string & name) const;
  at::Tensor delta(const std::string & name) const;
  /// The weight with the rows of `adapters` swapped in, in order.
  at::Tensor weight_with(const std::vector<std::string> & adapters) const;

 protected:
  at::Tensor forward_active(const at::Tensor & x) override;
  at::Tensor forward_mixed(const at::Tensor & x) override;
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;

 private:
  at::Tensor base_weight() const;
  at::Tensor apply(const at::Tensor & W, const at::Tensor & x) const;  // the base layer's math with weight W
  bool wrapped_;
  void check_disjoint(const std::vector<std::string> & adapters) const;
  AdapterDict * delta_;                            // trainable_tokens_delta.<adapter>
  std::shared_ptr<torch::nn::Module> holder_;      // token_indices.<adapter>: the rows, trainable_tokens_original
  std::map<std::string, at::Tensor> rows_, original_;
  std::map<std::string, std::shared_ptr<TrainableTokensLayer>> source_;  // followed adapters
};

/// Trainable tokens for a config's trainable_token_indices: adapter `adapter` on `target` (a plain layer or
/// a TrainableTokensLayer of the wrapped layout); returns the layer to put in its place.
std::shared_ptr<TunerLayer> add_trainable_tokens(const LayerPtr & target, const std::string & adapter,
                                                 const std::vector<int64_t> & rows);
/// The same for a layer tied to `embedding`'s weight: it follows `embedding`'s adapter.
std::shared_ptr<TunerLayer> follow_trainable_tokens(const std::string & adapter, const LayerPtr & target,
                                                    const std::shared_ptr<TunerLayer> & embedding);

}  // namespace peft
