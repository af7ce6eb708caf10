// OpProfile (op-profile.h).
#include "op-profile.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <vector>

namespace peft::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Frame {
  Clock::time_point start;
  double children_us = 0;
};

struct Totals {
  std::map<std::string, std::pair<double, int64_t>> self;  // op -> (self microseconds, calls)
  std::vector<Frame> stack;
};

thread_local Totals * t_totals = nullptr;

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction &) {
  if (t_totals) t_totals->stack.push_back({Clock::now(), 0});
  return nullptr;
}

void on_end(const at::RecordFunction & fn, at::ObserverContext *) {
  if (!t_totals || t_totals->stack.empty()) return;
  const Frame f = t_totals->stack.back();
  t_totals->stack.pop_back();
  const double us = std::chrono::duration<double, std::micro>(Clock::now() - f.start).count();
  auto & e = t_totals->self[fn.name()];
  e.first += us - f.children_us;
  e.second += 1;
  if (!t_totals->stack.empty()) t_totals->stack.back().children_us += us;
}

}  // namespace

struct OpProfile::State {
  Totals totals;
  at::CallbackHandle handle = 0;
  bool running = false;
};

OpProfile::OpProfile() : s_(std::make_unique<State>()) {
  t_totals = &s_->totals;
  s_->handle = at::addThreadLocalCallback(at::RecordFunctionCallback(on_start, on_end));
  s_->running = true;
}

OpProfile::~OpProfile() {
  if (s_->running) at::removeCallback(s_->handle);
  if (t_totals == &s_->totals) t_totals = nullptr;
}

std::string OpProfile::report(int n, int steps) {
  if (s_->running) {
    at::removeCallback(s_->handle);
    s_->running = false;
    t_totals = nullptr;
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> ops(s_->totals.self.begin(), s_->totals.self.end());
  std::sort(ops.begin(), ops.end(), [](const auto & a, const auto & b) { return a.second.first > b.second.first; });
  double total = 0;
  for (const auto & op : ops) total += op.second.first;
  const double per = std::max(1, steps);
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "    %-34s %10s %8s %7s\n", "op (self time)", "us/step", "calls", "share");
  out += buf;
  for (int i = 0; i < n && i < static_cast<int>(ops.size()); ++i) {
    const auto & op = ops[static_cast<size_t>(i)];
    std::snprintf(buf, sizeof buf, "    %-34s %10.1f %8.1f %6.1f%%\n", op.first.c_str(), op.second.first / per,
                  op.second.second / per, total > 0 ? 100.0 * op.second.first / total : 0.0);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "    %-34s %10.1f\n", "all ops", total / per);
  out += buf;
  return out;
}

}  // namespace peft::cli
