// The explicit list of adapter methods. A method is: its PEFT name and parameter prefix, its config
// defaults and the parser of its typed options, which base layers it adapts, how it injects an adapter
// into a layer, and which of the architecture table's default target lists it uses.
// Adding a method = one folder src/tuners/<method>/ + one entry in registry.cpp (see docs/adding-a-tuner.md).
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "peft/model/architectures.h"
#include "peft/model/replicate.h"
#include "peft/nn/module.h"
#include "peft/tuners/config.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

class CausalLM;
class PromptEncoder;

struct TunerMethod {
  /// Its PEFT name, parameter prefix, config defaults and the parser of its typed options.
  MethodSchema schema;
  /// Can this method adapt this plain layer?
  bool (*supports)(const Layer & base);
  /// Add adapter `adapter` at module `path`: `target` is the plain layer or this method's TunerLayer.
  /// Returns the layer to put at `path` (the same TunerLayer when one existed).
  std::shared_ptr<TunerLayer> (*inject)(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target);
  /// Which of the architecture table's default target lists applies when the config gives none
  /// (nullptr: the method has no defaults).
  std::vector<std::string> DefaultTargets::*default_targets = nullptr;
  /// Fill other model-dependent defaults before injection (PEFT's _prepare_adapter_config); may be null.
  /// `defaults` is the model's row of the architecture table (nullptr for an unknown model_type).
  void (*complete)(AdapterConfig & cfg, const DefaultTargets * defaults) = nullptr;
  /// Create the model-level tensors shared by the adapter's layers (cfg.shared) from the plain layers
  /// it will adapt; may be null.
  void (*shared)(AdapterConfig & cfg, const std::vector<LayerPtr> & targets) = nullptr;
  /// Turn the adapter's tensors (checkpoint keys) into what its file stores, before save_pretrained
  /// writes them (AdaLoRA drops the rows its rank_pattern masks); may be null.
  void (*to_file)(const AdapterConfig & cfg, std::map<std::string, at::Tensor> & tensors) = nullptr;
  /// The inverse, on a file's tensors before load_adapter matches them to the model (VB-LoRA's top-k
  /// form back to logits); errors name `file`. May be null.
  void (*from_file)(const AdapterConfig & cfg, const std::string & file, std::map<std::string, at::Tensor> & tensors) = nullptr;
  /// When the model ties its output layer to the input embedding and the adapter adapts the embedding:
  /// the layer to put at the output layer (`target`: the plain layer or this method's TunerLayer) so
  /// that it follows `embedding`'s adapter `adapter` (trainable tokens: the same rows). Null: nothing to do.
  std::shared_ptr<TunerLayer> (*tied)(const std::string & adapter, const LayerPtr & target,
                                      const std::shared_ptr<TunerLayer> & embedding) = nullptr;
  /// The layer map of the adapter's layer_replication (PEFT's _prepare_model): before the adapter is
  /// injected, the model's layer stack is replaced by one replicated by it (replicate.h). Empty: none.
  /// May be null.
  LayerMap (*layer_map)(const AdapterConfig & cfg) = nullptr;
  /// The bytes of the tensors `inject` would create at module `path` (`plain`: its base layer), from the
  /// config alone: injection sums them over every target and refuses an adapter that cannot fit in the
  /// available memory before anything is allocated. Null: no estimate (sizes bounded by the layer's).
  double (*bytes)(const AdapterConfig & cfg, const std::string & path, const Layer & plain) = nullptr;
  /// The config fields that set those sizes (named in that error), e.g. {"r"}.
  std::vector<std::string> size_fields;
  /// Can it adapt transformers' Conv1D layers (GPT-2) as PEFT does (fan_in_fan_out)?
  bool conv1d = false;
  /// Prompt learning (prompt-learning.h): no layer is adapted (supports/inject are null); the adapter is
  /// this prompt encoder, made for `model` from the completed config.
  std::shared_ptr<PromptEncoder> (*prompt_encoder)(const AdapterConfig & cfg, const CausalLM & model) = nullptr;
};

/// `supports` of the methods that adapt Linear layers (dense or quantized) and nothing else.
bool supports_linear(const Layer & base);

/// For `inject`: the method's layer type L already at `target` (another adapter of the same method), or a
/// new L wrapping the plain layer.
template <class L>
std::shared_ptr<L> method_layer(const LayerPtr & target) {
  if (auto layer = std::dynamic_pointer_cast<L>(target)) return layer;
  return std::make_shared<L>(target);
}

/// The method for a peft_type; throws peft::Error listing the known ones.
const TunerMethod & tuner_method(const std::string & peft_type);
const std::vector<TunerMethod> & tuner_methods();
/// Refuse adapter `adapter` of method `method` on `targets` (path, base layer) when the bytes of all its
/// layers' tensors together (method.bytes, summed) exceed the available memory; the error names the
/// total, the available memory and the config fields that size it. Nothing is allocated.
void check_adapter_memory(const TunerMethod & method, const AdapterConfig & cfg, const std::string & adapter,
                          const std::vector<std::pair<std::string, const Layer *>> & targets);
/// The default target modules of `method` for `model_type` (empty when there are none).
std::vector<std::string> default_targets(const TunerMethod & method, const std::string & model_type);

}  // namespace peft
