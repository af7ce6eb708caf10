// PeftModel: a CausalLM with adapters injected, and every way of controlling them, with upstream
// PEFT's names and semantics (§3): add/load/set/delete adapters, disable scope, merge/unmerge,
// merge_and_unload/unload, modules_to_save, PEFT-compatible save/load.
//
// Example:
//   auto base = peft::load_model("models/kjv-llama");
//   auto cfg = peft::AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 8}, {"target_modules", {"q_proj", "v_proj"}}}, "config");
//   peft::PeftModel model(base, cfg);          // adapter "default", active and trainable
//   at::Tensor logits = model.forward({ids});
//   model.save_pretrained("out/adapter");
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "peft/model/causal-lm.h"
#include "peft/peft-model/peft-input.h"
#include "peft/tuners/adapter-state.h"
#include "peft/tuners/config.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

class FolderWriter;
class PromptEncoder;
struct TunerMethod;

class PeftModel {
 public:
  /// get_peft_model: inject `cfg` as adapter `adapter` (active, trainable unless inference_mode).
  PeftModel(std::shared_ptr<CausalLM> model, const AdapterConfig & cfg, const std::string & adapter = "default");
  /// A model without adapters yet (add_adapter / load_adapter next).
  explicit PeftModel(std::shared_ptr<CausalLM> model);
  /// Load a PEFT adapter folder onto `model` (frozen unless is_trainable).
  static std::shared_ptr<PeftModel> from_pretrained(std::shared_ptr<CausalLM> model, const std::string & dir,
                                                    const std::string & adapter = "default", bool is_trainable = false);

  // ---- adapters ----
  /// Inject another adapter (same peft_type); it is neither active nor trainable until set_adapter.
  void add_adapter(const std::string & name, const AdapterConfig & cfg);
  /// Read a PEFT adapter folder into a new adapter `name`. On any error the model is left unchanged.
  /// The file may hold only this adapter's tensors (and, with a bias mode, biases): a key naming any
  /// other base-model weight is an error unless `allow_base_weights`.
  void load_adapter(const std::string & dir, const std::string & name, bool is_trainable = false,
                    bool allow_base_weights = false);
  void set_adapter(const std::vector<std::string> & names);
  void set_adapter(const std::string & name) { set_adapter(std::vector<std::string>{name}); }
  const std::vector<std::string> & active_adapters() const { return state_->active(); }
  std::vector<std::string> adapter_names() const;
  void delete_adapter(const std::string & name);
  const AdapterConfig & adapter_config(const std::string & name) const;
  /// Change one field of adapter `name`'s config (AdapterConfig::set_field: parsed again). The layers are
  /// not rebuilt: for fields that record what training decided (AdaLoRA's rank_pattern), which
  /// save_pretrained then writes.
  void set_config_field(const std::string & name, const std::string & key, const nlohmann::json & value);

  /// RAII scope in which every adapter layer runs its base layer (PEFT's `with disable_adapter()`).
  class DisableGuard {
   public:
    explicit DisableGuard(PeftModel & m);
    ~DisableGuard();
    DisableGuard(const DisableGuard &) = delete;
    DisableGuard & operator=(const DisableGuard &) = delete;

   private:
    PeftModel & m_;
    bool was_disabled_;
  };
  DisableGuard disable_adapter() { return DisableGuard(*this); }
  void set_adapters_disabled(bool disabled);
  bool adapters_disabled() const { return state_->disabled(); }

  /// Replace the weights of adapter `name` in place by those of the PEFT folder `dir` (same method,
  /// same targets and shapes; scales follow the new config). Tensors keep their identity, so a compiled
  /// model switches without recompiling (upstream's hotswap_adapter). On error nothing changes.
  void hotswap_adapter(const std::string & dir, const std::string & name);
  /// Zero-pad every LoRA adapter to `rank` (PEFT's prepare_model_for_compiled_hotswap), so adapters of
  /// any rank up to it can be hot-swapped in without recompiling. Call before the first compiled run.
  void prepare_for_hotswap(int64_t rank);
  /// LoRA: set adapter `name`'s scale to factor * alpha / r (PEFT's set_scale).
  void set_scale(const std::string & name, double factor);

  // ---- merging ----
  /// Fold adapters (default: the active ones) into the base weights. safe_merge (the default here;
  /// PEFT's default is false): refuse non-finite results, restoring the weights bit for bit.
  void merge_adapter(const std::vector<std::string> & names = {}, bool safe_merge = true);
  void unmerge_adapter();
  bool merged() const;
  /// Refused when the layers are replicated (layer_replication): the copies share one base weight.
  /// Merge, then replace every adapter layer by its base layer; returns the plain model.
  /// This PeftModel holds no adapters afterwards.
  std::shared_ptr<CausalLM> merge_and_unload(bool safe_merge = true, const std::vector<std::string> & names = {});
  /// Remove every adapter layer without merging; returns the plain model.
  std::shared_ptr<CausalLM> unload();

  // ---- files ----
  /// Write PEFT adapter folders: "default" at `dir`, every other adapter in `dir/<name>`. The folder is
  /// written whole and swapped into place (FolderWriter: readers see the old or the new one; other
  /// files already there are kept). Refuses non-finite tensors, naming them, unless `allow_nonfinite`.
  void save_pretrained(const std::string & dir, const std::vector<std::string> & selected = {},
                       bool allow_nonfinite = false) const;
  /// The same files into a folder being written (a checkpoint); the caller commits it.
  void save_pretrained(FolderWriter & folder, const std::vector<std::string> & selected = {},
                       bool allow_nonfinite = false) const;
  /// The tensors of `adapter` under PEFT's checkpoint keys: what save_pretrained writes, after the
  /// method's to_file (AdaLoRA's file keeps only the rows its rank_pattern keeps).
  std::map<std::string, at::Tensor> adapter_state_dict(const std::string & adapter) const;

  // ---- running and training ----
  /// Logits; with in.adapter_names set, a mixed-adapter batch (row b uses adapter_names[b],
  /// kBaseAdapter = no adapter; eval mode, nothing merged; the methods whose layers route rows). With an
  /// active prompt-learning adapter (prompt tuning, P-tuning) the logits cover its virtual tokens first
  /// (B, num_virtual_tokens() + S, V), as PEFT's; with a KV cache, only the tokens given.
  at::Tensor forward(const PeftInput & in);
  at::Tensor forward(const ForwardInput & in) { return forward(PeftInput(in)); }
  /// The model's input checks and prompt learning's (forward() runs them).
  void validate(const PeftInput & in) const;
  /// forward() without the checks: what the compile layer captures (prompt learning's virtual tokens
  /// included; a mixed batch's rows routed by in.adapter_rows).
  at::Tensor forward_unchecked(const PeftInput & in);

  // ---- prompt learning (prompt-learning.h) ----
  /// The active prompt-learning adapter's num_virtual_tokens (0 when none is active or adapters are disabled).
  int64_t num_virtual_tokens() const;
  /// Positions the logits have before the input's: num_virtual_tokens() for prompt tuning and P-tuning
  /// (the virtual tokens are inputs), 0 for prefix tuning (only keys and values).
  int64_t virtual_token_logits() const;
  /// Write the active prompt-learning adapter's virtual tokens into slots 0..num_virtual_tokens()-1 of a
  /// new KV cache (every row); forwards with that cache then give the tokens' slots after them and an
  /// attention_mask with ones for them. generate() does this (GenerationConfig::fill_virtual_tokens).
  void fill_virtual_tokens(KVCache & cache);
  /// Adapter `name`'s prompt encoder (its parameters have PEFT's names).
  std::shared_ptr<PromptEncoder> prompt_encoder(const std::string & name) const;
  /// The routing of a mixed batch: (A, B) float, A = every adapter in adapter_index() order. Refuses
  /// a row whose adapter cannot run in a mixed batch (a DoRA adapter, as PEFT). Which adapters those
  /// are is worked out once per version() (not per call: a server calls it every decode step).
  at::Tensor mixed_rows(const std::vector<std::string> & names, int64_t batch) const;
  /// Adapter name -> row of mixed_rows().
  std::map<std::string, int64_t> adapter_index() const;
  void train(bool on = true) { model_->train(on); }
  bool is_training() const { return model_->is_training(); }
  std::vector<at::Tensor> trainable_parameters() const;
  /// "trainable params: N || all params: M || trainable%: P"
  std::string trainable_summary() const;

  /// Moves on every change of what a forward computes (through this model or its layers); the
  /// compile layer's cheap staleness check.
  uint64_t version() const { return state_->version(); }
  /// Everything adapters change in the computation, as a value (compile cache key).
  const AdapterStateKey & state_key() const;
  /// Normalise state before a forward: a disabled model with merged adapters unmerges (as PEFT does).
  void prepare_forward();

  /// The model the adapters are in: the one given, or (after an adapter with layer_replication) a new
  /// one whose replicated layer stack shares every weight with it.
  CausalLM & base_model() { return *model_; }
  std::shared_ptr<CausalLM> model_ptr() { return model_; }
  /// Adapter layers by module path. Their public mutators move version() too.
  const std::vector<std::pair<std::string, std::shared_ptr<TunerLayer>>> & tuner_layers() const { return layers_; }
  /// Mark a state change made from outside (e.g. in-place weight hot-swap does NOT need this).
  void touch() { state_->touch(); }

 private:
  /// Returns the layers it wrapped (path, original) so a failed load can unwrap them again.
  std::vector<std::pair<std::string, LayerPtr>> inject(const std::string & name, const AdapterConfig & cfg);
  std::vector<std::pair<std::string, LayerPtr>> inject_into_layers(const std::string & name, AdapterConfig cfg,
                                                                   const TunerMethod & method);
  std::string path_of(const LayerPtr & layer) const;
  void refresh_layers();
  /// Put each adapter layer's replacement in its place, forget every adapter; the model is plain again.
  std::shared_ptr<CausalLM> release();
  void refresh_trainable();
  std::string checkpoint_key(const std::string & path, const std::string & adapter) const;
  /// A prompt-learning adapter's modules_to_save copies under PEFT's file keys ("base_model.<module>.<tensor>").
  std::map<std::string, at::Tensor> prompt_copies(const std::string & adapter) const;
  void add_prompt_encoder(const std::string & name, AdapterConfig cfg, const TunerMethod & method);
  void remove_prompt_encoder(const std::string & name);
  std::shared_ptr<PromptEncoder> active_prompt_encoder() const;

  /// layer_replication: put the model as it was given back (a failed first injection of `name`).
  void undo_replication(const std::string & name);

  std::shared_ptr<CausalLM> model_;
  // layer_replication (LoRA): the model as it was given, before adapter replicated_by_'s config replaced
  // its layer stack (replicate.h); null when the stack is the original one
  std::shared_ptr<CausalLM> unreplicated_;
  std::string replicated_by_;
  std::map<std::string, AdapterConfig> configs_;
  std::map<std::string, uint64_t> adapter_ids_;  // unique per injection: a reload is a new computation
  std::shared_ptr<AdapterState> state_ = std::make_shared<AdapterState>();  // read by every adapter layer
  std::vector<std::pair<std::string, std::shared_ptr<TunerLayer>>> layers_;
  // prompt-learning adapters: their encoders, children of prompt_holder_ ("prompt_encoder" in the model)
  std::map<std::string, std::shared_ptr<PromptEncoder>> encoders_;
  std::shared_ptr<torch::nn::Module> prompt_holder_;
  mutable uint64_t key_version_ = 0;
  mutable AdapterStateKey key_;
  // mixed_rows: the adapters that cannot run in a mixed batch -> their first such layer ("<layer> at
  // '<path>'"), as of version() mixed_version_ (0: not worked out yet)
  mutable uint64_t mixed_version_ = 0;
  mutable std::map<std::string, std::string> mixed_refused_;
};

/// Check an adapter name: non-empty, no path separators or "..", not kBaseAdapter. Throws peft::Error.
void check_adapter_name(const std::string & name);

}  // namespace peft
