// Where a step's time goes, operator by operator: LibTorch's RecordFunction callbacks time every op the
// calling thread dispatches (eager ops and the compiled graph's, peft:: ops included) and sum their self
// time (an op's own time, less the ops it called). Used by `peft bench --profile`.
#pragma once
#include <memory>
#include <string>

namespace peft::cli {

class OpProfile {
 public:
  OpProfile();  // starts timing this thread's ops
  ~OpProfile();
  OpProfile(const OpProfile &) = delete;
  OpProfile & operator=(const OpProfile &) = delete;

  /// Stop timing; the `n` ops with the most self time, per step of `steps`, as a table.
  std::string report(int n, int steps);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace peft::cli
