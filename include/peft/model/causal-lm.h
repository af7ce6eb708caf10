// CausalLM: the interface every architecture implements, the KV cache, and loading a Hugging Face
// checkpoint folder (config.json + model.safetensors or a sharded index) into one.
// B = batch, S = new tokens this call, L = key/value length (cache capacity, or S without a cache),
// V = vocab, Hkv = key/value heads, Dh = head dim.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "peft/model/config.h"
#include "peft/nn/module.h"
#include "peft/quant/quantize.h"

namespace peft {

/// A static key/value cache: per layer K and V of shape (B, Hkv, capacity, Dh). Tokens are written at
/// the slots named by ForwardInput::cache_position; shapes never change, so a compiled decode step
/// replays one graph for every token.
struct KVCache {
  std::vector<at::Tensor> k, v;
  /// Leading slots that hold a prefix written before any input (prompt learning's virtual tokens:
  /// PeftModel::fill_virtual_tokens writes them and sets this); an input's tokens go in the slots after
  /// them (validate() refuses a cache_position inside the prefix).
  int64_t prefix_length = 0;
  int64_t capacity() const { return k.empty() ? 0 : k[0].size(2); }
  static KVCache allocate(const ModelConfig & cfg, int64_t batch, int64_t capacity, at::TensorOptions opts);
};

struct ForwardInput {
  at::Tensor input_ids;       // (B, S) int64
  at::Tensor inputs_embeds;   // (B, S, D) instead of input_ids: the token embeddings themselves (transformers'
                              // inputs_embeds; prompt learning puts its virtual tokens in front this way)
  at::Tensor attention_mask;  // (B, L) 1 = real token, 0 = padding/empty slot; undefined = all ones
  at::Tensor position_ids;    // (B, S) int64; undefined = derived from attention_mask and cache_position
  at::Tensor cache_position;  // (S) int64 slots written in the cache; undefined = 0..S-1
  at::Tensor segment_ids;     // (B, S) int64 packed documents: a token attends only to its own segment
                              // (no KV cache); undefined = one segment per row
  KVCache * cache = nullptr;
  /// Return the final hidden states (B, S, D) (after the last norm) instead of logits; CausalLM::logits()
  /// maps them, a chunk at a time where the full (B, S, V) would be too big (the chunked loss).
  bool hidden_states = false;
};

/// Rows of a batch (input_ids or inputs_embeds).
inline int64_t batch_size(const ForwardInput & in) {
  return in.input_ids.defined() ? in.input_ids.size(0) : in.inputs_embeds.size(0);
}

/// A forward as a value: the eager model, a PeftModel or a compiled graph; generation and training
/// take one, so each works with all of them.
using LogitsFn = std::function<at::Tensor(const ForwardInput &)>;

/// What an architecture's forward is handed after the shared preprocessing.
struct AttentionContext {
  at::Tensor mask;            // (B, 1, S, L) bool: true = may attend
  at::Tensor window_mask;     // the same within the sliding window, when only some layers slide (else undefined)
  const at::Tensor & mask_for(bool sliding_layer) const { return sliding_layer && window_mask.defined() ? window_mask : mask; }
  at::Tensor position_ids;    // (B, S)
  at::Tensor cache_position;  // (S)
  KVCache * cache = nullptr;
};

/// What a decoder layer reads besides its input: the attention context and, with rotary positions, the
/// layer's cos/sin tables (undefined otherwise).
struct LayerArgs {
  AttentionContext ctx;
  at::Tensor cos, sin;
};
using LayerFn = std::function<at::Tensor(const at::Tensor & h, const LayerArgs & args)>;

class CausalLM : public Module {
 public:
  explicit CausalLM(ModelConfig cfg) : config_(std::move(cfg)) {}
  /// dtype and device of the weights (for caches and inputs).
  at::TensorOptions options() const;
  /// Logits (B, S, V) (or in.hidden_states: the final hidden states): validate(in), then forward_unchecked(in).
  at::Tensor forward(const ForwardInput & in);
  /// Check ids (range, dtype), mask and cache shapes; throws peft::Error naming the problem.
  void validate(const ForwardInput & in) const;
  /// The computation alone, without data-dependent checks (what the compile layer captures).
  at::Tensor forward_unchecked(const ForwardInput & in);
  const ModelConfig & config() const { return config_; }
  /// Names of parameters that are tied to another parameter and absent from checkpoints.
  std::vector<std::string> tied_parameter_names() const;
  /// With tie_word_embeddings: make the output layer use the input embedding's weight (through any
  /// adapter wrapping either). Called after loading and after layers are replaced.
  void tie_weights();
  /// Gradient checkpointing (transformers' gradient_checkpointing_enable): in training mode with autograd
  /// on, each decoder layer keeps only its input and runs again in the backward pass (peft/model/checkpoint.h).
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  bool gradient_checkpointing() const { return gradient_checkpointing_; }
  /// Stop tying: the output layer keeps its own weight (config.json's tie_word_embeddings becomes false).
  void untie_weights() { config_.tie_word_embeddings = false; }
  /// The output head on final hidden states (..., D) -> logits (..., V): output_layer() and the config's
  /// final_logit_softcapping (Gemma 2).
  at::Tensor logits(const at::Tensor & hidden);
  /// The input's token embeddings as the model takes them (input_embedding()'s output; Gemma 3's scaled).
  at::Tensor embed(const at::Tensor & input_ids);
  /// The token embedding and the output layer (as they stand now: possibly adapter wrappers).
  virtual LayerPtr input_embedding() const = 0;
  virtual LayerPtr output_layer() const = 0;

 protected:
  /// The decoder: `embeds` (the input embedding's output for the ids, or ForwardInput::inputs_embeds,
  /// (B, S, D)) to the final hidden states (B, S, D), after the last norm; logits() is the head.
  virtual at::Tensor forward_hidden(const at::Tensor & embeds, const AttentionContext & ctx) = 0;
  /// One decoder layer, `layer(h, args)`: checkpointed when gradient checkpointing is on, the model trains
  /// and autograd records (`layer` then runs again in the backward pass: it must capture by value, and
  /// read the per-call tensors from `args`: a captured graph hands it that call's).
  at::Tensor decoder_layer(const at::Tensor & h, const LayerArgs & args, LayerFn layer);
  ModelConfig config_;
  bool gradient_checkpointing_ = false;
};

/// Build an architecture from its config (random-free: parameters are uninitialised).
std::shared_ptr<CausalLM> build_model(const ModelConfig & cfg);

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // float weights: at::kFloat or at::kBFloat16 (converted on load)
  quant::QuantOptions quantize;       // quantize the Linear layers at load (transformers' load_in_4bit/8bit)
};

/// Load a Hugging Face checkpoint folder. A checkpoint saved quantized by transformers + bitsandbytes
/// (config.json's quantization_config) loads with its quantized layers as they are; `o.quantize`
/// quantizes a float one. Missing or unexpected keys are errors naming the keys (tied weights excepted).
std::shared_ptr<CausalLM> load_model(const std::string & dir, const LoadOptions & o);
std::shared_ptr<CausalLM> load_model(const std::string & dir, at::ScalarType dtype = at::kFloat);

/// Load a state dict into the model's parameters by name (shapes checked). Used by load_model.
void load_parameters(CausalLM & model, const std::map<std::string, at::Tensor> & tensors, const std::string & source);

/// Fill every parameter with seeded random values (benchmarks and tests on synthetic models).
void init_random(CausalLM & model, uint64_t seed, double std = 0.02);

/// Write `model` as a checkpoint folder (config.json, model.safetensors, and `extra_files` name ->
/// content), the folder written whole (FolderWriter). Quantized layers are written in bitsandbytes' key
/// layout (config_json should then carry quantization_config).
void save_model(CausalLM & model, const std::string & dir, const nlohmann::json & config_json,
                const std::map<std::string, std::string> & extra_files = {});

}  // namespace peft
