// IA3 (PEFT §2.5): learned rescaling vectors. On Linear layers:
//   non-feed-forward: y = base(x) * l        l (O, 1)
//   feed-forward:     y = base(x * l)        l (1, I)
// Several active adapters multiply. Merge scales W's rows (or columns); unmerge divides by (l + 1e-8).
#pragma once
#include <optional>
#include <map>

#include "peft/nn/layers.h"
#include "peft/tuners/tuner-layer.h"

namespace peft {

/// An IA3 config's options, parsed once.
struct IA3Options : MethodOptions {
  std::vector<std::string> feedforward_list;        // list form: name suffixes
  std::optional<std::string> feedforward_regex;     // string form: full-match regex
  bool init_ones = true;                            // init_ia3_weights
  /// Does module `path` scale its input (a feed-forward module) rather than its output?
  bool is_feedforward(const std::string & path) const;
};

class IA3Linear : public TunerLayer {
 public:
  explicit IA3Linear(LayerPtr base);
  void add_adapter(const std::string & name, bool feedforward, bool init_ones);

  std::string adapter_signature(const std::string & name) const override;

  LinearBase & linear() const;
  at::Tensor vector(const std::string & name) const;  // ia3_l

 protected:
  void merge_one(const std::string & name, bool safe) override;
  void unmerge_one(const std::string & name) override;
  void forget(const std::string & name) override;
  at::Tensor forward_active(const at::Tensor & x) override;

 private:
  std::map<std::string, bool> feedforward_;
  AdapterDict * l_;
};

}  // namespace peft
