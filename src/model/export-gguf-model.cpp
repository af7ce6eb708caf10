// export_model_gguf: a Hugging Face model folder -> a llama.cpp GGUF model. See
// include/peft/model/export-gguf-model.h.
//
// What llama.cpp expects (src/models/<arch>.cpp load_arch_tensors, llama-arch.cpp's names, and what
// convert_hf_to_gguf.py writes):
//  - the tensors: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
//    ffn_up, ffn_down}[.weight|.bias], Qwen3's blk.N.attn_{q,k}_norm, output_norm, and output unless the
//    model ties it to token_embd; every tensor in the file must be one the architecture loads;
//  - Llama / Mistral: the rows of q_proj and k_proj (and their biases) permuted per head from HF's
//    rotate-half layout to the interleaved pairs llama.cpp's rope rotates (Qwen's rope is NeoX style:
//    no permutation); Llama 3 rope scaling as a rope_freqs tensor of per-frequency divisors;
//  - hyper-parameters under "<arch>.": context_length, embedding_length, block_count, feed_forward_length,
//    attention.head_count(_kv), attention.key_length / value_length (a head_dim that is not
//    hidden / heads), rope.freq_base, rope.dimension_count, attention.layer_norm_rms_epsilon.
// The per-architecture differences are the table kLayouts; the source names are the same for all four.
#include "peft/model/export-gguf-model.h"

#include <cmath>
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

// ---- the architectures ----

struct GgufLayout {
  const char * model_type;
  bool permute_qk;     // Llama's rope layout (see above)
  bool qk_norm;        // blk.N.attn_{q,k}_norm (Qwen3)
  bool o_bias;         // attn_output.bias allowed
  bool mlp_bias;       // ffn_{gate,up,down}.bias allowed
  bool square_q;       // llama.cpp sizes attn_q as hidden x hidden (Qwen2: head_dim * heads must be hidden)
};

const GgufLayout kLayouts[] = {
    {"llama", true, false, true, true, false},
    {"mistral", true, false, true, true, false},
    {"qwen2", false, false, false, false, true},
    {"qwen3", false, true, false, false, false},
};

const GgufLayout * find_layout(const std::string & model_type) {
  for (const auto & l : kLayouts) {
    if (model_type == l.model_type) return &l;
  }
  return nullptr;
}

// a decoder layer's tensors: Hugging Face's name after "model.layers.N." -> llama.cpp's after "blk.N."
const std::pair<const char *, const char *> kLayerNames[] = {
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

bool allowed(const GgufLayout & l, const std::string & hf) {
  if (hf.find("q_norm") != std::string::npos || hf.find("k_norm") != std::string::npos) return l.qk_norm;
  if (hf == "self_attn.o_proj.bias") return l.o_bias;
  if (starts_with(hf, "mlp.") && ends_with(hf, ".bias")) return l.mlp_bias;
  return true;
}

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
  at::Tensor get(const std::string & k) const { return where.at(k)->get(k); }
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

// ---- the file ----

void add_hparams(GgufWriter & w, const std::string & arch, const ModelConfig & mc, const std::string & src,
                 bool * llama3_rope) {
  const std::string a = arch + ".";
  w.add_uint32(a + "vocab_size", static_cast<uint32_t>(mc.vocab_size));
  w.add_uint32(a + "context_length", static_cast<uint32_t>(mc.max_position_embeddings));
  w.add_uint32(a + "embedding_length", static_cast<uint32_t>(mc.hidden_size));
  w.add_uint32(a + "block_count", static_cast<uint32_t>(mc.num_layers));
  w.add_uint32(a + "feed_forward_length", static_cast<uint32_t>(mc.intermediate_size));
  w.add_uint32(a + "attention.head_count", static_cast<uint32_t>(mc.num_heads));
  w.add_uint32(a + "attention.head_count_kv", static_cast<uint32_t>(mc.num_kv_heads));
  if (mc.head_dim * mc.num_heads != mc.hidden_size) {
    w.add_uint32(a + "attention.key_length", static_cast<uint32_t>(mc.head_dim));
    w.add_uint32(a + "attention.value_length", static_cast<uint32_t>(mc.head_dim));
  }
  w.add_float32(a + "rope.freq_base", static_cast<float>(mc.rope_theta));
  w.add_uint32(a + "rope.dimension_count", static_cast<uint32_t>(mc.rotary_dim()));
  w.add_float32(a + "attention.layer_norm_rms_epsilon", static_cast<float>(mc.rms_norm_eps));
  *llama3_rope = false;
  const std::string & rt = mc.rope_scaling.type;
  if (rt == "linear") {
    w.add_string(a + "rope.scaling.type", "linear");
    w.add_float32(a + "rope.scaling.factor", static_cast<float>(mc.rope_scaling.factor));
  } else if (rt == "llama3") {
    PEFT_CHECK(arch == "llama", src, ": rope_scaling type 'llama3' on model_type '", mc.model_type,
               "': llama.cpp reads rope_freqs only for llama");
    *llama3_rope = true;
  } else {
    PEFT_CHECK(rt == "default", src, ": rope_scaling type '", rt,
               "' is not exported (supported: none, linear, llama3): llama.cpp would need its own parameters for it");
  }
}

void check_config(const ModelConfig & mc, const GgufLayout & l, const std::string & src, GgufModelExportResult & res) {
  PEFT_CHECK(mc.hidden_act == "silu", src, ": hidden_act '", mc.hidden_act, "': llama.cpp's ", res.architecture,
             " graph uses silu");
  PEFT_CHECK(mc.partial_rotary_factor == 1.0, src, ": partial_rotary_factor ", mc.partial_rotary_factor,
             ": llama.cpp's ", res.architecture, " graph rotates whole heads");
  PEFT_CHECK(!mc.fused_projections, src, ": fused qkv_proj / gate_up_proj are not this layout");
  PEFT_CHECK(l.qk_norm == mc.qk_norm, src, ": model_type '", mc.model_type, "' with", mc.qk_norm ? "" : "out",
             " q/k norms: not llama.cpp's ", res.architecture);
  PEFT_CHECK(!l.square_q || mc.head_dim * mc.num_heads == mc.hidden_size, src, ": head_dim ", mc.head_dim, " x ",
             mc.num_heads, " heads is not hidden_size ", mc.hidden_size, ": llama.cpp's ", res.architecture,
             " takes square q projections");
  if (mc.sliding_window > 0 && mc.sliding_window < mc.max_position_embeddings) {
    PEFT_CHECK(mc.model_type == "mistral" || mc.model_type == "llama", src, ": a sliding window of ", mc.sliding_window,
               " tokens (use_sliding_window): llama.cpp's ", res.architecture, " attends to every position");
    res.notes.push_back(str("sliding_window ", mc.sliding_window, ": llama.cpp's llama graph attends to every position, "
                            "so generations longer than ", mc.sliding_window, " tokens differ"));
  }
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
  const GgufLayout * layout = find_layout(mc.model_type);
  const Architecture * arch = find_architecture(mc.model_type);
  if (!layout || !arch || arch->gguf_arch.empty()) {
    std::string supported;
    for (const auto & t : gguf_model_types()) supported += (supported.empty() ? "" : ", ") + t;
    fail(str(src, ": model_type '", mc.model_type, "' has no llama.cpp model export (supported: ", supported, ")"));
  }
  res.architecture = arch->gguf_arch;
  check_config(mc, *layout, src, res);

  GgufWriter w;
  w.add_string("general.architecture", res.architecture);
  w.add_string("general.type", "model");
  w.add_string("general.name", base_of(real_path(model_dir).empty() ? model_dir : real_path(model_dir)));
  w.add_uint32("general.file_type", file_type(type));
  if (type == GgmlType::Q8_0 || type == GgmlType::Q4_0) w.add_uint32("general.quantization_version", 2);
  bool llama3_rope = false;
  add_hparams(w, res.architecture, mc, src, &llama3_rope);
  const GgufTokenizerInfo tok = gguf_add_tokenizer(w, model_dir, mc);
  res.tokenizer = tok.model + " / " + tok.pre;

  auto ckpt = std::make_shared<Checkpoint>(model_dir);
  const std::string where = model_dir + " (safetensors)";
  std::set<std::string> used;
  // a weight: 2-D ones as `type` (F16 where rows are not whole blocks), 1-D ones F32
  auto add = [&](const std::string & gguf, const std::string & hf, int64_t permute) {
    PEFT_CHECK(ckpt->has(hf), where, ": missing tensor '", hf, "'");
    used.insert(hf);
    const std::vector<int64_t> shape = ckpt->shape(hf);
    GgmlType t = shape.size() == 2 ? type : GgmlType::F32;
    if (shape.back() % ggml_block_values(t) != 0) {
      t = GgmlType::F16;
      ++res.kept_f16;
    }
    w.add_tensor(gguf, shape, t, [ckpt, hf, permute]() {
      at::Tensor x = ckpt->get(hf).to(at::kFloat);
      return permute > 0 ? permute_heads(x, permute) : x;
    });
  };

  add("token_embd.weight", "model.embed_tokens.weight", 0);
  PEFT_CHECK(ckpt->shape("model.embed_tokens.weight") == std::vector<int64_t>({mc.vocab_size, mc.hidden_size}), where,
             ": model.embed_tokens.weight is not (vocab_size, hidden_size) of ", src);
  if (llama3_rope) {
    const at::Tensor f = llama3_rope_factors(mc);
    w.add_tensor("rope_freqs.weight", f, GgmlType::F32);
  }
  for (int64_t i = 0; i < mc.num_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".", blk = "blk." + std::to_string(i) + ".";
    for (const auto & n : kLayerNames) {
      if (!ckpt->has(hf + n.first)) continue;
      PEFT_CHECK(allowed(*layout, n.first), where, ": tensor '", hf + n.first, "' has no place in llama.cpp's ",
                 res.architecture, " model");
      int64_t permute = 0;
      if (layout->permute_qk && starts_with(n.first, "self_attn.q_proj")) permute = mc.num_heads;
      if (layout->permute_qk && starts_with(n.first, "self_attn.k_proj")) permute = mc.num_kv_heads;
      add(blk + n.second, hf + n.first, permute);
    }
  }
  add("output_norm.weight", "model.norm.weight", 0);
  if (!mc.tie_word_embeddings) {
    add("output.weight", "lm_head.weight", 0);
  } else if (ckpt->has("lm_head.weight")) {
    // a tied model's checkpoint may carry the head as a copy; it must be that copy
    PEFT_CHECK(at::equal(ckpt->get("lm_head.weight"), ckpt->get("model.embed_tokens.weight")), where,
               ": lm_head.weight differs from model.embed_tokens.weight, but ", src,
               " says tie_word_embeddings: set it to false to keep a separate head");
    used.insert("lm_head.weight");
  }
  for (const auto & kv : ckpt->where) {
    PEFT_CHECK(used.count(kv.first) || ends_with(kv.first, "rotary_emb.inv_freq"), where, ": tensor '", kv.first,
               "' has no place in llama.cpp's ", res.architecture, " model");
  }
  res.tensors = w.tensor_count();
  w.write(out);
  return res;
}

}  // namespace peft
