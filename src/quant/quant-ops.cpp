// Registration, autograd and device routing of the quantized linear ops (see quant-ops.h).
#include "quant-ops.h"

#include <torch/autograd.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "kernels/linear-quant.h"
#include "peft/error.h"
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

// rows `ids` of W (V, D) gathered: dequantize_rows row by row on the CPU, else the dense weight's rows
template <class Dense, class MakeWeight>
at::Tensor gather_rows(const at::Tensor & ids, int64_t V, int64_t D, const at::Tensor & storage, Dense dense,
                       MakeWeight make) {
  PEFT_CHECK(!at::isFloatingType(ids.scalar_type()) && ids.scalar_type() != at::kBool,
             "quantized embedding: the ids must be integers, got ", ids.scalar_type());
  if (!ids.is_cpu() || !storage.is_cpu()) return at::embedding(dense().to(storage.device()), ids);
  const at::Tensor flat = ids.reshape({-1}).to(at::kLong).contiguous();
  const int64_t n = flat.numel();
  at::Tensor out = at::empty({n, D}, at::TensorOptions().dtype(at::kFloat));
  const int64_t * id = flat.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    PEFT_CHECK(id[i] >= 0 && id[i] < V, "quantized embedding: token id ", id[i], " is out of range [0, ", V, ")");
  }
  const auto w = make();
  float * o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) kernels::dequantize_rows(w, id[i], id[i] + 1, o + i * D);
  std::vector<int64_t> shape = ids.sizes().vec();
  shape.push_back(D);
  return out.view(shape);
}

at::Tensor gather_4bit(const at::Tensor & ids, const at::Tensor & packed, const at::Tensor & absmax,
                       const at::Tensor & code, int64_t V, int64_t D, int64_t blocksize) {
  return gather_rows(
      ids, V, D, packed, [&] { return dense_4bit(packed, absmax, code, V, D, blocksize); },
      [&] { return kernels::weight4(packed, absmax, code, V, D, blocksize); });
}
at::Tensor gather_int8(const at::Tensor & ids, const at::Tensor & CB, const at::Tensor & SCB) {
  return gather_rows(
      ids, CB.size(0), CB.size(1), CB, [&] { return dequantize_int8({CB, SCB}); },
      [&] { return kernels::weight8(CB, SCB); });
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
  m.def("embedding_4bit(Tensor ids, Tensor packed, Tensor absmax, Tensor code, int num_embeddings, int dim, int blocksize) -> Tensor");
  m.def("embedding_int8(Tensor ids, Tensor CB, Tensor SCB) -> Tensor");
}

TORCH_LIBRARY_IMPL(peft, CompositeExplicitAutograd, m) {
  m.impl("linear_4bit", &forward_4bit);
  m.impl("linear_int8", &forward_int8);
  m.impl("embedding_4bit", &gather_4bit);
  m.impl("embedding_int8", &gather_int8);
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

at::Tensor embedding_4bit(const at::Tensor & ids, const at::Tensor & packed, const at::Tensor & absmax,
                          const at::Tensor & code, int64_t num_embeddings, int64_t dim, int64_t blocksize) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("peft::embedding_4bit", "").typed<decltype(embedding_4bit)>();
  return op.call(ids, packed, absmax, code, num_embeddings, dim, blocksize);
}

at::Tensor embedding_int8(const at::Tensor & ids, const at::Tensor & CB, const at::Tensor & SCB) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("peft::embedding_int8", "").typed<decltype(embedding_int8)>();
  return op.call(ids, CB, SCB);
}

}  // namespace peft::quant::ops
