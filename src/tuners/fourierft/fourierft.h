// FourierFT (PEFT's tuners/fourierft) on Linear layers: n trainable spectral coefficients at fixed random
// positions of the weight's 2-D spectrum (positions: the first n of a permutation seeded with
// random_loc_seed, as PEFT draws them); dW = real(ifft2(dense spectrum)) * scaling; y = base(x) + x dW^T.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/targeting.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// A FourierFT config's options, parsed once.
struct FourierFTOptions : MethodOptions {
  int64_t n_frequency = 1000;
  double scaling = 150.0;
  int64_t random_loc_seed = 777;
  bool init_zero = false;  // init_weights: the spectrum starts at zero (else standard normal)
  ModulePattern n_frequency_pattern;
};

class FourierFTLinear : public TunerLayer {
 public:
  explicit FourierFTLinear(LayerPtr base);
  void add_adapter(const std::string & name, int64_t n_frequency, double scaling, int64_t seed, bool init_zero);

  std::string adapter_signature(const std::string & name) const override;

  LinearBase & linear() const;
  at::Tensor delta_weight(const std::string & name) const;

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  struct Settings {
    at::Tensor rows, cols;  // the coefficients' positions (n)
    double scaling;
    int64_t seed;
  };
  std::map<std::string, Settings> settings_;
  AdapterDict * spectrum_;
};

}  // namespace peft
