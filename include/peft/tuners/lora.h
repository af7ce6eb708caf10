// LoRA (and its DoRA variant) on Linear and Embedding layers. PEFT §2.1-2.2.
// B = batch, T = seq, I = in features, O = out features, R = rank, V = vocab, D = embedding dim.
//   Linear:    y = base(x) + s * (drop(x) A^T B^T + b_B)          A (R, I), B (O, R)
//   DoRA:      y = g * (W x + s B A x) + b,  g = m / ||W + s B A||_rows (detached); the formulas are
//              peft::math's (include/peft/ops/adapter-math.h)
//   Embedding: y = base(t) + s * lookup(t, A^T) B^T               A (R, V) zeros, B (D, R)
//   DoRA on an embedding: y = g * (base(t) + s * lookup(t, A^T) B^T),  g = m / ||E^T + s B A||_rows (D, detached)
// s = alpha / r (alpha / sqrt(r) with rsLoRA).
#pragma once
#include <map>

#include "peft/model/replicate.h"
#include "peft/nn/layers.h"
#include "peft/tuners/config.h"
#include "peft/tuners/targeting.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// PEFT's LoraConfig fields with their defaults (AdaLoRA's config extends them).
nlohmann::json lora_config_defaults();

/// The LoRA hyperparameters of one adapter in one layer (after rank/alpha patterns).
struct LoraSettings {
  int64_t r = 8;
  double alpha = 8;
  double scaling = 1;
  double dropout = 0;
  bool use_dora = false;
  bool lora_bias = false;
  // "true" | "false" | "gaussian" | "orthogonal" | "pissa" | "pissa_niter" | "olora" | "loftq"
  std::string init = "true";
  int64_t niter = 0;                       // pissa_niter_N: N
  int64_t loftq_bits = 4, loftq_iter = 1;  // loftq_config
};

/// A LORA config's options, parsed once (PEFT's LoraConfig fields that are implemented; the others
/// are refused by name when set).
struct LoraOptions : MethodOptions {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  bool use_rslora = false, use_dora = false, lora_bias = false;
  std::string init = "true";  // as LoraSettings::init
  int64_t niter = 0, loftq_bits = 4, loftq_iter = 1;
  RankPatterns patterns;
  LayerMap layer_replication;  // [start, end) ranges of the replicated layer stack; empty = none
  std::vector<std::string> target_parameters;  // the config's, for the pattern key of those layers
  /// The settings of module `path` (rank_pattern / alpha_pattern applied). The patterns are matched
  /// against the key PEFT targeted: "<path>.weight" for a layer that target_parameters names (PEFT's
  /// ParamWrapper: "mlp.down_proj.weight" matches there, "down_proj" does not), else the module's name.
  LoraSettings for_module(const std::string & path) const;
  /// Parse and check the LoRA fields of `cfg` (also AdaLoRA's, which shares them).
  static LoraOptions read(const AdapterConfig & cfg, const std::string & source);
};

/// What LoRA layers of every base kind share: per-adapter settings and their bookkeeping.
class LoraLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::string adapter_signature(const std::string & name) const override;
  void rescale(const std::string & name, const AdapterConfig & cfg, const std::string & path, double factor) override;
  const LoraSettings & settings(const std::string & name) const { return setting_of(settings_, name); }

 protected:
  void add_settings(const std::string & name, const LoraSettings & s);
  void forget(const std::string & name) override;
  /// PEFT's refusal of a DoRA adapter's rows in a mixed batch ("" for a plain adapter).
  std::string dora_refusal(const std::string & name) const;
  std::map<std::string, LoraSettings> settings_;
};

class LoraLinear : public LoraLayer {
 public:
  explicit LoraLinear(LayerPtr base);
  void add_adapter(const std::string & name, const LoraSettings & s);
  std::string mixed_batch_refusal(const std::string & name) const override { return dora_refusal(name); }

  /// s * B A, (O, I).
  at::Tensor delta_weight(const std::string & name) const;
  LinearBase & linear() const;
  at::Tensor lora_A(const std::string & n) const;
  at::Tensor lora_B(const std::string & n) const;
  at::Tensor lora_B_bias(const std::string & n) const;
  at::Tensor magnitude(const std::string & n) const;  // DoRA, (O)

 protected:
  at::Tensor forward_mixed(const at::Tensor & x) override;
  at::Tensor forward_active(const at::Tensor & x) override;
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  void pad_rank_impl(const std::string & name, int64_t rank) override;

 private:
  std::map<std::string, at::Tensor> dora_norm_cache_;  // weight norms cached at merge, used by unmerge
  struct {
    AdapterDict *A, *B, *M;  // lora_A, lora_B, lora_magnitude_vector
  } dicts_;
};

class LoraEmbedding : public LoraLayer {
 public:
  explicit LoraEmbedding(LayerPtr base);
  void add_adapter(const std::string & name, const LoraSettings & s);
  std::string mixed_batch_refusal(const std::string & name) const override { return dora_refusal(name); }

  /// s * (B A)^T, (V, D).
  at::Tensor delta_weight(const std::string & name) const;
  Embedding & embedding() const;
  at::Tensor lora_embedding_A(const std::string & n) const { return A_->get(n); }  // (R, V)
  at::Tensor lora_embedding_B(const std::string & n) const { return B_->get(n); }  // (D, R)
  at::Tensor magnitude(const std::string & n) const { return M_->get(n); }         // DoRA, (D)

 protected:
  at::Tensor forward_active(const at::Tensor & ids) override;
  at::Tensor forward_mixed(const at::Tensor & ids) override;
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  void pad_rank_impl(const std::string & name, int64_t rank) override;

 private:
  std::map<std::string, at::Tensor> dora_norm_cache_;  // DoRA: weight norms cached at merge, used by unmerge
  AdapterDict *A_, *B_, *M_;  // lora_embedding_A, lora_embedding_B, lora_magnitude_vector
};

}  // namespace peft
