// TunerLayer: the wrapper an adapter method puts in place of a base layer. It keeps the base layer as
// child "base_layer" and the per-adapter tensors in AdapterDicts named as PEFT names them
// ("lora_A.<adapter>.weight", "lora_embedding_A.<adapter>"), so in-memory parameter paths, PEFT's
// and the checkpoint key mapping all agree. The generic forward skeleton (disabled / merged / active)
// lives here; methods implement only their own math.
//
// The active set and the disabled flag are not the layer's: it reads them from the AdapterState of the
// model it belongs to. Every public call that changes what forward computes (merge, unmerge, new or
// deleted adapters, rank padding) moves that state's version, so a compiled model never replays a stale
// graph, whoever made the call.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "peft/error.h"
#include "peft/nn/layers.h"
#include "peft/nn/module.h"
#include "peft/tuners/adapter-state.h"
#include "peft/tuners/config.h"

namespace peft {

/// Per-adapter tensors of one kind, keyed by adapter name. add_weight() gives "<dict>.<name>.weight"
/// (a ModuleDict of Linear in PEFT), add_param() gives "<dict>.<name>" (a ParameterDict).
class AdapterDict : public torch::nn::Module {
 public:
  at::Tensor add_param(const std::string & adapter, at::Tensor t);
  at::Tensor add_weight(const std::string & adapter, at::Tensor w, at::Tensor bias = {});
  bool contains(const std::string & adapter) const;
  at::Tensor get(const std::string & adapter) const;        // the param or the module's weight
  at::Tensor bias(const std::string & adapter) const;       // undefined if none
  void remove(const std::string & adapter);

 private:
  std::map<std::string, at::Tensor> tensors_, biases_;
};

/// Per-adapter scale factors as 0-dim float buffers: a compiled graph reads them live, so changing a
/// scale (set_scale, hot-swap with another alpha) needs no recompile.
class ScaleDict : public torch::nn::Module {
 public:
  void set(const std::string & adapter, double value);
  at::Tensor get(const std::string & adapter) const;
  void remove(const std::string & adapter);

 private:
  std::map<std::string, at::Tensor> values_;
};

class TunerLayer : public Layer {
 public:
  /// `base_name` is the child name of the wrapped layer ("base_layer"; "original_module" for
  /// modules_to_save).
  explicit TunerLayer(LayerPtr base, const std::string & base_name = "base_layer");

  at::Tensor forward(const at::Tensor & x) override;
  LayerPtr base() override { return base_layer_->base(); }
  LayerPtr clone_layer() const override;
  /// The wrapped layer.
  const LayerPtr & base_layer() const { return base_layer_; }

  /// The state this layer reads (its model's once injected).
  const AdapterState & state() const { return *state_; }

  // ---- per-adapter bookkeeping ----
  bool has_adapter(const std::string & name) const { return names_.count(name) != 0; }
  /// The adapters this layer holds, sorted.
  std::vector<std::string> adapter_names() const { return {names_.begin(), names_.end()}; }
  /// Active adapters that this layer holds, in order.
  std::vector<std::string> active_here() const;
  /// Remove every tensor and setting of `name` (refused while it is merged).
  void delete_adapter(const std::string & name);
  /// Set adapter `name`'s scale to `factor` times the scale `cfg` gives module `path` (set_scale,
  /// hot-swap). Only the live scale tensor changes: compiled graphs stay valid. Methods without a scale
  /// ignore it.
  virtual void rescale(const std::string & name, const AdapterConfig & cfg, const std::string & path, double factor) {}
  /// Zero-pad adapter `name`'s rank to `rank` (prepare_for_hotswap); methods without a rank refuse.
  void pad_rank(const std::string & name, int64_t rank);
  /// Why rows of a mixed-adapter batch cannot use adapter `name` here, "" when they can (a LoRA layer
  /// refuses only DoRA rows, as PEFT; the default: the method has no per-row forward).
  virtual std::string mixed_batch_refusal(const std::string & name) const;
  /// Everything the traced computation depends on besides tensor values (ranks, dropout, variants).
  virtual std::string adapter_signature(const std::string & name) const = 0;

  // ---- merging ----
  const std::vector<std::string> & merged() const { return merged_; }
  bool is_merged(const std::string & name) const;
  /// Fold `names` (those this layer holds, not yet merged) into the base weights, in order.
  /// safe: compute on a copy, refuse non-finite results.
  void merge(const std::vector<std::string> & names, bool safe);
  void unmerge_all();
  void unmerge_last();
  /// Reset the merged list after the caller restored the weights itself.
  void restore_merged(std::vector<std::string> merged);

  /// The scale of adapter `name` (0-dim float tensor).
  at::Tensor scaling(const std::string & name) const { return scales_->get(name); }
  /// Parameters that belong to adapter `name` (paths relative to this layer).
  std::vector<std::pair<std::string, at::Tensor>> adapter_parameters(const std::string & name) const;
  /// Tensors of adapter `name` that its file holds but training does not change (SHiRA's indices): saved
  /// and loaded with the parameters, never trainable. Paths relative to this layer.
  virtual std::vector<std::pair<std::string, at::Tensor>> adapter_buffers(const std::string & name) const { return {}; }
  /// After load_adapter copied a file's tensors in: refuse values the method cannot use (indices out of
  /// range), naming `file`; load_adapter then undoes the load.
  virtual void check_loaded(const std::string & name, const std::string & file) const {}
  /// This layer's part of the compile key.
  LayerStateKey state_key(const std::string & path) const;

 protected:
  /// base(x) plus the contributions of the active adapters this layer holds (never merged here).
  virtual at::Tensor forward_active(const at::Tensor & x) = 0;
  /// Mixed-adapter batch (routing() is active): base(x) plus, on each row, that row's adapter.
  /// Methods that support it override; the default refuses.
  virtual at::Tensor forward_mixed(const at::Tensor & x);
  /// Fold adapter `name` into the base weights / undo it (merge() and unmerge_*() call these).
  virtual void merge_one(const std::string & name, bool safe) = 0;
  virtual void unmerge_one(const std::string & name) = 0;
  /// The method's own per-adapter state beyond AdapterDicts and scales (delete_adapter calls it).
  virtual void forget(const std::string & name) {}
  /// The method's rank padding (pad_rank calls it).
  virtual void pad_rank_impl(const std::string & name, int64_t rank);

  bool disabled() const { return state_->disabled(); }
  /// The model's mixed-batch routing (active while it runs a mixed-adapter batch).
  const RowRouting & routing() const { return state_->routing(); }
  const std::vector<std::string> & active() const { return state_->active(); }
  AdapterDict & dict(const std::string & name);  // register-on-first-use child AdapterDict
  /// Methods call this when adding an adapter (after its tensors exist).
  void track_adapter(const std::string & name);
  void set_scaling(const std::string & name, double value) { scales_->set(name, value); }
  /// Record a change of what forward computes that a method made itself.
  void touch() { state_->touch(); }

  LayerPtr base_layer_;
  ScaleDict * scales_;  // child "scaling"

 private:
  friend class PeftModel;
  /// Read the active set and disabled flag from `state` (the owning model's) from now on.
  void attach(std::shared_ptr<AdapterState> state);
  std::shared_ptr<AdapterState> state_;
  std::set<std::string> names_;
  std::vector<std::string> merged_;
};

/// The entry of adapter `name` in a method's per-adapter settings; a named error if the layer lacks it.
template <class S> const S & setting_of(const std::map<std::string, S> & settings, const std::string & name) {
  auto it = settings.find(name);
  if (it == settings.end()) fail(str("no adapter '", name, "' in this layer"));
  return it->second;
}

/// PyTorch's kaiming_uniform_(a=sqrt(5)) (nn.Linear's default init): U(+-1/sqrt(fan_in)), fan_in = shape[1] * ...
at::Tensor kaiming_uniform(const std::vector<int64_t> & shape);

/// W += sign * delta on a linear base (computed in float32, stored in the layer's format); with `safe`,
/// refuses a non-finite result naming the adapter. The merge/unmerge of additive methods.
void merge_delta(LinearBase & base, const at::Tensor & delta, double sign, bool safe, const std::string & adapter);

/// The tail of every merge into a linear base: store `weight` (and `bias` when defined) in the layer's
/// format; with `safe`, a non-finite weight or bias is refused, naming the adapter, before anything is stored.
void store_merged(LinearBase & base, const at::Tensor & weight, const at::Tensor & bias, bool safe,
                  const std::string & adapter);

/// Non-finite check used by safe merges; throws naming the layer and adapter.
void check_finite(const at::Tensor & t, const std::string & what);

}  // namespace peft
