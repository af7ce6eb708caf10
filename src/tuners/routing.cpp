#include "peft/tuners/routing.h"

namespace peft {

at::Tensor RowRouting::mask(const std::string & name, int64_t dims) const {
  auto it = index->find(name);
  if (it == index->end()) return {};
  std::vector<int64_t> shape(static_cast<size_t>(dims), 1);
  shape[0] = rows->size(1);
  return rows->select(0, it->second).view(shape);
}

RoutingScope::RoutingScope(RowRouting & routing, const at::Tensor & rows, const std::map<std::string, int64_t> & index)
    : routing_(routing), saved_(routing) {
  routing_.rows = &rows;
  routing_.index = &index;
}

RoutingScope::~RoutingScope() { routing_ = saved_; }

}  // namespace peft
