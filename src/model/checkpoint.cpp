#include "peft/model/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
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

}  // namespace peft
