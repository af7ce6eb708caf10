// The orthogonal methods on Linear layers: the input is rotated block-wise before the base layer.
//   OFT (PEFT §2.9):  y = W BD(Q)^T x + b,  Q_i = Cayley(S_i), S_i = U_i - U_i^T from a packed upper
//                     triangle (exact Cayley, or its truncated Neumann series: PEFT's default)
//   BOFT (§2.4): y = s * (W M^T x) + b, M = M_{N-1} ... M_0, M_i = P_i BD(Q_i) P_i^T over N butterfly factors
//                (P_0 = I, P_i PEFT's block butterfly permutation), Q = Cayley(1/2 (R - R^T)); with one factor
//                M = BD(Q). Several factors compute what upstream's CUDA extension computes (its CPU fallback
//                silently uses one factor)
// R = number of blocks, b = block size, R * b = in features.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

struct OrthoSettings {
  int64_t blocks = 0, block_size = 0;
  bool neumann = true;      // OFT: approximate Cayley with a Neumann series
  int64_t neumann_terms = 5;
  bool block_share = false;
  double dropout = 0;       // BOFT's multiplicative dropout (training)
  bool coft = false;        // OFT: constrained variant (blocks kept near the identity)
  double eps = 6e-5;        // its radius
  int64_t factors = 1;      // BOFT's butterfly factors
};

/// An OFT config's options, parsed once.
struct OFTOptions : MethodOptions {
  int64_t r = 0, block_size = 32;  // exactly one non-zero
  bool neumann = true;
  int64_t neumann_terms = 5;
  bool block_share = false;
  double module_dropout = 0;  // kept for round-trips: PEFT's OFT never applies it
  bool coft = false;
  double eps = 6e-5;
  bool init_zero = true;  // init_weights
};

/// A BOFT config's options, parsed once.
struct BOFTOptions : MethodOptions {
  int64_t block_size = 4, block_num = 0;  // exactly one non-zero
  int64_t factors = 1;                     // boft_n_butterfly_factor
  double dropout = 0;
  bool init_zero = true;
};

/// Rotated-input adapters; the method decides how blocks Q are built and whether a scale follows.
class OrthoLinear : public TunerLayer {
 public:
  explicit OrthoLinear(LayerPtr base);
  std::string adapter_signature(const std::string & name) const override;

  /// The rotation blocks of adapter `name`, (R, b, b) (x is rotated as x @ BD(blocks)).
  virtual at::Tensor blocks(const std::string & name) const = 0;
  /// The blocks a training forward uses: with the method's multiplicative dropout.
  virtual at::Tensor training_blocks(const std::string & name) const;
  /// The output scale (O) or undefined (OFT).
  virtual at::Tensor scale(const std::string & name) const { return {}; }
  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }

  const OrthoSettings & settings(const std::string & name) const { return setting_of(settings_, name); }

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  /// BOFT's multiplicative dropout: floor(p * R) random blocks of Q (R, b, b) become the identity.
  static at::Tensor drop_blocks(const at::Tensor & Q, double p);
  std::map<std::string, OrthoSettings> settings_;
  at::Tensor forward_active(const at::Tensor & x) override;
};

class OFTLinear : public OrthoLinear {
 public:
  explicit OFTLinear(LayerPtr base);
  void add_adapter(const std::string & name, const OrthoSettings & s, bool init_zero);
  at::Tensor blocks(const std::string & name) const override;

 private:
  AdapterDict * R_;  // oft_R.<name>.weight (R or 1, b(b-1)/2)
};

class BOFTLinear : public OrthoLinear {
 public:
  explicit BOFTLinear(LayerPtr base);
  void add_adapter(const std::string & name, const OrthoSettings & s, bool init_zero);
  /// One factor: its (R, b, b) blocks; several: the whole rotation M as one (1, n, n) block.
  at::Tensor blocks(const std::string & name) const override;
  at::Tensor training_blocks(const std::string & name) const override;
  at::Tensor scale(const std::string & name) const override;

 private:
  at::Tensor factor_blocks(const std::string & name) const;  // (N, R, b, b)
  at::Tensor chain(const at::Tensor & factors) const;         // (1, n, n)
  AdapterDict *R_, *s_;  // boft_R.<name> (N, R, b, b), boft_s.<name> (O, 1)
};

}  // namespace peft
