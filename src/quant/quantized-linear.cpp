// Linear4bit and Linear8bit (see quantized-linear.h).
#include "peft/quant/quantized-linear.h"

#include <ATen/core/grad_mode.h>  // at::NoGradGuard (ATen/ATen.h brings it in 1.13, not in 2.x)

#include "peft/error.h"
#include <nlohmann/json.hpp>

#include "quant-ops.h"

namespace peft::quant {

namespace {

// x in the compute dtype (float32) through `f`, the result back in x's dtype
template <class F> at::Tensor in_float32(const at::Tensor & x, F f) {
  if (x.scalar_type() == at::kFloat) return f(x);
  return f(x.to(at::kFloat)).to(x.scalar_type());
}

// replace a registered buffer's tensor in place (same shape): live in compiled graphs, which hold it
void overwrite(at::Tensor & dst, const at::Tensor & src) {
  PEFT_CHECK(dst.sizes() == src.sizes(), "quantized weight: new ", src.sizes(), " for ", dst.sizes());
  at::NoGradGuard g;
  dst.copy_(src);
}

}  // namespace

void QuantizedLinear::init_bias(const at::Tensor & b) {
  if (!b.defined()) return;
  bias = register_parameter("bias", b.detach().to(at::kFloat).clone(), /*requires_grad=*/false);
}

void QuantizedLinear::record_store_error(const at::Tensor & written, const at::Tensor & now) {
  at::Tensor d = (now - written.to(at::kFloat)).abs();
  store_error_max = d.max().item<double>();
  store_error_sum = d.sum().item<double>();
  store_error_count = d.numel();
}

void QuantizedLinear::store_bias(const at::Tensor & b) {
  at::NoGradGuard g;
  bias.copy_(b);
}

at::Tensor QuantizedLinear::forward(const at::Tensor & x) {
  at::Tensor y = apply_weight(x);
  return bias.defined() ? y + bias.to(y.scalar_type()) : y;
}

// ---- 4-bit ----

Linear4bit::Linear4bit(Quant4 q, const at::Tensor & b) : q_(std::move(q)) {
  PEFT_CHECK(q_.shape.size() == 2, "Linear4bit: the weight must be 2-D, got ", q_.shape.size(), " dims");
  q_.packed = register_buffer("weight", q_.packed);
  q_.absmax = register_buffer("absmax", q_.absmax);
  q_.code = register_buffer("quant_map", q_.code);
  if (q_.nested) {
    q_.nested_absmax = register_buffer("nested_absmax", q_.nested_absmax);
    q_.nested_code = register_buffer("nested_quant_map", q_.nested_code);
    q_.offset = register_buffer("nested_offset", q_.offset);
  }
  init_bias(b);
}

at::Tensor Linear4bit::apply_weight(const at::Tensor & x) {
  return in_float32(x, [&](const at::Tensor & xf) {
    return ops::linear_4bit(xf, q_.packed, q_.absmax_float(), q_.code, out_features(), in_features(), q_.blocksize);
  });
}

void Linear4bit::store_weight(const at::Tensor & w) {
  // PEFT's merge into a 4-bit base: the new weight quantized again with the layer's own settings
  Quant4 n = quantize_4bit(w.to(at::kFloat), q_.format, q_.blocksize, q_.nested);
  overwrite(q_.packed, n.packed);
  overwrite(q_.absmax, n.absmax);
  if (q_.nested) {
    overwrite(q_.nested_absmax, n.nested_absmax);
    overwrite(q_.offset, n.offset);
  }
  record_store_error(w, dense_weight());
}

LayerPtr Linear4bit::clone_layer() const {
  Quant4 c = q_;
  for (at::Tensor * t : {&c.packed, &c.absmax, &c.code, &c.nested_absmax, &c.nested_code, &c.offset}) {
    if (t->defined()) *t = t->clone();
  }
  return std::make_shared<Linear4bit>(std::move(c), bias);
}

void Linear4bit::export_tensors(const std::string & prefix, std::map<std::string, at::Tensor> & out) const {
  // bitsandbytes' Linear4bit._save_to_state_dict: the packed codes as `weight`, QuantState.as_dict(packed=True)
  // under `weight.`, the non-tensor fields as JSON bytes in `weight.quant_state.bitsandbytes__<type>`
  const std::string w = prefix + "weight";
  out[w] = q_.packed;
  out[w + ".absmax"] = q_.absmax;
  out[w + ".quant_map"] = q_.code;
  // (the key order of bitsandbytes' dict, written as Python's json.dumps writes it)
  std::string shape;
  for (size_t i = 0; i < q_.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(q_.shape[i]);
  std::string js = str("{\"quant_type\": \"", format_name(q_.format), "\", \"blocksize\": ", q_.blocksize,
                       ", \"dtype\": \"", dtype_name(q_.dtype), "\", \"shape\": [", shape, "]");
  if (q_.nested) {
    out[w + ".nested_absmax"] = q_.nested_absmax;
    out[w + ".nested_quant_map"] = q_.nested_code;
    js += str(", \"nested_blocksize\": ", q_.nested_blocksize, ", \"nested_dtype\": \"float32\", \"nested_offset\": ",
              nlohmann::json(static_cast<double>(q_.offset.item<float>())).dump());
  }
  js += "}";
  out[w + ".quant_state.bitsandbytes__" + format_name(q_.format)] =
      at::from_blob(js.data(), {static_cast<int64_t>(js.size())}, at::kByte).clone();
  if (bias.defined()) out[prefix + "bias"] = bias;
}

// ---- int8 ----

Linear8bit::Linear8bit(Quant8 q, const at::Tensor & b) : q_(std::move(q)) {
  q_.CB = register_buffer("weight", q_.CB);
  q_.SCB = register_buffer("SCB", q_.SCB);
  init_bias(b);
}

at::Tensor Linear8bit::apply_weight(const at::Tensor & x) {
  return in_float32(x, [&](const at::Tensor & xf) { return ops::linear_int8(xf, q_.CB, q_.SCB); });
}

void Linear8bit::store_weight(const at::Tensor & w) {
  Quant8 n = quantize_int8(w.to(at::kFloat));
  overwrite(q_.CB, n.CB);
  overwrite(q_.SCB, n.SCB);
  record_store_error(w, dense_weight());
}

LayerPtr Linear8bit::clone_layer() const { return std::make_shared<Linear8bit>(Quant8{q_.CB.clone(), q_.SCB.clone()}, bias); }

void Linear8bit::export_tensors(const std::string & prefix, std::map<std::string, at::Tensor> & out) const {
  out[prefix + "weight"] = q_.CB;
  out[prefix + "SCB"] = q_.SCB;
  if (bias.defined()) out[prefix + "bias"] = bias;
}

}  // namespace peft::quant
