// Which layers are quantized, bitsandbytes checkpoints in and out, quantization_config (see quantize.h).
#include "peft/quant/quantize.h"

#include <ATen/core/grad_mode.h>  // at::NoGradGuard (ATen/ATen.h brings it in 1.13, not in 2.x)
#include <set>

#include "peft/error.h"
#include "peft/model/causal-lm.h"
#include "peft/nn/layers.h"
#include "peft/quant/quantized-embedding.h"
#include "peft/quant/quantized-linear.h"

namespace peft::quant {

bool skipped(const std::string & path, const std::vector<std::string> & skip) {
  const std::string p = "." + path + ".";
  for (const auto & s : skip) {
    if (!s.empty() && p.find("." + s + ".") != std::string::npos) return true;
  }
  return false;
}

namespace {

// (quantizing: a Conv1D layer, which would stay float, is refused by name)
std::vector<std::pair<std::string, std::shared_ptr<Linear>>> float_linears(const ModulePtr & root, bool quantizing) {
  std::vector<std::pair<std::string, std::shared_ptr<Linear>>> out;
  for (const auto & m : named_modules(root)) {
    if (auto l = std::dynamic_pointer_cast<Linear>(m.second)) out.emplace_back(m.first, l);
    PEFT_CHECK(!quantizing || !std::dynamic_pointer_cast<Conv1D>(m.second), "quantization of Conv1D layers (GPT-2's '", m.first,
               "') is not supported yet");
  }
  return out;
}

LayerPtr quantize_layer(const at::Tensor & W, const at::Tensor & bias, const QuantOptions & o) {
  if (o.format == Format::int8) return std::make_shared<Linear8bit>(quantize_int8(W), bias);
  return std::make_shared<Linear4bit>(quantize_4bit(W, o.format, o.blocksize, o.double_quant), bias);
}

// the checkpoint key of `name`, also without the leading "model." (original OPT checkpoints), or ""
std::string key_of(const std::map<std::string, at::Tensor> & t, const std::string & name) {
  if (t.count(name)) return name;
  if (name.rfind("model.", 0) == 0 && t.count(name.substr(6))) return name.substr(6);
  return "";
}

// a copy of the tensor under `key`: the layer's own (the checkpoint's tensors may be views of a mapped file)
at::Tensor need(const std::map<std::string, at::Tensor> & t, const std::string & key, const std::string & source) {
  auto it = t.find(key);
  PEFT_CHECK(it != t.end(), source, ": quantized weight without its key '", key, "'");
  return it->second.clone(at::MemoryFormat::Contiguous);
}

// A 4-bit layer from bitsandbytes' keys under `w` ("...q_proj.weight"); the keys used are added to `used`
Quant4 read_4bit(const std::map<std::string, at::Tensor> & t, const std::string & w, int64_t O, int64_t I,
                 const std::string & source, std::set<std::string> & used) {
  std::string qs_key;
  for (const char * type : {"nf4", "fp4"}) {
    if (t.count(w + ".quant_state.bitsandbytes__" + type)) qs_key = w + ".quant_state.bitsandbytes__" + type;
  }
  PEFT_CHECK(!qs_key.empty(), source, ": '", w, ".absmax' has no '", w, ".quant_state.bitsandbytes__nf4' (or __fp4) beside it");
  const at::Tensor & blob = t.at(qs_key);
  PEFT_CHECK(blob.scalar_type() == at::kByte && blob.dim() == 1, source, ": '", qs_key, "' must be a 1-D uint8 tensor (JSON bytes)");
  at::Tensor bytes = blob.contiguous();
  nlohmann::json j = nlohmann::json::parse(std::string(reinterpret_cast<const char *>(bytes.data_ptr<uint8_t>()), bytes.numel()),
                                           nullptr, /*allow_exceptions=*/false);
  PEFT_CHECK(j.is_object(), source, ": '", qs_key, "' does not hold a JSON object");
  auto field = [&](const char * f) -> const nlohmann::json & {
    PEFT_CHECK(j.contains(f), source, ": '", qs_key, "' lacks the field '", f, "'");
    return j.at(f);
  };
  Quant4 q;
  const std::string type = field("quant_type").is_string() ? field("quant_type").get<std::string>() : "";
  PEFT_CHECK(type == "nf4" || type == "fp4", source, ": '", qs_key, "': quant_type must be \"nf4\" or \"fp4\"");
  PEFT_CHECK(qs_key.substr(qs_key.size() - 3) == type, source, ": '", qs_key, "' says quant_type \"", type, "\"");
  q.format = type == "nf4" ? Format::nf4 : Format::fp4;
  PEFT_CHECK(field("blocksize").is_number_integer(), source, ": '", qs_key, "': blocksize must be an integer");
  q.blocksize = field("blocksize").get<int64_t>();
  PEFT_CHECK(q.blocksize >= 1, source, ": '", qs_key, "': blocksize ", q.blocksize, " must be positive");
  PEFT_CHECK(field("dtype").is_string(), source, ": '", qs_key, "': dtype must be a string");
  q.dtype = parse_dtype_name(field("dtype").get<std::string>(), source + ": '" + qs_key + "'.dtype");
  const auto & shape = field("shape");
  PEFT_CHECK(shape.is_array() && shape.size() == 2 && shape[0].is_number_integer() && shape[1].is_number_integer(),
             source, ": '", qs_key, "': shape must be [out, in]");
  q.shape = {shape[0].get<int64_t>(), shape[1].get<int64_t>()};
  PEFT_CHECK(q.shape[0] == O && q.shape[1] == I, source, ": '", qs_key, "': shape [", q.shape[0], ", ", q.shape[1],
             "] but the model's layer is [", O, ", ", I, "]");
  const int64_t n = O * I, blocks = (n + q.blocksize - 1) / q.blocksize;
  q.packed = need(t, w, source).contiguous();
  PEFT_CHECK(q.packed.scalar_type() == at::kByte && q.packed.numel() == (n + 1) / 2, source, ": '", w, "' must hold ",
             (n + 1) / 2, " uint8 (two 4-bit codes a byte), has ", q.packed.numel(), " ", q.packed.scalar_type());
  q.packed = q.packed.reshape({-1, 1});
  q.code = need(t, w + ".quant_map", source).to(at::kFloat).contiguous();
  PEFT_CHECK(q.code.numel() == 16, source, ": '", w, ".quant_map' must hold 16 values, has ", q.code.numel());
  q.absmax = need(t, w + ".absmax", source).contiguous();
  PEFT_CHECK(q.absmax.numel() == blocks, source, ": '", w, ".absmax' must hold ", blocks, " values (", n,
             " weights in blocks of ", q.blocksize, "), has ", q.absmax.numel());
  used.insert({w, qs_key, w + ".quant_map", w + ".absmax"});
  const bool nested = j.contains("nested_offset") || t.count(w + ".nested_absmax");
  if (nested) {
    q.nested = true;
    PEFT_CHECK(q.absmax.scalar_type() == at::kByte, source, ": '", w, ".absmax' must be uint8 codes when double-quantized");
    PEFT_CHECK(field("nested_offset").is_number(), source, ": '", qs_key, "': nested_offset must be a number");
    q.offset = at::tensor(field("nested_offset").get<double>(), at::kFloat);
    PEFT_CHECK(field("nested_blocksize").is_number_integer() && field("nested_blocksize").get<int64_t>() > 0, source,
               ": '", qs_key, "': nested_blocksize must be a positive integer");
    q.nested_blocksize = field("nested_blocksize").get<int64_t>();
    q.nested_absmax = need(t, w + ".nested_absmax", source).to(at::kFloat).contiguous();
    q.nested_code = need(t, w + ".nested_quant_map", source).to(at::kFloat).contiguous();
    const int64_t nb = (blocks + q.nested_blocksize - 1) / q.nested_blocksize;
    PEFT_CHECK(q.nested_absmax.numel() == nb, source, ": '", w, ".nested_absmax' must hold ", nb, " values, has ",
               q.nested_absmax.numel());
    PEFT_CHECK(q.nested_code.numel() == 256, source, ": '", w, ".nested_quant_map' must hold 256 values, has ",
               q.nested_code.numel());
    used.insert({w + ".nested_absmax", w + ".nested_quant_map"});
  } else {
    PEFT_CHECK(q.absmax.is_floating_point(), source, ": '", w, ".absmax' must be float (or uint8 with nested_* keys)");
    q.absmax = q.absmax.to(at::kFloat);
  }
  return q;
}

Quant8 read_int8(const std::map<std::string, at::Tensor> & t, const std::string & prefix, int64_t O, int64_t I,
                 const std::string & source, std::set<std::string> & used) {
  Quant8 q;
  q.CB = need(t, prefix + "weight", source).contiguous();
  PEFT_CHECK(q.CB.scalar_type() == at::kChar && q.CB.dim() == 2 && q.CB.size(0) == O && q.CB.size(1) == I, source, ": '",
             prefix, "weight' must be int8 [", O, ", ", I, "] beside '", prefix, "SCB', is ", q.CB.scalar_type(), " ",
             q.CB.sizes());
  q.SCB = need(t, prefix + "SCB", source).to(at::kFloat).contiguous();
  PEFT_CHECK(q.SCB.numel() == O, source, ": '", prefix, "SCB' must hold ", O, " row scales, has ", q.SCB.numel());
  q.SCB = q.SCB.reshape({O});
  used.insert({prefix + "weight", prefix + "SCB"});
  if (t.count(prefix + "weight_format")) used.insert(prefix + "weight_format");  // older bitsandbytes: 0 = row-major
  return q;
}

}  // namespace

int64_t load_quantized(const ModulePtr & root, std::map<std::string, at::Tensor> & tensors, const QuantOptions & opts,
                       const std::string & source) {
  int64_t n = 0;
  for (const auto & [path, lin] : float_linears(root, opts.enabled())) {
    const std::string w = key_of(tensors, path + ".weight");
    if (w.empty()) continue;  // a tied weight, reported (or not) by the caller
    const std::string prefix = w.substr(0, w.size() - 6);  // "...q_proj."
    const bool has_bias = lin->bias.defined();
    at::Tensor bias = has_bias ? at::zeros({lin->out_features()}) : at::Tensor();
    std::set<std::string> used;
    LayerPtr layer;
    bool has_4bit = tensors.count(w + ".absmax") != 0;
    for (const char * type : {"nf4", "fp4"}) has_4bit |= tensors.count(w + ".quant_state.bitsandbytes__" + type) != 0;
    if (has_4bit) {
      layer = std::make_shared<Linear4bit>(read_4bit(tensors, w, lin->out_features(), lin->in_features(), source, used), bias);
    } else if (tensors.count(prefix + "SCB")) {
      layer = std::make_shared<Linear8bit>(read_int8(tensors, prefix, lin->out_features(), lin->in_features(), source, used), bias);
    } else if (!tensors.at(w).is_floating_point()) {
      fail(::peft::str(source, ": '", w, "' is ", tensors.at(w).scalar_type(), " without quantization keys beside it (",
               w, ".absmax/.quant_state... for 4-bit, ", prefix, "SCB for int8)"));
    } else if (opts.enabled() && !skipped(path, opts.skip)) {
      const at::Tensor & W = tensors.at(w);
      PEFT_CHECK(W.sizes() == lin->weight.sizes(), source, ": tensor '", w, "' has shape ", W.sizes(), ", the model expects ",
                 lin->weight.sizes());
      layer = quantize_layer(W, bias, opts);
      used.insert(w);
    } else {
      continue;
    }
    // (the bias stays in `tensors`: load_parameters fills the layer's bias parameter and checks its shape)
    replace_submodule(root, path, layer);
    for (const auto & k : used) tensors.erase(k);
    ++n;
  }
  return n;
}

int64_t quantize_modules(const ModulePtr & root, const QuantOptions & opts) {
  PEFT_CHECK(opts.enabled(), "quantize_modules: no quantization format given");
  int64_t n = 0;
  for (const auto & [path, lin] : float_linears(root, true)) {
    if (skipped(path, opts.skip)) continue;
    replace_submodule(root, path, quantize_layer(lin->weight, lin->bias, opts));
    ++n;
  }
  // a tied model's quantized head: the embedding reads its codes (one quantized matrix, the float table goes)
  if (auto model = std::dynamic_pointer_cast<CausalLM>(root)) tie_quantized_embedding(*model);
  return n;
}

int64_t dequantize_modules(const ModulePtr & root, at::ScalarType dtype) {
  std::vector<std::pair<std::string, std::shared_ptr<QuantizedLinear>>> found;
  std::vector<std::pair<std::string, std::shared_ptr<QuantizedEmbedding>>> tables;
  for (const auto & m : named_modules(root)) {
    if (auto q = std::dynamic_pointer_cast<QuantizedLinear>(m.second)) found.emplace_back(m.first, q);
    if (auto e = std::dynamic_pointer_cast<QuantizedEmbedding>(m.second)) tables.emplace_back(m.first, e);
  }
  for (const auto & [path, e] : tables) {
    auto l = std::make_shared<Embedding>(e->num_embeddings(), e->embedding_dim(), e->padding_idx);
    at::NoGradGuard g;
    l->weight.set_data(e->dense_weight().to(dtype));
    l->weight.set_requires_grad(false);
    replace_submodule(root, path, l);
  }
  for (const auto & [path, q] : found) {
    auto l = std::make_shared<Linear>(q->in_features(), q->out_features(), q->bias.defined());
    at::NoGradGuard g;
    l->weight.set_data(q->dense_weight().to(dtype));
    if (q->bias.defined()) l->bias.set_data(q->bias.to(dtype).clone());
    l->weight.set_requires_grad(false);
    if (l->bias.defined()) l->bias.set_requires_grad(false);
    replace_submodule(root, path, l);
  }
  // a tied head and embedding, both dequantized: one float matrix again
  if (auto model = std::dynamic_pointer_cast<CausalLM>(root); model && !tables.empty()) model->tie_weights();
  return static_cast<int64_t>(found.size() + tables.size());
}

RequantizationError requantization_error(const ModulePtr & root) {
  RequantizationError e;
  double sum = 0;
  int64_t count = 0;
  for (const auto & m : named_modules(root)) {
    auto q = std::dynamic_pointer_cast<QuantizedLinear>(m.second);
    if (!q || !q->store_error_count) continue;
    e.max_abs = std::max(e.max_abs, q->store_error_max);
    sum += q->store_error_sum;
    count += q->store_error_count;
  }
  e.mean_abs = count ? sum / count : 0;
  return e;
}

void export_quantized(const ModulePtr & root, std::map<std::string, at::Tensor> & out) {
  for (const auto & m : named_modules(root)) {
    if (auto q = std::dynamic_pointer_cast<QuantizedLinear>(m.second)) q->export_tensors(m.first + ".", out);
    if (std::dynamic_pointer_cast<QuantizedEmbedding>(m.second)) fail(quantized_embedding_save_error(m.first));
  }
}

nlohmann::json quantization_config(const QuantOptions & o) {
  PEFT_CHECK(o.enabled(), "quantization_config: no quantization format given");
  const bool four = o.format != Format::int8;
  nlohmann::json skip = nullptr;
  if (o.skip != std::vector<std::string>{"lm_head"}) skip = o.skip;
  return {{"_load_in_4bit", four},
          {"_load_in_8bit", !four},
          {"bnb_4bit_compute_dtype", "float32"},
          {"bnb_4bit_quant_storage", "uint8"},
          {"bnb_4bit_quant_type", four ? format_name(o.format) : "fp4"},
          {"bnb_4bit_use_double_quant", four && o.double_quant},
          {"llm_int8_enable_fp32_cpu_offload", false},
          {"llm_int8_has_fp16_weight", false},
          {"llm_int8_skip_modules", skip},
          {"llm_int8_threshold", o.int8_threshold},
          {"load_in_4bit", four},
          {"load_in_8bit", !four},
          {"quant_method", "bitsandbytes"}};
}

QuantOptions options_from_config(const nlohmann::json & qc, const std::string & source) {
  const std::string where = source + ": quantization_config";
  PEFT_CHECK(qc.is_object(), where, " must be an object");
  auto flag = [&](const char * f) {
    if (!qc.contains(f) || qc[f].is_null()) return false;
    PEFT_CHECK(qc[f].is_boolean(), where, ".", f, " must be true or false");
    return qc[f].get<bool>();
  };
  auto text = [&](const char * f, const std::string & dflt) {
    if (!qc.contains(f) || qc[f].is_null()) return dflt;
    PEFT_CHECK(qc[f].is_string(), where, ".", f, " must be a string");
    return qc[f].get<std::string>();
  };
  const std::string method = text("quant_method", "");
  PEFT_CHECK(method == "bitsandbytes", where, ".quant_method is '", method,
             "': peft.cpp loads bitsandbytes checkpoints (NF4, FP4, int8) only");
  QuantOptions o;
  const bool four = flag("load_in_4bit") || flag("_load_in_4bit"), eight = flag("load_in_8bit") || flag("_load_in_8bit");
  PEFT_CHECK(four != eight, where, ": exactly one of load_in_4bit and load_in_8bit must be true");
  if (four) {
    o.format = parse_format(text("bnb_4bit_quant_type", "fp4"), where + ".bnb_4bit_quant_type");
    PEFT_CHECK(o.format == Format::nf4 || o.format == Format::fp4, where, ".bnb_4bit_quant_type must be nf4 or fp4");
    o.double_quant = flag("bnb_4bit_use_double_quant");
    const std::string storage = text("bnb_4bit_quant_storage", "uint8");
    PEFT_CHECK(storage == "uint8", where, ".bnb_4bit_quant_storage '", storage, "' is not supported (uint8 only)");
    parse_dtype_name(text("bnb_4bit_compute_dtype", "float32"), where + ".bnb_4bit_compute_dtype");
  } else {
    o.format = Format::int8;
    PEFT_CHECK(!flag("llm_int8_has_fp16_weight"), where, ".llm_int8_has_fp16_weight = true is not supported");
  }
  if (qc.contains("llm_int8_threshold") && !qc["llm_int8_threshold"].is_null()) {
    PEFT_CHECK(qc["llm_int8_threshold"].is_number(), where, ".llm_int8_threshold must be a number");
    o.int8_threshold = qc["llm_int8_threshold"].get<double>();
  }
  if (qc.contains("llm_int8_skip_modules") && !qc["llm_int8_skip_modules"].is_null()) {
    const auto & s = qc["llm_int8_skip_modules"];
    PEFT_CHECK(s.is_array(), where, ".llm_int8_skip_modules must be a list of module names");
    o.skip.clear();
    for (const auto & e : s) {
      PEFT_CHECK(e.is_string(), where, ".llm_int8_skip_modules must be a list of module names");
      o.skip.push_back(e.get<std::string>());
    }
  }
  return o;
}

WeightFootprint weight_footprint(const ModulePtr & root) {
  WeightFootprint f;
  std::set<const void *> seen;
  for (const auto & p : named_parameters(*root)) {
    if (!seen.insert(p.second.unsafeGetTensorImpl()).second) continue;
    f.params += p.second.numel();
    f.bytes += p.second.numel() * p.second.element_size();
  }
  std::set<const void *> tables;  // quantized matrices counted (a tied embedding reads its head's)
  for (const auto & m : named_modules(root)) {
    std::shared_ptr<QuantizedLinear> q = std::dynamic_pointer_cast<QuantizedLinear>(m.second);
    if (auto e = std::dynamic_pointer_cast<QuantizedEmbedding>(m.second)) q = e->table();
    if (!q || !tables.insert(q.get()).second) continue;
    const int64_t n = q->out_features() * q->in_features();
    f.params += n;
    f.bytes += q->weight_bytes();
    f.quantized_params += n;
    f.quantized_bytes += q->weight_bytes();
  }
  return f;
}

void check_options(const QuantOptions & o, const FieldNamer & namer) {
  PEFT_CHECK_OPTION(!o.double_quant || o.format == Format::nf4 || o.format == Format::fp4,
                    field_name(namer, "double_quant"), " applies to ", field_name(namer, "format"), " nf4 or fp4");
  const bool pow2 = o.blocksize >= 32 && o.blocksize <= 4096 && (o.blocksize & (o.blocksize - 1)) == 0;
  PEFT_CHECK_OPTION(pow2, field_name(namer, "blocksize"), " ", o.blocksize, " is not one of 32, 64, 128, ..., 4096");
}

}  // namespace peft::quant
