// MiSS (PEFT's tuners/miss, formerly Bone) on Linear layers, in its three modes (init_weights):
//   true / false ("miss"): y = base(x) + (sum over the r-wide blocks of drop(x)) B, B = miss_block (r, out);
//     as a weight: dW[o, k r + j] = B[j, o] (the last partial block: x zero-padded, as PEFT)
//   "mini": B (r, mini_r) repeated out / mini_r times along out, then as "miss"
//   "bat":  W' = W + (W_blocks B + B) with W cut into r x r blocks and B = miss_block (out / r, r, r);
//     unmerge: (W_blocks - B)(I + B)^-1
// Several active adapters add up ("bat": each on the weight the ones before it made).
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// A MiSS config's options, parsed once.
struct MissOptions : MethodOptions {
  int64_t r = 64;
  int64_t mini_r = 1;
  double dropout = 0;        // miss_dropout
  std::string mode = "miss";  // "miss" | "bat" | "mini" (init_weights true/false, "bat", "mini")
  bool zero_init = true;      // init_weights true/"bat"/"mini": the block starts at zero
};

class MissLinear : public TunerLayer {
 public:
  explicit MissLinear(LayerPtr base);
  void add_adapter(const std::string & name, const MissOptions & o);

  std::string adapter_signature(const std::string & name) const override;

  LinearBase & linear() const;
  at::Tensor block(const std::string & name) const;  // miss_block

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  at::Tensor delta_weight(const std::string & name) const;  // "miss" / "mini": the additive weight
  struct Settings {
    std::string mode;
    double dropout;
  };
  std::map<std::string, Settings> settings_;
  AdapterDict * block_;
};

}  // namespace peft
