// export_model_gguf: a Hugging Face model folder -> a llama.cpp GGUF model. See
// include/peft/model/export-gguf-model.h.
//
// What llama.cpp expects (src/models/<arch>.cpp load_arch_hparams / load_arch_tensors, llama-arch.cpp's
// names, and what convert_hf_to_gguf.py writes):
//  - every tensor in the file is one the architecture loads (llama.cpp refuses a file with others), the
//    output projection omitted when the model ties it to token_embd;
//  - hyper-parameters under "<arch>.": context_length, embedding_length, block_count, feed_forward_length,
//    attention.head_count(_kv), rope.*, the norm's epsilon;
//  - Llama family (llama, mistral, qwen2, qwen3): token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v,
//    attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}[.weight|.bias], Qwen3's attn_{q,k}_norm,
//    output_norm, output. Llama / Mistral have the rows of q_proj and k_proj (and their biases) permuted
//    per head from HF's rotate-half layout to the interleaved pairs llama.cpp's rope rotates (Qwen's rope
//    is NeoX style: no permutation); Llama 3 rope scaling is a rope_freqs tensor of divisors;
//  - GPT-2: token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up,
//    ffn_down}.{weight,bias} (Conv1D weights (in, out) transposed), output_norm;
//  - GPT-NeoX: as GPT-2 without positions (partial rotary), the fused query_key_value's rows regrouped from
//    per head (q, k, v of head 0, then head 1, ...) to all q, all k, all v; use_parallel_residual;
//  - Phi-3: the Llama names with attn_qkv (qkv_proj as it is) and ffn_up holding gate_up_proj;
//  - Gemma 2 / 3: the Llama names plus post_attention_norm and post_ffw_norm, each norm stored as 1 + w.
// One row per model_type in kLayouts: its checks, hyper-parameters and tensor list.
#include "peft/model/export-gguf-model.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/ggml-quants.h"
#include "peft/io/gguf-tokenizer.h"
#include "peft/io/safetensors.h"
#include "peft/model/architectures.h"
#include "peft/model/config.h"
#include "peft/util/text.h"

namespace peft {

namespace {

// ---- the checkpoint ----

// The safetensors files of a checkpoint folder, opened (memory-mapped), and which file holds each tensor.
struct Checkpoint {
  std::vector<std::shared_ptr<SafeTensorsFile>> files;
  std::map<std::string, std::shared_ptr<SafeTensorsFile>> where;

  explicit Checkpoint(const std::string & dir) {
    const std::string index = dir + "/model.safetensors.index.json";
    std::vector<std::string> names;
    if (!real_path(index).empty()) {
      const auto j = read_json_file(index);
      PEFT_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
                 ": no \"weight_map\" object");
      std::set<std::string> shards;
      for (const auto & kv : j["weight_map"].items()) {
        PEFT_CHECK(kv.value().is_string() && kv.value().get<std::string>().find('/') == std::string::npos, index,
                   ": weight_map['", kv.key(), "'] is not a file name in the folder");
        shards.insert(kv.value().get<std::string>());
      }
      names.assign(shards.begin(), shards.end());
    } else {
      names.push_back("model.safetensors");
    }
    for (const auto & n : names) {
      auto f = std::make_shared<SafeTensorsFile>(dir + "/" + n);
      for (const auto & k : f->keys()) {
        PEFT_CHECK(!where.count(k), dir, ": tensor '", k, "' is in two files");
        where[k] = f;
      }
      files.push_back(f);
    }
  }
  bool has(const std::string & k) const { return where.count(k) != 0; }
  std::vector<int64_t> shape(const std::string & k) const { return where.at(k)->entry(k).shape; }
  // read with pread, not through SafeTensorsFile's mapping: pages of a memory-mapped file read once stay
  // resident, so a model's whole size would show up in the exporter's memory
  at::Tensor get(const std::string & k) const {
    const SafeTensorsFile & f = *where.at(k);
    const SafeTensorsFile::Entry & e = f.entry(k);
    const int fd = ::open(f.path().c_str(), O_RDONLY | O_CLOEXEC);
    PEFT_CHECK(fd >= 0, "cannot open '", f.path(), "': ", std::strerror(errno));
    uint64_t header = 0;
    at::Tensor t = at::empty(e.shape, e.dtype);
    const size_t n = e.end - e.begin;
    bool ok = ::pread(fd, &header, 8, 0) == 8 && static_cast<size_t>(t.nbytes()) == n;
    for (size_t done = 0; ok && done < n;) {
      const ssize_t r = ::pread(fd, static_cast<char *>(t.data_ptr()) + done, n - done,
                                static_cast<off_t>(8 + header + e.begin + done));
      ok = r > 0;
      done += ok ? static_cast<size_t>(r) : 0;
    }
    ::close(fd);
    PEFT_CHECK(ok, "cannot read tensor '", k, "' from '", f.path(), "'");
    return t;
  }
};

// convert_hf_to_gguf.py's LlamaModel.permute: within each head, rows (t * hd/2 + k) -> (2k + t)
at::Tensor permute_heads(const at::Tensor & w, int64_t heads) {
  const int64_t rows = w.size(0);
  PEFT_CHECK(rows % (2 * heads) == 0, "q/k projection: ", rows, " rows do not split into ", heads, " heads of pairs");
  std::vector<int64_t> shape = {heads, 2, rows / heads / 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// transformers' _compute_llama3_parameters as llama.cpp takes it: one divisor per rotary frequency
// (rope_freqs.weight: llama.cpp divides each frequency by its entry)
at::Tensor llama3_rope_factors(const ModelConfig & mc) {
  const RopeScaling & rs = mc.rope_scaling;
  const int64_t half = mc.rotary_dim() / 2;
  const double old = static_cast<double>(rs.original_max_position_embeddings);
  const double lo_wavelen = old / rs.low_freq_factor, hi_wavelen = old / rs.high_freq_factor;
  at::Tensor out = at::empty({half}, at::kFloat);
  for (int64_t i = 0; i < half; ++i) {
    const double freq = 1.0 / std::pow(mc.rope_theta, static_cast<double>(2 * i) / static_cast<double>(mc.rotary_dim()));
    const double wavelen = 2 * M_PI / freq;
    double f = 1.0;
    if (wavelen > lo_wavelen) {
      f = rs.factor;
    } else if (wavelen >= hi_wavelen) {
      const double smooth = (old / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      f = 1.0 / ((1 - smooth) / rs.factor + smooth);
    }
    out[i] = static_cast<float>(f);
  }
  return out;
}

// ---- the plan: the file's tensors ----

// The tensors of the file in order and the checkpoint tensors they use; 2-D weights are stored as the
// requested type (F16 where rows are not whole blocks), 1-D ones (norms, biases) F32.
struct Plan {
  std::shared_ptr<Checkpoint> ckpt;
  std::string where;  // for errors: the checkpoint
  GgufWriter * w = nullptr;
  GgmlType type = GgmlType::F32;
  std::set<std::string> used;
  size_t kept_f16 = 0;
  std::vector<int64_t> embedding_shape;  // token_embd's, checked against config.json

  bool has(const std::string & hf) const { return ckpt->has(hf); }
  std::vector<int64_t> shape(const std::string & hf) const {
    PEFT_CHECK(ckpt->has(hf), where, ": missing tensor '", hf, "'");
    return ckpt->shape(hf);
  }
  // `gguf` from the checkpoint tensor `hf`, reshaped by `fn` (which keeps the element count)
  void add(const std::string & gguf, const std::string & hf, std::vector<int64_t> out_shape = {},
           std::function<at::Tensor(const at::Tensor &)> fn = nullptr) {
    const std::vector<int64_t> in = shape(hf);
    used.insert(hf);
    if (gguf == "token_embd.weight") embedding_shape = in;
    if (out_shape.empty()) out_shape = in;
    GgmlType t = out_shape.size() == 2 ? type : GgmlType::F32;
    if (out_shape.back() % ggml_block_values(t) != 0) {
      t = GgmlType::F16;
      ++kept_f16;
    }
    auto c = ckpt;
    w->add_tensor(gguf, out_shape, t, [c, hf, fn]() {
      at::Tensor x = c->get(hf).to(at::kFloat);
      return fn ? fn(x) : x;
    });
  }
  void add_if(const std::string & gguf, const std::string & hf) {
    if (has(hf)) add(gguf, hf);
  }
  // a tied model's checkpoint may carry the head as a copy of the embedding; it must be that copy
  void check_tied_copy(const std::string & head, const std::string & embedding, const std::string & src) {
    if (!has(head)) return;
    PEFT_CHECK(at::equal(ckpt->get(head), ckpt->get(embedding)), where, ": ", head, " differs from ", embedding,
               ", but ", src, " says tie_word_embeddings: set it to false to keep a separate head");
    used.insert(head);
  }
};

// ---- the architectures ----

struct ExportContext {
  const ModelConfig & mc;
  const std::string & src;   // config.json, for errors
  const std::string & arch;  // llama.cpp's architecture name
  GgufModelExportResult & res;
};

// the hyper-parameters every architecture here has
void add_common_hparams(GgufWriter & w, const ExportContext & x) {
  const std::string a = x.arch + ".";
  const ModelConfig & mc = x.mc;
  w.add_uint32(a + "vocab_size", static_cast<uint32_t>(mc.vocab_size));
  w.add_uint32(a + "context_length", static_cast<uint32_t>(mc.max_position_embeddings));
  w.add_uint32(a + "embedding_length", static_cast<uint32_t>(mc.hidden_size));
  w.add_uint32(a + "block_count", static_cast<uint32_t>(mc.num_layers));
  w.add_uint32(a + "feed_forward_length", static_cast<uint32_t>(mc.intermediate_size));
  w.add_uint32(a + "attention.head_count", static_cast<uint32_t>(mc.num_heads));
  w.add_uint32(a + "attention.head_count_kv", static_cast<uint32_t>(mc.num_kv_heads));
}

void check_act(const ExportContext & x, std::initializer_list<const char *> acts) {
  std::string names;
  for (const char * a : acts) {
    if (x.mc.hidden_act == a) return;
    names += (names.empty() ? "" : " or ") + std::string(a);
  }
  fail(str(x.src, ": hidden_act '", x.mc.hidden_act, "': llama.cpp's ", x.arch, " graph uses ", names));
}

void check_rope(const ExportContext & x, bool llama3_ok) {
  const std::string & rt = x.mc.rope_scaling.type;
  PEFT_CHECK(rt == "default" || rt == "linear" || (llama3_ok && rt == "llama3"), x.src, ": rope_scaling type '", rt,
             "' is not exported for model_type '", x.mc.model_type, "' (supported: none, linear",
             llama3_ok ? ", llama3" : "", ")");
}

void add_rope(GgufWriter & w, const ExportContext & x) {
  const std::string a = x.arch + ".";
  w.add_float32(a + "rope.freq_base", static_cast<float>(x.mc.rope_theta));
  w.add_uint32(a + "rope.dimension_count", static_cast<uint32_t>(x.mc.rotary_dim()));
  if (x.mc.rope_scaling.type == "linear") {
    w.add_string(a + "rope.scaling.type", "linear");
    w.add_float32(a + "rope.scaling.factor", static_cast<float>(x.mc.rope_scaling.factor));
  }
}

// -- Llama family: llama, mistral (same layout), qwen2, qwen3 --

struct LlamaFamily {
  bool permute_qk;  // Llama's rope layout (see above)
  bool qk_norm;     // blk.N.attn_{q,k}_norm (Qwen3)
  bool o_bias;      // attn_output.bias allowed
  bool mlp_bias;    // ffn_{gate,up,down}.bias allowed
  bool square_q;    // llama.cpp sizes attn_q hidden x hidden (Qwen2: head_dim * heads must be hidden)
};

const LlamaFamily * llama_family(const std::string & model_type) {
  static const LlamaFamily llama = {true, false, true, true, false};
  static const LlamaFamily qwen2 = {false, false, false, false, true};
  static const LlamaFamily qwen3 = {false, true, false, false, false};
  if (model_type == "llama" || model_type == "mistral") return &llama;
  if (model_type == "qwen2") return &qwen2;
  if (model_type == "qwen3") return &qwen3;
  return nullptr;
}

// a decoder layer's tensors: Hugging Face's name after "model.layers.N." -> llama.cpp's after "blk.N."
const std::pair<const char *, const char *> kLlamaLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.gate_proj.bias", "ffn_gate.bias"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.up_proj.bias", "ffn_up.bias"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.down_proj.bias", "ffn_down.bias"},
};

bool llama_allows(const LlamaFamily & l, const std::string & hf) {
  if (hf.find("q_norm") != std::string::npos || hf.find("k_norm") != std::string::npos) return l.qk_norm;
  if (hf == "self_attn.o_proj.bias") return l.o_bias;
  if (starts_with(hf, "mlp.") && ends_with(hf, ".bias")) return l.mlp_bias;
  return true;
}

void llama_check(const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  const LlamaFamily & l = *llama_family(mc.model_type);
  check_act(x, {"silu"});
  check_rope(x, /*llama3_ok=*/mc.model_type == "llama" || mc.model_type == "mistral");
  PEFT_CHECK(mc.partial_rotary_factor == 1.0, x.src, ": partial_rotary_factor ", mc.partial_rotary_factor,
             ": llama.cpp's ", x.arch, " graph rotates whole heads");
  PEFT_CHECK(!mc.fused_projections, x.src, ": fused qkv_proj / gate_up_proj are not this layout");
  PEFT_CHECK(l.qk_norm == mc.qk_norm, x.src, ": model_type '", mc.model_type, "' with", mc.qk_norm ? "" : "out",
             " q/k norms: not llama.cpp's ", x.arch);
  PEFT_CHECK(!l.square_q || mc.head_dim * mc.num_heads == mc.hidden_size, x.src, ": head_dim ", mc.head_dim, " x ",
             mc.num_heads, " heads is not hidden_size ", mc.hidden_size, ": llama.cpp's ", x.arch,
             " takes square q projections");
  if (mc.sliding_window > 0 && mc.sliding_window < mc.max_position_embeddings) {
    PEFT_CHECK(l.permute_qk, x.src, ": a sliding window of ", mc.sliding_window,
               " tokens (use_sliding_window): llama.cpp's ", x.arch, " attends to every position");
    x.res.notes.push_back(str("sliding_window ", mc.sliding_window, ": llama.cpp's llama graph attends to every "
                              "position, so generations longer than ", mc.sliding_window, " tokens differ"));
  }
}

void llama_hparams(GgufWriter & w, const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  add_common_hparams(w, x);
  if (mc.head_dim * mc.num_heads != mc.hidden_size) {
    w.add_uint32(x.arch + ".attention.key_length", static_cast<uint32_t>(mc.head_dim));
    w.add_uint32(x.arch + ".attention.value_length", static_cast<uint32_t>(mc.head_dim));
  }
  add_rope(w, x);
  w.add_float32(x.arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(mc.rms_norm_eps));
}

void llama_tensors(Plan & p, const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  const LlamaFamily & l = *llama_family(mc.model_type);
  p.add("token_embd.weight", "model.embed_tokens.weight");
  if (mc.rope_scaling.type == "llama3") p.w->add_tensor("rope_freqs.weight", llama3_rope_factors(mc), GgmlType::F32);
  for (int64_t i = 0; i < mc.num_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".", blk = "blk." + std::to_string(i) + ".";
    for (const auto & n : kLlamaLayerNames) {
      if (!p.has(hf + n.first)) continue;
      PEFT_CHECK(llama_allows(l, n.first), p.where, ": tensor '", hf + n.first, "' has no place in llama.cpp's ", x.arch,
                 " model");
      int64_t heads = 0;
      if (l.permute_qk && starts_with(n.first, "self_attn.q_proj")) heads = mc.num_heads;
      if (l.permute_qk && starts_with(n.first, "self_attn.k_proj")) heads = mc.num_kv_heads;
      if (heads > 0) {
        p.add(blk + n.second, hf + n.first, {}, [heads](const at::Tensor & t) { return permute_heads(t, heads); });
      } else {
        p.add(blk + n.second, hf + n.first);
      }
    }
  }
  p.add("output_norm.weight", "model.norm.weight");
  if (!mc.tie_word_embeddings) p.add("output.weight", "lm_head.weight");
  else p.check_tied_copy("lm_head.weight", "model.embed_tokens.weight", x.src);
}

// -- GPT-2 --

// ggml's GELU is the tanh form, looked up in an f16 table on CPU: close to transformers', not equal
void note_gelu(const ExportContext & x) {
  check_act(x, {"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu"});
  x.res.notes.push_back(str("hidden_act '", x.mc.hidden_act, "': llama.cpp computes GELU in its tanh form through an "
                            "f16 table, so its logits differ slightly from peft's"));
}

void gpt2_check(const ExportContext & x) {
  note_gelu(x);
  PEFT_CHECK(x.mc.num_kv_heads == x.mc.num_heads, x.src, ": GPT-2 with grouped kv heads");
}

void gpt2_hparams(GgufWriter & w, const ExportContext & x) {
  add_common_hparams(w, x);
  w.add_float32(x.arch + ".attention.layer_norm_epsilon", static_cast<float>(x.mc.layer_norm_eps));
}

void gpt2_tensors(Plan & p, const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  // checkpoints name the body "transformer.h.N" (GPT2LMHeadModel) or "h.N" (GPT2Model, as on the Hub)
  const std::string pre = p.has("transformer.wte.weight") ? "transformer." : "";
  auto transposed = [](const at::Tensor & t) { return t.t().contiguous(); };  // Conv1D's (in, out)
  auto add_linear = [&](const std::string & gguf, const std::string & hf) {
    const auto s = p.shape(hf + ".weight");
    PEFT_CHECK(s.size() == 2, p.where, ": '", hf, ".weight' is not 2-D");
    p.add(gguf + ".weight", hf + ".weight", {s[1], s[0]}, transposed);
    p.add(gguf + ".bias", hf + ".bias");
  };
  p.add("token_embd.weight", pre + "wte.weight");
  p.add("position_embd.weight", pre + "wpe.weight");
  for (int64_t i = 0; i < mc.num_layers; ++i) {
    const std::string hf = pre + "h." + std::to_string(i) + ".", blk = "blk." + std::to_string(i) + ".";
    p.add(blk + "attn_norm.weight", hf + "ln_1.weight");
    p.add(blk + "attn_norm.bias", hf + "ln_1.bias");
    add_linear(blk + "attn_qkv", hf + "attn.c_attn");
    add_linear(blk + "attn_output", hf + "attn.c_proj");
    p.add(blk + "ffn_norm.weight", hf + "ln_2.weight");
    p.add(blk + "ffn_norm.bias", hf + "ln_2.bias");
    add_linear(blk + "ffn_up", hf + "mlp.c_fc");
    add_linear(blk + "ffn_down", hf + "mlp.c_proj");
    // transformers' attention-mask buffers, saved by old checkpoints: not weights
    for (const char * b : {"attn.bias", "attn.masked_bias"}) {
      if (p.has(hf + b)) p.used.insert(hf + b);
    }
  }
  p.add("output_norm.weight", pre + "ln_f.weight");
  p.add("output_norm.bias", pre + "ln_f.bias");
  if (!mc.tie_word_embeddings) p.add("output.weight", "lm_head.weight");
  else p.check_tied_copy("lm_head.weight", pre + "wte.weight", x.src);
}

// -- GPT-NeoX --

void neox_check(const ExportContext & x) {
  note_gelu(x);
  check_rope(x, false);
  PEFT_CHECK(!x.mc.tie_word_embeddings, x.src, ": tie_word_embeddings: llama.cpp's gptneox needs its own output");
}

void neox_hparams(GgufWriter & w, const ExportContext & x) {
  add_common_hparams(w, x);
  add_rope(w, x);
  w.add_bool(x.arch + ".use_parallel_residual", x.mc.parallel_residual);
  w.add_float32(x.arch + ".attention.layer_norm_epsilon", static_cast<float>(x.mc.layer_norm_eps));
}

void neox_tensors(Plan & p, const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  const int64_t heads = mc.num_heads, hd = mc.head_dim;
  // per head (q, k, v) rows -> all q, all k, all v
  auto regroup = [heads, hd](const at::Tensor & t) {
    std::vector<int64_t> s = {heads, 3, hd};
    if (t.dim() == 2) s.push_back(t.size(1));
    return t.reshape(s).transpose(0, 1).reshape(t.sizes()).contiguous();
  };
  p.add("token_embd.weight", "gpt_neox.embed_in.weight");
  for (int64_t i = 0; i < mc.num_layers; ++i) {
    const std::string hf = "gpt_neox.layers." + std::to_string(i) + ".", blk = "blk." + std::to_string(i) + ".";
    for (const char * wb : {"weight", "bias"}) {
      const std::string s = wb;
      p.add(blk + "attn_norm." + s, hf + "input_layernorm." + s);
      p.add(blk + "attn_qkv." + s, hf + "attention.query_key_value." + s, {}, regroup);
      p.add(blk + "attn_output." + s, hf + "attention.dense." + s);
      p.add(blk + "ffn_norm." + s, hf + "post_attention_layernorm." + s);
      p.add(blk + "ffn_up." + s, hf + "mlp.dense_h_to_4h." + s);
      p.add(blk + "ffn_down." + s, hf + "mlp.dense_4h_to_h." + s);
    }
    for (const char * b : {"attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"}) {
      if (p.has(hf + b)) p.used.insert(hf + b);
    }
  }
  p.add("output_norm.weight", "gpt_neox.final_layer_norm.weight");
  p.add("output_norm.bias", "gpt_neox.final_layer_norm.bias");
  p.add("output.weight", "embed_out.weight");
}

// -- Phi-3: fused qkv_proj (q | k | v) and gate_up_proj (gate | up, llama.cpp's SWIGLU halves), NeoX rope --

void phi3_check(const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  check_act(x, {"silu"});
  check_rope(x, false);
  PEFT_CHECK(mc.head_dim * mc.num_heads == mc.hidden_size, x.src, ": head_dim ", mc.head_dim, " x ", mc.num_heads,
             " heads is not hidden_size ", mc.hidden_size, ": llama.cpp's phi3 takes square q projections");
  PEFT_CHECK(!mc.attention_bias && !mc.mlp_bias, x.src, ": biases: llama.cpp's phi3 has none");
  if (mc.sliding_window > 0 && mc.sliding_window < mc.max_position_embeddings) {
    x.res.notes.push_back(str("sliding_window ", mc.sliding_window, ": llama.cpp's phi3 has its sliding window turned "
                              "off, so generations longer than ", mc.sliding_window, " tokens differ"));
  }
}

void phi3_hparams(GgufWriter & w, const ExportContext & x) {
  add_common_hparams(w, x);
  add_rope(w, x);
  w.add_float32(x.arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(x.mc.rms_norm_eps));
}

void phi3_tensors(Plan & p, const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  p.add("token_embd.weight", "model.embed_tokens.weight");
  for (int64_t i = 0; i < mc.num_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".", blk = "blk." + std::to_string(i) + ".";
    p.add(blk + "attn_norm.weight", hf + "input_layernorm.weight");
    p.add(blk + "attn_qkv.weight", hf + "self_attn.qkv_proj.weight");
    p.add(blk + "attn_output.weight", hf + "self_attn.o_proj.weight");
    p.add(blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight");
    p.add(blk + "ffn_up.weight", hf + "mlp.gate_up_proj.weight");
    p.add(blk + "ffn_down.weight", hf + "mlp.down_proj.weight");
  }
  p.add("output_norm.weight", "model.norm.weight");
  if (!mc.tie_word_embeddings) p.add("output.weight", "lm_head.weight");
  else p.check_tied_copy("lm_head.weight", "model.embed_tokens.weight", x.src);
}

// -- Gemma 2 and 3 (gemma3_text): norms x * (1 + w) in transformers, x * w in llama.cpp (so 1 + w is
// stored), four norms a layer, embeddings times sqrt(hidden), sliding-window layers in a period --

void gemma_check(const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  const bool gemma2 = mc.model_type == "gemma2";
  note_gelu(x);
  check_rope(x, false);
  PEFT_CHECK(!mc.attention_bias, x.src, ": attention_bias: llama.cpp's ", x.arch, " has no q/k/v biases");
  // llama.cpp scales queries by 1/sqrt(head_dim) (by 1/sqrt(hidden / heads) for the 46-layer 27B models)
  const int64_t d = mc.num_layers == 46 ? mc.hidden_size / mc.num_heads : mc.head_dim;
  PEFT_CHECK(std::abs(mc.attention_scale - 1.0 / std::sqrt(double(d))) < 1e-9, x.src, ": query_pre_attn_scalar ",
             1.0 / (mc.attention_scale * mc.attention_scale), ": llama.cpp's ", x.arch, " scales queries by 1/sqrt(", d, ")");
  // llama.cpp's gemma2 always caps (50 / 30 when the file has no value); Gemma 3 caps attention nowhere
  PEFT_CHECK(!gemma2 || (mc.attn_logit_softcapping > 0 && mc.final_logit_softcapping > 0), x.src,
             ": attn_logit_softcapping / final_logit_softcapping null: llama.cpp's gemma2 always applies both");
  PEFT_CHECK(gemma2 || mc.attn_logit_softcapping == 0, x.src, ": attn_logit_softcapping ", mc.attn_logit_softcapping,
             ": llama.cpp's gemma3 does not cap attention scores");
}

// llama.cpp's sliding_window_pattern n: layer l slides unless l % n == n - 1 (0: every layer slides)
uint32_t gemma_swa_pattern(const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  for (int64_t n = 0; n <= mc.num_layers + 1; ++n) {
    if (n == 1) continue;
    bool fits = true;
    for (int64_t l = 0; l < mc.num_layers; ++l) fits = fits && mc.layer_slides(l) == (n == 0 || l % n < n - 1);
    if (fits) return static_cast<uint32_t>(n);
  }
  fail(str(x.src, ": the sliding-window layers (layer_types) are not every layer but each n-th, the only pattern "
           "llama.cpp's ", x.arch, " reads"));
}

void gemma_hparams(GgufWriter & w, const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  const std::string a = x.arch + ".";
  add_common_hparams(w, x);
  w.add_uint32(a + "attention.key_length", static_cast<uint32_t>(mc.head_dim));
  w.add_uint32(a + "attention.value_length", static_cast<uint32_t>(mc.head_dim));
  add_rope(w, x);
  w.add_float32(a + "attention.layer_norm_rms_epsilon", static_cast<float>(mc.rms_norm_eps));
  if (mc.attn_logit_softcapping > 0) w.add_float32(a + "attn_logit_softcapping", static_cast<float>(mc.attn_logit_softcapping));
  if (mc.final_logit_softcapping > 0) w.add_float32(a + "final_logit_softcapping", static_cast<float>(mc.final_logit_softcapping));
  if (mc.sliding_window > 0) {
    w.add_uint32(a + "attention.sliding_window", static_cast<uint32_t>(mc.sliding_window));
    w.add_uint32(a + "attention.sliding_window_pattern", gemma_swa_pattern(x));
  }
  // Gemma 3's sliding layers rotate with their own base and no scaling (llama.cpp: freq_base_swa, scale 1)
  if (mc.rope_local_base_freq > 0) w.add_float32(a + "rope.freq_base_swa", static_cast<float>(mc.rope_local_base_freq));
}

void gemma_tensors(Plan & p, const ExportContext & x) {
  const ModelConfig & mc = x.mc;
  auto plus_one = [](const at::Tensor & t) { return t + 1.0; };
  auto norm = [&](const std::string & gguf, const std::string & hf) { p.add(gguf, hf, {}, plus_one); };
  p.add("token_embd.weight", "model.embed_tokens.weight");
  for (int64_t i = 0; i < mc.num_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".", blk = "blk." + std::to_string(i) + ".";
    norm(blk + "attn_norm.weight", hf + "input_layernorm.weight");
    p.add(blk + "attn_q.weight", hf + "self_attn.q_proj.weight");
    p.add(blk + "attn_k.weight", hf + "self_attn.k_proj.weight");
    p.add(blk + "attn_v.weight", hf + "self_attn.v_proj.weight");
    p.add(blk + "attn_output.weight", hf + "self_attn.o_proj.weight");
    if (mc.qk_norm) {
      norm(blk + "attn_q_norm.weight", hf + "self_attn.q_norm.weight");
      norm(blk + "attn_k_norm.weight", hf + "self_attn.k_norm.weight");
    }
    norm(blk + "post_attention_norm.weight", hf + "post_attention_layernorm.weight");
    norm(blk + "ffn_norm.weight", hf + "pre_feedforward_layernorm.weight");
    p.add(blk + "ffn_gate.weight", hf + "mlp.gate_proj.weight");
    p.add(blk + "ffn_up.weight", hf + "mlp.up_proj.weight");
    p.add(blk + "ffn_down.weight", hf + "mlp.down_proj.weight");
    norm(blk + "post_ffw_norm.weight", hf + "post_feedforward_layernorm.weight");
  }
  norm("output_norm.weight", "model.norm.weight");
  // llama.cpp's gemma2 always takes token_embd as the output; gemma3 may have its own
  PEFT_CHECK(mc.tie_word_embeddings || mc.model_type != "gemma2", x.src,
             ": tie_word_embeddings false: llama.cpp's gemma2 has no separate output");
  if (!mc.tie_word_embeddings) p.add("output.weight", "lm_head.weight");
  else p.check_tied_copy("lm_head.weight", "model.embed_tokens.weight", x.src);
}

// -- the table --

struct GgufLayout {
  const char * model_type;
  void (*check)(const ExportContext & x);
  void (*hparams)(GgufWriter & w, const ExportContext & x);
  void (*tensors)(Plan & p, const ExportContext & x);
};

const GgufLayout kLayouts[] = {
    {"llama", llama_check, llama_hparams, llama_tensors},
    {"mistral", llama_check, llama_hparams, llama_tensors},
    {"qwen2", llama_check, llama_hparams, llama_tensors},
    {"qwen3", llama_check, llama_hparams, llama_tensors},
    {"gpt2", gpt2_check, gpt2_hparams, gpt2_tensors},
    {"gpt_neox", neox_check, neox_hparams, neox_tensors},
    {"phi3", phi3_check, phi3_hparams, phi3_tensors},
    {"gemma2", gemma_check, gemma_hparams, gemma_tensors},
    {"gemma3_text", gemma_check, gemma_hparams, gemma_tensors},
};

// llama_ftype of a file whose weights are `type`
uint32_t file_type(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q8_0: return 7;
    case GgmlType::BF16: return 32;
  }
  return 0;
}

}  // namespace

std::vector<std::string> gguf_model_types() {
  std::vector<std::string> out;
  for (const auto & l : kLayouts) out.push_back(l.model_type);
  return out;
}

GgufModelExportResult export_model_gguf(const std::string & model_dir, const std::string & out, GgmlType type) {
  const std::string src = model_dir + "/config.json";
  const ModelConfig mc = ModelConfig::load(model_dir);
  GgufModelExportResult res;
  const GgufLayout * layout = nullptr;
  for (const auto & l : kLayouts) {
    if (mc.model_type == l.model_type) layout = &l;
  }
  const Architecture * arch = find_architecture(mc.model_type);
  if (!layout || !arch || arch->gguf_arch.empty()) {
    std::string supported;
    for (const auto & t : gguf_model_types()) supported += (supported.empty() ? "" : ", ") + t;
    fail(str(src, ": model_type '", mc.model_type, "' has no llama.cpp model export (supported: ", supported, ")"));
  }
  res.architecture = arch->gguf_arch;
  const ExportContext x{mc, src, res.architecture, res};
  layout->check(x);

  GgufWriter w;
  w.add_string("general.architecture", res.architecture);
  w.add_string("general.type", "model");
  w.add_string("general.name", base_of(real_path(model_dir).empty() ? model_dir : real_path(model_dir)));
  w.add_uint32("general.file_type", file_type(type));
  if (type == GgmlType::Q8_0 || type == GgmlType::Q4_0) w.add_uint32("general.quantization_version", 2);
  layout->hparams(w, x);
  const GgufTokenizerInfo tok = gguf_add_tokenizer(w, model_dir, mc);
  res.tokenizer = tok.model + " / " + tok.pre;

  Plan p;
  p.ckpt = std::make_shared<Checkpoint>(model_dir);
  p.where = model_dir + " (safetensors)";
  p.w = &w;
  p.type = type;
  layout->tensors(p, x);
  PEFT_CHECK(p.embedding_shape == std::vector<int64_t>({mc.vocab_size, mc.hidden_size}), p.where,
             ": the token embedding is ", at::IntArrayRef(p.embedding_shape), ", not (vocab_size, hidden_size) = (",
             mc.vocab_size, ", ", mc.hidden_size, ") of ", src);
  for (const auto & kv : p.ckpt->where) {
    PEFT_CHECK(p.used.count(kv.first) || ends_with(kv.first, "rotary_emb.inv_freq"), p.where, ": tensor '", kv.first,
               "' has no place in llama.cpp's ", res.architecture, " model");
  }
  res.tensors = w.tensor_count();
  res.kept_f16 = p.kept_f16;
  w.write(out);
  return res;
}

}  // namespace peft
