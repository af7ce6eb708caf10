// Layer replication: a model whose decoder layer stack repeats ranges of another's layers, every copy
// sharing the original's weights (PEFT's replicate_layers, used by LoRA's layer_replication).
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "peft/model/causal-lm.h"

namespace peft {

/// [start, end) ranges of layer indices; the new stack is their concatenation ({{0, 4}, {2, 5}} on
/// five layers: 0 1 2 3 2 3 4).
using LayerMap = std::vector<std::pair<int64_t, int64_t>>;

/// A new model of the same architecture whose layer list (`(model.)*layers`, as PEFT looks for it)
/// follows `map`. Every layer of it is the original's layer object (Linear, norm, quantized, ...),
/// shared: nothing is copied, and each position gets its own attention/MLP modules, so an adapter
/// injected at one position is that position's alone. Each copy keeps its original's per-layer kind
/// (sliding window or not), as transformers' copied layer does; num_layers (and so the KV cache) is
/// the new count. `model` itself is left as it was. Throws peft::Error for a map outside the layers or
/// an architecture whose layers are not where PEFT looks (OPT's decoder.layers, GPT-2's transformer.h).
std::shared_ptr<CausalLM> replicate_layers(const std::shared_ptr<CausalLM> & model, const LayerMap & map);

}  // namespace peft
