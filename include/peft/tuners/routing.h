// Row routing for mixed-adapter batches (PEFT's adapter_names): while a RoutingScope is alive, the adapter
// layers of its model (they read it from the model's AdapterState, TunerLayer::routing()) compute every
// adapter they hold on the whole batch and keep, per row, the one the row names. The routing is a (A, B)
// float tensor (row b uses adapter a), so a compiled graph takes it as an input: any assignment of adapters
// to rows replays the same graph. PeftModel::forward_unchecked opens the scope for an input with
// adapter_rows.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

namespace peft {

struct RowRouting {
  const at::Tensor * rows = nullptr;                        // (A, B)
  const std::map<std::string, int64_t> * index = nullptr;  // adapter name -> row of `rows`
  bool active() const { return rows != nullptr; }
  /// (B, 1, ..., 1) mask of adapter `name` for an activation of `dims` dimensions (undefined if absent).
  at::Tensor mask(const std::string & name, int64_t dims) const;
};

/// Sets `routing` (a model's, AdapterState::routing_) for its lifetime; the previous value after.
class RoutingScope {
 public:
  RoutingScope(RowRouting & routing, const at::Tensor & rows, const std::map<std::string, int64_t> & index);
  ~RoutingScope();
  RoutingScope(const RoutingScope &) = delete;
  RoutingScope & operator=(const RoutingScope &) = delete;

 private:
  RowRouting & routing_;
  RowRouting saved_;
};

}  // namespace peft
