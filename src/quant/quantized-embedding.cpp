// QuantizedEmbedding and the tied output layer's one quantized matrix (see quantized-embedding.h).
#include "peft/quant/quantized-embedding.h"

#include <ATen/core/grad_mode.h>  // at::NoGradGuard (ATen/ATen.h brings it in 1.13, not in 2.x)
#include <malloc.h>

#include "peft/error.h"
#include "peft/model/causal-lm.h"
#include "peft/nn/layers.h"
#include "quant-ops.h"

namespace peft::quant {

QuantizedEmbedding::QuantizedEmbedding(std::shared_ptr<QuantizedLinear> table, int64_t padding_idx_, at::ScalarType dtype)
    : Layer("QuantizedEmbedding"), padding_idx(padding_idx_), table_(std::move(table)), dtype_(dtype) {
  PEFT_CHECK(table_ != nullptr, "QuantizedEmbedding: no quantized table");
  PEFT_CHECK(std::dynamic_pointer_cast<Linear4bit>(table_) || std::dynamic_pointer_cast<Linear8bit>(table_),
             "QuantizedEmbedding: the table must be a Linear4bit or a Linear8bit");
  // the table's tensors are this layer's buffers too (the same tensors, not copies): a compiled graph reads
  // them live, as it reads the head's (its inputs are deduplicated by tensor)
  for (const auto & b : table_->named_buffers(false)) register_buffer(b.key(), b.value());
}

at::Tensor QuantizedEmbedding::forward(const at::Tensor & ids) {
  at::Tensor rows;
  if (auto l4 = std::dynamic_pointer_cast<Linear4bit>(table_)) {
    const Quant4 & q = l4->quantized();
    rows = ops::embedding_4bit(ids, q.packed, q.absmax_float(), q.code, q.shape[0], q.shape[1], q.blocksize);
  } else {
    const Quant8 & q = std::static_pointer_cast<Linear8bit>(table_)->quantized();
    rows = ops::embedding_int8(ids, q.CB, q.SCB);
  }
  return rows.scalar_type() == dtype_ ? rows : rows.to(dtype_);
}

LayerPtr QuantizedEmbedding::clone_layer() const {
  return std::make_shared<QuantizedEmbedding>(std::static_pointer_cast<QuantizedLinear>(table_->clone_layer()), padding_idx,
                                              dtype_);
}

namespace {

std::string path_of(const ModulePtr & root, const LayerPtr & layer) {
  for (const auto & m : named_modules(root)) {
    if (m.second.get() == layer.get()) return m.first;
  }
  return "";
}

}  // namespace

bool tie_quantized_embedding(CausalLM & model) {
  if (!model.config().tie_word_embeddings) return false;
  auto head = std::dynamic_pointer_cast<QuantizedLinear>(model.output_layer());
  if (!head) return false;
  const LayerPtr in = model.input_embedding();
  if (auto q = std::dynamic_pointer_cast<QuantizedEmbedding>(in)) return q->table() == head;
  auto emb = std::dynamic_pointer_cast<Embedding>(in);
  if (!emb) return false;  // (wrapped by an adapter: left as it is)
  PEFT_CHECK(emb->weight.size(0) == head->out_features() && emb->weight.size(1) == head->in_features(),
             "tied embedding ", emb->weight.sizes(), " and output layer [", head->out_features(), ", ",
             head->in_features(), "] differ in shape");
  const ModulePtr root = model.shared_from_this();
  const std::string path = path_of(root, in);
  PEFT_CHECK(!path.empty(), "internal: the input embedding is not in the model");
  const at::ScalarType dtype = emb->weight.scalar_type();
  replace_submodule(root, path, std::make_shared<QuantizedEmbedding>(head, emb->padding_idx, dtype));
  return true;
}

bool load_tied_quantized(CausalLM & model, std::map<std::string, at::Tensor> & tensors, const QuantOptions & opts,
                         const std::string & source) {
  if (!opts.enabled() || !model.config().tie_word_embeddings) return false;
  const ModulePtr root = model.shared_from_this();
  auto head = std::dynamic_pointer_cast<Linear>(model.output_layer());
  auto emb = std::dynamic_pointer_cast<Embedding>(model.input_embedding());
  if (!head || !emb) return false;
  const std::string head_path = path_of(root, head), emb_path = path_of(root, emb);
  if (head_path.empty() || emb_path.empty() || skipped(head_path, opts.skip)) return false;
  // the embedding's key (also without the leading "model.", as original OPT checkpoints write it)
  std::string key = emb_path + ".weight";
  if (!tensors.count(key) && key.rfind("model.", 0) == 0 && tensors.count(key.substr(6))) key = key.substr(6);
  // a head saved under its own key is not tied in the file: the loader's ordinary path quantizes it
  if (!tensors.count(key) || tensors.count(head_path + ".weight")) return false;
  const at::Tensor & W = tensors.at(key);
  PEFT_CHECK(W.is_floating_point(), source, ": tensor '", key, "' is ", W.scalar_type(), ", the model expects floating point");
  PEFT_CHECK(W.sizes() == emb->weight.sizes(), source, ": tensor '", key, "' has shape ", W.sizes(), ", the model expects ",
             emb->weight.sizes());
  PEFT_CHECK(!head->bias.defined(), source, ": a tied output layer with a bias cannot share the quantized embedding");
  LayerPtr layer;
  if (opts.format == Format::int8) {
    layer = std::make_shared<Linear8bit>(quantize_int8(W), at::Tensor());
  } else {
    layer = std::make_shared<Linear4bit>(quantize_4bit(W, opts.format, opts.blocksize, opts.double_quant), at::Tensor());
  }
  replace_submodule(root, head_path, layer);
  tensors.erase(key);  // (a mapped view: its pages go now)
  // the largest matrix of the model quantized in chunks on the kernel threads: what their temporaries left in
  // the threads' heaps goes back to the system (int8's float16 copies: ~1 GB for a 128k x 2048 table)
  ::malloc_trim(0);
  return tie_quantized_embedding(model);
}

std::string quantized_embedding_save_error(const std::string & path) {
  return str("'", path, "' is a quantized embedding (the tied output layer's quantized matrix: --quantize-skip without ",
             "lm_head on a model with tie_word_embeddings). transformers + bitsandbytes cannot load a quantized ",
             "embedding, so it is not saved: keep lm_head in float to save a quantized checkpoint (--quantize-skip lm_head, ",
             "the default), or write the model dequantized (peft merge --dtype float32)");
}

}  // namespace peft::quant
