// HRA (Householder reflection adaptation, PEFT's tuners/hra) on Linear layers: the base weight times a
// product of r Householder reflections of the input space, W' = W H, H = prod_i (I - 2 u_i u_i^T / |u_i|^2)
// (u: hra_u (in, r)); with apply_GS the u's are first orthonormalised (Gram-Schmidt) and H = I - 2 U U^T.
// Several active adapters multiply (H_1 H_2 ...). Merge: W <- W H; unmerge: W <- W H^-1 (the reflections in
// reverse order).
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// An HRA config's options, parsed once.
struct HRAOptions : MethodOptions {
  int64_t r = 8;
  bool apply_gs = false;     // apply_GS
  bool init_weights = true;  // symmetric init (pairs of equal reflections: H = I) when r is even
};

class HRALinear : public TunerLayer {
 public:
  explicit HRALinear(LayerPtr base);
  void add_adapter(const std::string & name, const HRAOptions & o);

  std::string adapter_signature(const std::string & name) const override;

  LinearBase & linear() const;
  at::Tensor u(const std::string & name) const;  // hra_u (in, r)

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  std::map<std::string, bool> apply_gs_;
  AdapterDict * u_;
};

}  // namespace peft
