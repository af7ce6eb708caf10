// RoAd (2D rotary adaptation, PEFT's tuners/road) on Linear layers: the base layer's output y (bias included)
// is cut into groups of group_size outputs, each group's first half paired with its second half, and every
// pair rotated by its own angle and scaled: y <- y * first + rotate_half(y) * second, the columns from
// road_theta / road_alpha by `variant` (road_1: out/2 values each, road_2: out, road_4: 2*out; formulas in
// peft::math::road_cols / road_apply). Several active adapters apply in order. Merge: W <- R W, b <- R b
// (R = math::road_matrix); unmerge: R^-1 (float32), as PEFT. Mixed-adapter batches: each row its adapter.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// A RoAd config's options, parsed once.
struct RoadOptions : MethodOptions {
  int64_t variant = 1;       // variant "road_1" / "road_2" / "road_4"
  int64_t group_size = 64;   // even; must divide each adapted layer's out_features
  bool init_weights = true;  // true: theta 0, alpha 1 (the identity); false: N(0, 0.5), N(1, 0.5)
};

class RoadLinear : public TunerLayer {
 public:
  explicit RoadLinear(LayerPtr base);
  void add_adapter(const std::string & name, const RoadOptions & o);

  std::string adapter_signature(const std::string & name) const override;
  std::string mixed_batch_refusal(const std::string &) const override { return ""; }

  LinearBase & linear() const;
  at::Tensor theta(const std::string & name) const;  // road_theta
  at::Tensor alpha(const std::string & name) const;  // road_alpha
  /// Adapter `name`'s (O, O) matrix R (float32): the layer computes R (W x + b).
  at::Tensor rotation(const std::string & name) const;

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;
  at::Tensor forward_mixed(const at::Tensor & x) override;

 private:
  struct Setting {
    int64_t variant, group_size;
  };
  std::map<std::string, Setting> settings_;
  AdapterDict * theta_;
  AdapterDict * alpha_;
};

}  // namespace peft
