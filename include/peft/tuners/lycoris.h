// The LyCORIS-style methods LoHa and LoKr (PEFT §2.7, §2.8) on Linear layers: an additive weight delta
// built from small factors, applied as y = base(x) + x dW^T, merged as W += dW. What they share
// (settings, module/rank dropout, merge, scales) lives in LycorisLinear; each method supplies dW.
// O = out features, I = in features, R = rank.
#pragma once
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/targeting.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

struct LycorisSettings {
  int64_t r = 8;
  double alpha = 8;
  double rank_dropout = 0;
  double module_dropout = 0;
  bool rank_dropout_scale = true;  // LoKr's rank_dropout_scale; LoHa always rescales
};

/// A LOHA or LOKR config's options, parsed once.
struct LycorisOptions : MethodOptions {
  int64_t r = 8;
  double alpha = 8;
  RankPatterns patterns;
  double rank_dropout = 0, module_dropout = 0;
  bool rank_dropout_scale = true;
  std::string init = "true";  // LoHa: true/false; LoKr: true/false/"lycoris"
  bool decompose_both = false;     // LoKr
  int64_t decompose_factor = -1;   // LoKr
  /// The settings of module `path` (rank_pattern / alpha_pattern applied).
  LycorisSettings for_module(const std::string & path) const;
  /// The fields LoHa and LoKr share, checked; `inits` are the accepted init_weights values.
  static LycorisOptions read(const AdapterConfig & cfg, const std::string & source, const std::vector<std::string> & inits);
};

/// PEFT's config fields that LoHa and LoKr share, with their defaults.
nlohmann::json lycoris_defaults();

class LycorisLinear : public TunerLayer {
 public:
  explicit LycorisLinear(LayerPtr base);
  std::string adapter_signature(const std::string & name) const override;
  void rescale(const std::string & name, const AdapterConfig & cfg, const std::string & path, double factor) override;

  /// scale * (method's product), (O, I); with rank dropout applied in training.
  at::Tensor delta_weight(const std::string & name);
  LinearBase & linear() const { return static_cast<LinearBase &>(*base_layer_); }

  const LycorisSettings & settings(const std::string & name) const { return setting_of(settings_, name); }

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  /// The method's unscaled delta (O, I).
  virtual at::Tensor raw_delta(const std::string & name) const = 0;
  void add_settings(const std::string & name, const LycorisSettings & s);
  std::map<std::string, LycorisSettings> settings_;
  at::Tensor forward_active(const at::Tensor & x) override;
};

class LoHaLinear : public LycorisLinear {
 public:
  explicit LoHaLinear(LayerPtr base);
  /// init: "true" (w2_b zero: a no-op) or "false"
  void add_adapter(const std::string & name, const LycorisSettings & s, const std::string & init);

 protected:
  at::Tensor raw_delta(const std::string & name) const override;  // (w1_a w1_b) * (w2_a w2_b)

 private:
  AdapterDict *w1a_, *w1b_, *w2a_, *w2b_;
};

class LoKrLinear : public LycorisLinear {
 public:
  explicit LoKrLinear(LayerPtr base);
  /// init: "true" (w1 side zero), "lycoris" (w2 side zero) or "false"
  void add_adapter(const std::string & name, const LycorisSettings & s, const std::string & init, bool decompose_both,
                   int64_t decompose_factor);

 protected:
  at::Tensor raw_delta(const std::string & name) const override;  // kron(W1, W2)

 private:
  AdapterDict *w1_, *w1a_, *w1b_, *w2_, *w2a_, *w2b_;
};

/// PEFT's LoKr factorization of a dimension into (m, n), m * n = dim (see peft-spec §2.8).
std::pair<int64_t, int64_t> lokr_factorization(int64_t dim, int64_t factor = -1);

}  // namespace peft
