// SHiRA (PEFT's tuners/shira) on Linear layers: r * (in + out) trainable values at fixed positions of the
// weight (a sparse, high-rank change). Positions: PEFT's random mask, the first n of a permutation from a
// fresh generator (seeded with random_seed, else torch's default seed), in row-major order; saved in the
// file as shira_indices (int32, (2, n)) and read back from it.
//   dW = scatter(zeros(out, in), indices, values * scale),   y = base(x) + x dW^T.
#pragma once
#include <map>
#include <optional>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// A SHIRA config's options, parsed once.
struct ShiraOptions : MethodOptions {
  int64_t r = 32;
  std::optional<int64_t> random_seed;
  bool init_zero = true;  // init_weights
};

class ShiraLinear : public TunerLayer {
 public:
  explicit ShiraLinear(LayerPtr base);
  void add_adapter(const std::string & name, const ShiraOptions & o);

  std::string adapter_signature(const std::string & name) const override;
  std::vector<std::pair<std::string, at::Tensor>> adapter_buffers(const std::string & name) const override;
  void check_loaded(const std::string & name, const std::string & file) const override;
  /// PEFT's set_scale: the values are multiplied by `factor` (1 by default).
  void rescale(const std::string & name, const AdapterConfig &, const std::string &, double factor) override;

  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }
  at::Tensor delta_weight(const std::string & name) const;

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  at::Tensor indices(const std::string & name) const;  // (2, n) int32: rows, columns
  AdapterDict * values_;                               // "shira_weight"
  std::map<std::string, at::Tensor> index_;            // per adapter, as registered below
  std::shared_ptr<torch::nn::Module> indices_;         // "shira_indices.<adapter>.indices" buffers
};

}  // namespace peft
