// export_lora_gguf: a PEFT LoRA folder -> llama.cpp's LoRA adapter GGUF. See include/peft/peft-model/export-gguf.h.
//
// What llama.cpp expects (src/llama-adapter.cpp, src/llama-graph.cpp, convert_lora_to_gguf.py):
//  - tensor names: the base tensor's llama.cpp name + ".lora_a" / ".lora_b";
//  - shapes in ggml order: for a weight W with ne = [in, out], lora_a has ne = [in, r] and lora_b
//    ne = [r, out]; that is PEFT's lora_A (r, in) and lora_B (out, r) written row-major as they are.
//    token_embd (ne = [hidden, vocab]) is the exception: lora_a holds lora_embedding_A transposed
//    (vocab, r) -> ne = [r, vocab], lora_b lora_embedding_B (hidden, r) -> ne = [r, hidden];
//  - the scale: alpha / r with alpha = adapter.lora.alpha (one for the file) and r = lora_b's ne[0] (per
//    tensor). A module whose PEFT scale differs (rsLoRA's alpha / sqrt(r), an alpha_pattern entry) gets
//    the ratio folded into its lora_b;
//  - Llama and Mistral: the converter permutes the rows of q_proj and k_proj (HF's rotary layout ->
//    ggml's); for a LoRA pair that permutes the rows of lora_B. Qwen2 is converted without it.
#include "peft/peft-model/export-gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <regex>
#include <tuple>

#include "peft/error.h"
#include "peft/model/architectures.h"
#include "peft/util/text.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft-model/adapter-file.h"
#include "peft/model/config.h"
#include "peft/tuners/config.h"
#include "peft/tuners/lora.h"

namespace peft {

namespace {

struct Target {
  std::string gguf;         // "blk.0.attn_q.weight"
  int64_t layer = -1;       // for the file order
  int order = 0;
  int64_t out = 0, in = 0;  // the base weight's (out, in)
  int permute_heads = 0;    // > 0: permute lora_B's rows for this many heads
  bool embedding = false;
};

struct Pair {
  at::Tensor A, B;
};

}  // namespace

GgufExportResult export_lora_gguf(const std::string & model_dir, const std::string & adapter_dir,
                                  const std::string & out, GgmlType type) {
  const ModelConfig mc = ModelConfig::load(model_dir);
  const std::string config_src = model_dir + "/config.json";
  GgufExportResult res;
  // the architecture table's llama.cpp names (convert_hf_to_gguf.py's LlamaModel takes llama and mistral)
  const Architecture * arch = find_architecture(mc.model_type);
  if (!arch || arch->gguf_arch.empty()) {
    std::string supported;
    for (const auto & a : architectures()) {
      if (!a.gguf_arch.empty()) supported += (supported.empty() ? "" : ", ") + a.model_type;
    }
    fail(str(config_src, ": model_type '", mc.model_type, "' has no llama.cpp LoRA export",
             mc.model_type == "opt" ? " (OPT is not an architecture llama.cpp runs)" : "", "; supported: ", supported));
  }
  res.architecture = arch->gguf_arch;
  const bool permute_qk = arch->gguf_permute_qk;

  const AdapterConfig cfg = AdapterConfig::load(adapter_dir);
  const std::string acfg = adapter_dir + "/adapter_config.json";
  PEFT_CHECK(cfg.peft_type == "LORA", acfg, ": peft_type '", cfg.peft_type,
             "': llama.cpp's adapter GGUF holds LoRA adapters only");
  const auto & lo = cfg.opts<LoraOptions>();
  PEFT_CHECK(!lo.use_dora, acfg, ": 'use_dora' is true: DoRA's magnitude vector has no place in llama.cpp's LoRA adapter");
  PEFT_CHECK(!lo.lora_bias, acfg, ": 'lora_bias' is true: llama.cpp's LoRA adapter has no lora_B bias");
  PEFT_CHECK(cfg.bias == "none", acfg, ": 'bias' is \"", cfg.bias, "\": trained biases have no place in llama.cpp's LoRA adapter");
  PEFT_CHECK(cfg.modules_to_save.empty(), acfg, ": 'modules_to_save' is set (", cfg.modules_to_save.front(),
             "): full module copies have no place in llama.cpp's LoRA adapter");

  const std::string file = adapter_dir + "/adapter_model.safetensors";
  const auto tensors = safetensors_load(file);
  check_finite_file(file, tensors);
  const std::string prefix = "base_model.model.";
  std::map<std::string, Pair> pairs;  // module path -> its pair
  for (const auto & kv : tensors) {
    std::string k = kv.first.rfind(prefix, 0) == 0 ? kv.first.substr(prefix.size()) : kv.first;
    bool is_a = false;
    std::string module;
    for (const char * s : {".lora_A.weight", ".lora_embedding_A"}) {
      if (ends_with(k, s)) is_a = true, module = k.substr(0, k.size() - std::strlen(s));
    }
    for (const char * s : {".lora_B.weight", ".lora_embedding_B"}) {
      if (ends_with(k, s)) module = k.substr(0, k.size() - std::strlen(s));
    }
    PEFT_CHECK(!module.empty(), file, ": tensor '", kv.first, "' is not a lora_A / lora_B weight; llama.cpp's LoRA adapter holds only those");
    (is_a ? pairs[module].A : pairs[module].B) = kv.second;
  }
  PEFT_CHECK(!pairs.empty(), file, ": no LoRA tensors");

  const int64_t q_rows = mc.num_heads * mc.head_dim, kv_rows = mc.num_kv_heads * mc.head_dim;
  static const std::regex layer_re(R"(model\.layers\.(\d+)\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj))");
  static const std::regex fused_re(
      R"(model\.layers\.(\d+)\.(self_attn\.qkv_proj|mlp\.gate_up_proj)|(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj))");
  std::vector<std::pair<Target, std::string>> order;
  for (const auto & p : pairs) {
    const std::string & m = p.first;
    PEFT_CHECK(p.second.A.defined() && p.second.B.defined(), file, ": module '", m, "' has only its ",
               p.second.A.defined() ? "lora_A" : "lora_B", " tensor");
    Target t;
    std::smatch sm;
    if (std::regex_match(m, sm, layer_re)) {
      PEFT_CHECK(sm[1].str().size() <= 9, file, ": module '", m, "': the model has ", mc.num_layers, " layers");
      t.layer = std::stoll(sm[1].str());
      PEFT_CHECK(t.layer < mc.num_layers, file, ": module '", m, "': the model has ", mc.num_layers, " layers");
      const std::string kind = sm[3].matched ? sm[3].str() : sm[4].str() + "_mlp";
      const std::string blk = "blk." + sm[1].str() + ".";
      if (kind == "q") t = {blk + "attn_q.weight", t.layer, 0, q_rows, mc.hidden_size, permute_qk ? int(mc.num_heads) : 0};
      if (kind == "k") t = {blk + "attn_k.weight", t.layer, 1, kv_rows, mc.hidden_size, permute_qk ? int(mc.num_kv_heads) : 0};
      if (kind == "v") t = {blk + "attn_v.weight", t.layer, 2, kv_rows, mc.hidden_size};
      if (kind == "o") t = {blk + "attn_output.weight", t.layer, 3, mc.hidden_size, q_rows};
      if (kind == "gate_mlp") t = {blk + "ffn_gate.weight", t.layer, 4, mc.intermediate_size, mc.hidden_size};
      if (kind == "up_mlp") t = {blk + "ffn_up.weight", t.layer, 5, mc.intermediate_size, mc.hidden_size};
      if (kind == "down_mlp") t = {blk + "ffn_down.weight", t.layer, 6, mc.hidden_size, mc.intermediate_size};
    } else if (std::regex_match(m, sm, fused_re)) {
      // Phi-3's fused projections (llama.cpp's attn_qkv and ffn_up hold them as they are) and GPT-2's Conv1D
      // layers (PEFT's pair is (r, in) / (out, r) as for a Linear; the file's weights are the transposed
      // Conv1D ones, (out, in))
      const std::string idx = sm[1].matched ? sm[1].str() : sm[3].str();
      PEFT_CHECK(idx.size() <= 9 && std::stoll(idx) < mc.num_layers, file, ": module '", m, "': the model has ",
                 mc.num_layers, " layers");
      t.layer = std::stoll(idx);
      const std::string kind = sm[2].matched ? sm[2].str() : sm[4].str();
      const std::string blk = "blk." + idx + ".";
      const int64_t H = mc.hidden_size, I = mc.intermediate_size;
      if (kind == "self_attn.qkv_proj") t = {blk + "attn_qkv.weight", t.layer, 0, q_rows + 2 * kv_rows, H};
      if (kind == "mlp.gate_up_proj") t = {blk + "ffn_up.weight", t.layer, 5, 2 * I, H};
      if (kind == "attn.c_attn") t = {blk + "attn_qkv.weight", t.layer, 0, 3 * H, H};
      if (kind == "attn.c_proj") t = {blk + "attn_output.weight", t.layer, 3, H, H};
      if (kind == "mlp.c_fc") t = {blk + "ffn_up.weight", t.layer, 5, I, H};
      if (kind == "mlp.c_proj") t = {blk + "ffn_down.weight", t.layer, 6, H, I};
    } else if (m == "model.embed_tokens") {
      // llama.cpp's output of a tied model is the token_embd tensor itself, so it would apply this pair
      // to the output projection as a linear LoRA too (GGML_ASSERT(ggml_can_mul_mat) aborts), and an
      // adapter file cannot give the model a separate output tensor
      PEFT_CHECK(!mc.tie_word_embeddings, file, ": module 'model.embed_tokens' is adapted, but the model ties its "
                 "output to the embeddings (tie_word_embeddings): llama.cpp would apply the pair to its output as "
                 "well and abort; merge the adapter (peft merge) and export the merged model instead");
      t = {"token_embd.weight", -1, 0, mc.vocab_size, mc.hidden_size};
      t.embedding = true;
    } else if (m == "lm_head") {
      PEFT_CHECK(!mc.tie_word_embeddings, file, ": module 'lm_head' is adapted, but the model ties it to the embeddings "
                 "(tie_word_embeddings): llama.cpp has no separate output tensor to attach it to");
      t = {"output.weight", std::numeric_limits<int64_t>::max(), 0, mc.vocab_size, mc.hidden_size};
    } else {
      fail(str(file, ": module '", m, "' has no llama.cpp tensor to attach a LoRA pair to (exportable: "
               "self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, Phi-3's qkv_proj / gate_up_proj, GPT-2's "
               "c_attn / c_proj / c_fc, embed_tokens, lm_head)"));
    }
    order.emplace_back(t, m);
  }
  std::sort(order.begin(), order.end(), [](const auto & a, const auto & b) {
    return std::tie(a.first.layer, a.first.order) < std::tie(b.first.layer, b.first.order);
  });

  GgufWriter w;
  w.add_string("general.architecture", res.architecture);
  w.add_string("general.type", "adapter");
  w.add_string("general.name", base_of(adapter_dir));
  w.add_uint32("general.file_type", type == GgmlType::F16 ? 1 : 0);  // llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16
  w.add_string("adapter.type", "lora");
  res.alpha = static_cast<float>(lo.alpha);
  w.add_float32("adapter.lora.alpha", res.alpha);

  for (const auto & o : order) {
    const Target & t = o.first;
    const std::string & m = o.second;
    at::Tensor A = pairs.at(m).A.to(at::kFloat), B = pairs.at(m).B.to(at::kFloat);
    PEFT_CHECK(A.dim() == 2 && B.dim() == 2 && A.size(0) == B.size(1), file, ": module '", m, "': lora_A ", A.sizes(),
               " and lora_B ", B.sizes(), " are not a LoRA pair");
    const int64_t r = A.size(0);
    const int64_t a_cols = t.embedding ? mc.vocab_size : t.in, b_rows = t.embedding ? mc.hidden_size : t.out;
    PEFT_CHECK(A.size(1) == a_cols && B.size(0) == b_rows, file, ": module '", m, "': lora_A ", A.sizes(), " and lora_B ",
               B.sizes(), " do not fit the base model's (", t.out, ", ", t.in, ") weight (", config_src, ")");
    const LoraSettings s = lo.for_module(m);
    PEFT_CHECK(s.r == r, file, ": module '", m, "' has rank ", r, ", its config (r / rank_pattern) says ", s.r);
    // llama.cpp's scale for this tensor: alpha / r (1 when alpha is 0); fold the difference into lora_b
    const double llama_scale = res.alpha != 0 ? double(res.alpha) / double(r) : 1.0;
    const double factor = s.scaling / llama_scale;
    if (std::abs(factor - 1.0) > 1e-6) {
      B = B * factor;
      res.folded.push_back(m);
    }
    if (t.permute_heads > 0) {
      const int64_t heads = t.permute_heads, rows = B.size(0);
      PEFT_CHECK(rows % (2 * heads) == 0, file, ": module '", m, "': ", rows, " rows do not split into ", heads, " heads");
      B = B.reshape({heads, 2, rows / heads / 2, r}).transpose(1, 2).reshape({rows, r});
    }
    if (t.embedding) A = A.t();
    w.add_tensor(t.gguf + ".lora_a", A, type);
    w.add_tensor(t.gguf + ".lora_b", B, type);
    res.tensors.push_back(t.gguf + ".lora_a");
    res.tensors.push_back(t.gguf + ".lora_b");
  }
  w.write(out);
  return res;
}

}  // namespace peft
