#include "peft/tuners/routing.h"

namespace peft {

namespace {
thread_local RowRouting g_routing;
}

at::Tensor RowRouting::mask(const std::string & name, int64_t dims) const {
  auto it = index->find(name);
  if (it == index->end()) return {};
  std::vector<int64_t> shape(static_cast<size_t>(dims), 1);
  shape[0] = rows->size(1);
  return rows->select(0, it->second).view(shape);
}

RoutingScope::RoutingScope(const at::Tensor & rows, const std::map<std::string, int64_t> & index) : saved_(g_routing) {
  g_routing.rows = &rows;
  g_routing.index = &index;
}

RoutingScope::~RoutingScope() { g_routing = saved_; }

const RowRouting & current_routing() { return g_routing; }

}  // namespace peft
