// The hoisting pass (src/compile/passes/hoist-weights.cpp) moves weight-only computations out of a graph into
// derived inputs computed once. A weight-only value that the graph then changes in place must stay in the
// graph: hoisted, the in-place op would change the derived input itself, again on every call (found with
// LibTorch's functional linear, which adds its bias with add_, in a P-tuning encoder).
#include <torch/csrc/jit/ir/irparser.h>

#include "compile/passes/passes.h"
#include "compile/program.h"
#include "support.h"

using namespace peft::compile_detail;

namespace {

at::Tensor run_twice_same(const std::string & ir, size_t * hoisted) {
  Program p;
  p.graph = std::make_shared<torch::jit::Graph>();
  torch::jit::parseIR(ir, p.graph.get());
  p.n_runtime = 1;
  p.sources = {at::randn({3, 3}), at::randn({3})};
  *hoisted = hoist_weight_computations(p);
  p.finalize();
  const at::Tensor x = at::randn({2, 3});
  const at::Tensor first = p.run({x});
  const at::Tensor second = p.run({x});
  EXPECT_TRUE(first.equal(second)) << "a second call differs: the graph changed a derived input";
  const at::Tensor w = p.sources[0], b = p.sources[1];
  EXPECT_TRUE(peft::test::all_close(first, at::matmul(x, w * w + b)));
  return first;
}

}  // namespace

TEST(Hoist, AValueChangedInPlaceStaysInTheGraph) {
  size_t hoisted = 0;
  run_twice_same(R"IR(
graph(%x : Float(2, 3), %w : Float(3, 3), %b : Float(3)):
  %one : int = prim::Constant[value=1]()
  %y : Float(3, 3) = aten::mul(%w, %w)
  %z : Float(3, 3) = aten::add_(%y, %b, %one)
  %out : Float(2, 3) = aten::matmul(%x, %z)
  return (%out))IR",
                 &hoisted);
  EXPECT_EQ(hoisted, 0u);
  // through a view: the view's writer changes the hoisted value too
  run_twice_same(R"IR(
graph(%x : Float(2, 3), %w : Float(3, 3), %b : Float(3)):
  %one : int = prim::Constant[value=1]()
  %y : Float(3, 3) = aten::mul(%w, %w)
  %v : Float(3, 3) = aten::view_as(%y, %w)
  %z : Float(3, 3) = aten::add_(%v, %b, %one)
  %out : Float(2, 3) = aten::matmul(%x, %z)
  return (%out))IR",
                 &hoisted);
  EXPECT_EQ(hoisted, 0u);
  // without the in-place op it is hoisted (and the result the same)
  run_twice_same(R"IR(
graph(%x : Float(2, 3), %w : Float(3, 3), %b : Float(3)):
  %one : int = prim::Constant[value=1]()
  %y : Float(3, 3) = aten::mul(%w, %w)
  %z : Float(3, 3) = aten::add(%y, %b, %one)
  %out : Float(2, 3) = aten::matmul(%x, %z)
  return (%out))IR",
                 &hoisted);
  EXPECT_EQ(hoisted, 2u);
}
