// peft::linear_16bit (see peft/ops/linear-16bit.h): registration, autograd (to the input) and the CPU
// kernels of kernels/linear-quant.h over a Weight16 view.
#include "peft/ops/linear-16bit.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>  // at::GradMode (ATen/ATen.h brings it in 1.13, not in 2.x)
#include <torch/autograd.h>
#include <torch/library.h>

#include "kernels/linear-quant.h"

namespace peft::ops {

namespace {

bool sixteen(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }
bool float_input(const at::Tensor & x) {
  const auto t = x.scalar_type();
  return x.is_cpu() && (t == at::kFloat || sixteen(t));
}
at::Tensor widened(const at::Tensor & x) { return x.scalar_type() == at::kFloat ? x : x.to(at::kFloat); }

at::Tensor forward_impl(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b) {
  const bool has_b = b.has_value() && b->defined();
  if (!W.is_cpu() || !float_input(x)) return at::linear(x, W.to(x.scalar_type()), has_b ? b->to(x.scalar_type()) : at::Tensor());
  at::Tensor y = kernels::linear_forward(widened(x), kernels::weight16(W));
  if (has_b) y.add_(b->to(at::kFloat));
  return y.to(x.scalar_type());
}

at::Tensor backward_impl(const at::Tensor & g, const at::Tensor & W) {
  if (!W.is_cpu() || !float_input(g)) return at::matmul(g, W.to(g.scalar_type()));
  return kernels::linear_backward_input(widened(g), kernels::weight16(W)).to(g.scalar_type());
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Linear16Fn : torch::autograd::Function<Linear16Fn> {
  static at::Tensor forward(AutogradContext * ctx, const at::Tensor & x, const at::Tensor & W,
                            const c10::optional<at::Tensor> & b) {
    ctx->save_for_backward({W});
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_impl(x, W, b);
  }
  static variable_list backward(AutogradContext * ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    return {backward_impl(grads[0], s[0]), at::Tensor(), at::Tensor()};
  }
};

at::Tensor linear_16bit_autograd(const at::Tensor & x, const at::Tensor & W, const c10::optional<at::Tensor> & b) {
  return Linear16Fn::apply(x, W, b);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(peft, m) { m.def("linear_16bit(Tensor x, Tensor W, Tensor? b) -> Tensor"); }

TORCH_LIBRARY_IMPL(peft, CompositeExplicitAutograd, m) { m.impl("linear_16bit", &forward_impl); }

TORCH_LIBRARY_IMPL(peft, Autograd, m) { m.impl("linear_16bit", &linear_16bit_autograd); }

bool linear_16bit_takes(const at::Tensor & weight, const at::Tensor & bias) {
  const bool grad = at::GradMode::is_enabled() && (weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  return weight.defined() && weight.is_cpu() && weight.dim() == 2 && sixteen(weight.scalar_type()) &&
         weight.is_contiguous() && !grad;
}

at::Tensor linear_16bit(const at::Tensor & x, const at::Tensor & weight, const c10::optional<at::Tensor> & bias) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("peft::linear_16bit", "").typed<decltype(linear_16bit)>();
  return op.call(x, weight, bias);
}

}  // namespace peft::ops
