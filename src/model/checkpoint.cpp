#include "peft/model/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>  // at::GradMode (ATen/ATen.h brings it in 1.13, not in 2.x)
#include <torch/library.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <mutex>

namespace peft {

namespace {

at::Tensor rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const at::Tensor & s) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(s);
}

// The backward of checkpoint(): recompute, then a (reentrant) backward through the recomputation
struct CheckpointBackward : torch::autograd::Node {
  CheckpointFn fn;
  at::Tensor input, rng;
  bool input_grad = false;

  torch::autograd::variable_list apply(torch::autograd::variable_list && grads) override {
    TORCH_CHECK(input.defined(), "checkpoint: backward through the same layer twice (its input was released)");
    at::Tensor x = input.detach().requires_grad_(true);
    at::Tensor out;
    {
      const at::Tensor now = rng_state();  // the forward's random numbers again (dropout), then as they were
      set_rng_state(rng);
      at::AutoGradMode on(true);
      try {
        out = fn(x);
      } catch (...) {
        set_rng_state(now);
        throw;
      }
      set_rng_state(now);
    }
    if (out.requires_grad()) torch::autograd::backward({out}, {grads[0]});
    return {input_grad ? x.grad() : at::Tensor()};
  }
  void release_variables() override {
    input.reset();
    rng.reset();
    fn = nullptr;
  }
};

}  // namespace

at::Tensor checkpoint(const at::Tensor & x, CheckpointFn fn) {
  const at::Tensor rng = rng_state();
  // run with autograd as the recomputation will (the same kernels, so the same numbers: some ops take
  // another kernel without autograd), and keep nothing: the layer's graph goes with the detached result
  at::Tensor out = fn(x).detach();
  auto node = std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
  node->fn = std::move(fn);
  node->input = x.detach();
  node->rng = rng;
  node->input_grad = x.requires_grad();
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  torch::autograd::set_history(out, node);
  return out;
}

// ---- checkpointed functions as graph nodes ----

namespace {

thread_local CheckpointCapture * capture_now = nullptr;

// A function a graph node runs; the node holds its address as an integer constant (valid while the
// program that owns it lives: the graph is only run by that program).
struct NodeFunction : std::enable_shared_from_this<NodeFunction> {
  CheckpointArgsFn fn;
};

NodeFunction & node_function(int64_t address) { return *reinterpret_cast<NodeFunction *>(static_cast<intptr_t>(address)); }

at::Tensor checkpointed_plain(const at::Tensor & x, at::TensorList args, int64_t fn) {
  return node_function(fn).fn(x, args.vec());
}

at::Tensor checkpointed_autograd(const at::Tensor & x, at::TensorList args, int64_t fn) {
  if (!at::GradMode::is_enabled()) return checkpointed_plain(x, args, fn);
  // (the backward pass owns the function too: it runs after the forward, perhaps after the program went)
  return checkpoint(x, [f = node_function(fn).shared_from_this(), a = args.vec()](const at::Tensor & y) { return f->fn(y, a); });
}

}  // namespace

CheckpointCapture::CheckpointCapture() : outer_(capture_now) { capture_now = this; }
CheckpointCapture::~CheckpointCapture() { capture_now = outer_; }
CheckpointCapture * CheckpointCapture::current() { return capture_now; }

at::Tensor checkpoint_node(const at::Tensor & x, const std::vector<at::Tensor> & args, CheckpointArgsFn fn) {
  CheckpointCapture * c = CheckpointCapture::current();
  TORCH_CHECK(c != nullptr, "checkpoint_node: no graph capture on this thread");
  auto f = std::make_shared<NodeFunction>();
  f->fn = std::move(fn);
  c->functions.push_back(f);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("peft::checkpointed", "")
                       .typed<at::Tensor(const at::Tensor &, at::TensorList, int64_t)>();
  return op.call(x, args, static_cast<int64_t>(reinterpret_cast<intptr_t>(f.get())));
}

TORCH_LIBRARY_FRAGMENT(peft, m) { m.def("checkpointed(Tensor x, Tensor[] args, int fn) -> Tensor"); }

TORCH_LIBRARY_IMPL(peft, CompositeExplicitAutograd, m) { m.impl("checkpointed", &checkpointed_plain); }

TORCH_LIBRARY_IMPL(peft, Autograd, m) { m.impl("checkpointed", &checkpointed_autograd); }

}  // namespace peft
