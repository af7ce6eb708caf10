// AdapterState: the one place that says which adapters a model runs. A PeftModel owns it; every adapter
// layer of that model reads it (active set, disabled flag) instead of keeping its own copy. Its version
// moves on every change of what a forward computes, whoever makes it (the model, or a layer reached
// through PeftModel::tuner_layers()): the compile layer replays a cached graph only while it is unchanged.
//
// AdapterStateKey: the same state as a value (compile cache key): adapters and their injections, the
// active set, the disabled flag and, per adapter layer, its active adapters with their method settings
// and its merged adapters. Two equal keys run the same computation.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "peft/tuners/routing.h"

namespace peft {

class AdapterState {
 public:
  const std::vector<std::string> & active() const { return active_; }
  bool disabled() const { return disabled_; }
  uint64_t version() const { return version_; }
  /// Record that what a forward computes changed (layers call it on merge, new tensors, deletion).
  void touch() { ++version_; }
  /// The rows' adapters while the model runs a mixed-adapter batch (routing.h); inactive otherwise.
  const RowRouting & routing() const { return routing_; }
  RowRouting & routing() { return routing_; }

 private:
  friend class PeftModel;  // the only writer of the active set and the disabled flag
  void set_active(std::vector<std::string> names) {
    active_ = std::move(names);
    touch();
  }
  void set_disabled(bool d) {
    if (d != disabled_) touch();
    disabled_ = d;
  }
  std::vector<std::string> active_;
  bool disabled_ = false;
  uint64_t version_ = 1;
  RowRouting routing_;
};

/// One adapter layer's part of the key.
struct LayerStateKey {
  std::string path;
  std::vector<std::pair<std::string, std::string>> active;  // adapters active here, each with its method's signature
  std::vector<std::string> merged;                          // merged here, in merge order
  bool operator==(const LayerStateKey & o) const { return path == o.path && active == o.active && merged == o.merged; }
  bool operator!=(const LayerStateKey & o) const { return !(*this == o); }
};

struct AdapterStateKey {
  std::vector<std::pair<std::string, uint64_t>> injections;  // adapter -> injection id (a reload is new)
  std::vector<std::string> active;
  bool disabled = false;
  std::vector<LayerStateKey> layers;
  bool operator==(const AdapterStateKey & o) const {
    return injections == o.injections && active == o.active && disabled == o.disabled && layers == o.layers;
  }
  bool operator!=(const AdapterStateKey & o) const { return !(*this == o); }
  /// The first field that differs from `before`, as "field: old -> new" (empty when equal).
  std::string diff(const AdapterStateKey & before) const;
};

}  // namespace peft
