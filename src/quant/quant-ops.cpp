// Registration, autograd and device routing of the quantized linear ops (see quant-ops.h).
#include "quant-ops.h"

#include <torch/autograd.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "kernels/linear-quant.h"
#include "peft/quant/formats.h"

namespace peft::quant::ops {

namespace {

at::Tensor dense_4bit(const at::Tensor & packed, const at::Tensor & absmax, const at::Tensor & code, int64_t O,
                      int64_t I, int64_t blocksize) {
  Quant4 q;
  q.packed = packed;
  q.absmax = absmax;
  q.code = code;
  q.shape = {O, I};
  q.blocksize = blocksize;
  return dequantize_4bit(q);
}

// the fused kernels take float32 on CPU; anything else (CUDA) dequantizes with ATen and multiplies
bool fused(const at::Tensor & x, const at::Tensor & w) {
  return x.is_cpu() && w.is_cpu() && x.scalar_type() == at::kFloat;
}

// y = x W^T (forward) and g W (the input's gradient), by device
at::Tensor forward_4bit(const at::Tensor & x, const at::Tensor & packed, const at::Tensor & absmax,
                        const at::Tensor & code, int64_t O, int64_t I, int64_t blocksize) {
  if (fused(x, packed)) return kernels::linear_forward(x, kernels::weight4(packed, absmax, code, O, I, blocksize));
  return at::linear(x, dense_4bit(packed, absmax, code, O, I, blocksize).to(x.scalar_type()));
}
at::Tensor backward_4bit(const at::Tensor & g, const at::Tensor & packed, const at::Tensor & absmax,
                         const at::Tensor & code, int64_t O, int64_t I, int64_t blocksize) {
  if (fused(g, packed)) return kernels::linear_backward_input(g, kernels::weight4(packed, absmax, code, O, I, blocksize));
  return at::matmul(g, dense_4bit(packed, absmax, code, O, I, blocksize).to(g.scalar_type()));
}
at::Tensor forward_int8(const at::Tensor & x, const at::Tensor & CB, const at::Tensor & SCB) {
  if (fused(x, CB)) return kernels::linear_forward(x, kernels::weight8(CB, SCB));
  return at::linear(x, dequantize_int8({CB, SCB}).to(x.scalar_type()));
}
at::Tensor backward_int8(const at::Tensor & g, const at::Tensor & CB, const at::Tensor & SCB) {
  if (fused(g, CB)) return kernels::linear_backward_input(g, kernels::weight8(CB, SCB));
  return at::matmul(g, dequantize_int8({CB, SCB}).to(g.scalar_type()));
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Linear4bitFn : torch::autograd::Function<Linear4bitFn> {
  static at::Tensor forward(AutogradContext * ctx, const at::Tensor & x, const at::Tensor & packed,
                            const at::Tensor & absmax, const at::Tensor & code, int64_t O, int64_t I, int64_t blocksize) {
    ctx->save_for_backward({packed, absmax, code});
    ctx->saved_data["O"] = O;
    ctx->saved_data["I"] = I;
    ctx->saved_data["blocksize"] = blocksize;
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_4bit(x, packed, absmax, code, O, I, blocksize);
  }
  static variable_list backward(AutogradContext * ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    at::Tensor gx = backward_4bit(grads[0], s[0], s[1], s[2], ctx->saved_data["O"].toInt(), ctx->saved_data["I"].toInt(),
                                  ctx->saved_data["blocksize"].toInt());
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct LinearInt8Fn : torch::autograd::Function<LinearInt8Fn> {
  static at::Tensor forward(AutogradContext * ctx, const at::Tensor & x, const at::Tensor & CB, const at::Tensor & SCB) {
    ctx->save_for_backward({CB, SCB});
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_int8(x, CB, SCB);
  }
  static variable_list backward(AutogradContext * ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    return {backward_int8(grads[0], s[0], s[1]), at::Tensor(), at::Tensor()};
  }
};

at::Tensor linear_4bit_autograd(const at::Tensor & x, const at::Tensor & packed, const at::Tensor & absmax,
                                const at::Tensor & code, int64_t O, int64_t I, int64_t blocksize) {
  return Linear4bitFn::apply(x, packed, absmax, code, O, I, blocksize);
}
at::Tensor linear_int8_autograd(const at::Tensor & x, const at::Tensor & CB, const at::Tensor & SCB) {
  return LinearInt8Fn::apply(x, CB, SCB);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(peft, m) {
  m.def("linear_4bit(Tensor x, Tensor packed, Tensor absmax, Tensor code, int out_features, int in_features, int blocksize) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor CB, Tensor SCB) -> Tensor");
}

TORCH_LIBRARY_IMPL(peft, CompositeExplicitAutograd, m) {
  m.impl("linear_4bit", &forward_4bit);
  m.impl("linear_int8", &forward_int8);
}

TORCH_LIBRARY_IMPL(peft, Autograd, m) {
  m.impl("linear_4bit", &linear_4bit_autograd);
  m.impl("linear_int8", &linear_int8_autograd);
}

at::Tensor linear_4bit(const at::Tensor & x, const at::Tensor & packed, const at::Tensor & absmax, const at::Tensor & code,
                       int64_t out_features, int64_t in_features, int64_t blocksize) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::linear_4bit", "").typed<decltype(linear_4bit)>();
  return op.call(x, packed, absmax, code, out_features, in_features, blocksize);
}

at::Tensor linear_int8(const at::Tensor & x, const at::Tensor & CB, const at::Tensor & SCB) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::linear_int8", "").typed<decltype(linear_int8)>();
  return op.call(x, CB, SCB);
}

}  // namespace peft::quant::ops
