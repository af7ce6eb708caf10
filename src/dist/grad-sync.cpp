#include <chrono>

#include "peft/dist/dist.h"
#include "peft/error.h"

namespace peft {

struct GradientSync::Impl {
  std::shared_ptr<ProcessGroup> pg;
  std::vector<at::Tensor> params;
  std::vector<std::vector<size_t>> buckets;  // parameter indices; bucket 0 holds the last parameters
  std::vector<size_t> bucket_of;
  std::vector<at::Tensor> before;            // each .grad before this backward (earlier micro-batches)
  std::vector<at::Tensor> pending;           // this backward's gradient of each parameter
  std::vector<size_t> remaining;             // per bucket: gradients still to come
  std::vector<at::Tensor> flat;              // per launched bucket: the summed gradients
  std::vector<std::function<void()>> waits;
  size_t next = 0;                           // buckets launch in order on every rank
  bool sync = false;
  double wait_ms = 0;

  // the step's whole local gradient: earlier micro-batches plus this backward (the engine may already
  // have added this backward's part to .grad for tensors whose hooks ran before: .grad is not read)
  at::Tensor full_grad(size_t j) const {
    const at::Tensor & g = before[j];
    if (pending[j].defined()) return g.defined() ? g + pending[j] : pending[j];
    return g.defined() ? g : at::zeros_like(params[j]);
  }
  void launch(size_t b) {
    std::vector<at::Tensor> parts;
    for (size_t j : buckets[b]) parts.push_back(full_grad(j).reshape({-1}));
    flat[b] = at::cat(parts);
    waits[b] = pg->all_reduce_async(flat[b]);
  }
  void ready(size_t i, const at::Tensor & g) {
    if (!sync) return;
    pending[i] = pending[i].defined() ? pending[i] + g : g;
    const size_t b = bucket_of[i];
    if (remaining[b] > 0) --remaining[b];
    while (next < buckets.size() && remaining[next] == 0) launch(next++);
  }
};

GradientSync::GradientSync(std::shared_ptr<ProcessGroup> pg, std::vector<at::Tensor> params, int64_t bucket_bytes)
    : impl_(new Impl) {
  auto & I = *impl_;
  I.pg = std::move(pg);
  I.params = std::move(params);
  I.bucket_of.resize(I.params.size());
  // reverse order: the backward pass produces the last layers' gradients first
  int64_t bytes = 0;
  for (size_t k = I.params.size(); k-- > 0;) {
    if (I.buckets.empty() || bytes >= bucket_bytes) {
      I.buckets.emplace_back();
      bytes = 0;
    }
    I.buckets.back().push_back(k);
    I.bucket_of[k] = I.buckets.size() - 1;
    bytes += I.params[k].numel() * I.params[k].element_size();
  }
  I.pending.resize(I.params.size());
  I.before.resize(I.params.size());
  I.flat.resize(I.buckets.size());
  I.waits.resize(I.buckets.size());
  I.remaining.resize(I.buckets.size());
  for (size_t k = 0; k < I.params.size(); ++k) {
    PEFT_CHECK(I.params[k].requires_grad(), "gradient sync: parameter ", k, " does not require grad");
    I.params[k].register_hook([impl = impl_.get(), k](const at::Tensor & g) { impl->ready(k, g); });
  }
}

GradientSync::~GradientSync() = default;

void GradientSync::prepare(bool sync) {
  auto & I = *impl_;
  I.sync = sync;
  I.next = 0;
  for (size_t b = 0; b < I.buckets.size(); ++b) {
    I.remaining[b] = I.buckets[b].size();
    I.flat[b] = at::Tensor();
    I.waits[b] = nullptr;
  }
  for (size_t j = 0; j < I.params.size(); ++j) {
    I.pending[j] = at::Tensor();
    const at::Tensor & g = I.params[j].grad();
    I.before[j] = sync && g.defined() ? g.detach().clone() : at::Tensor();
  }
}

void GradientSync::finish() {
  auto & I = *impl_;
  if (!I.sync) return;
  // tensors that got no gradient this step (unused) complete their buckets as zeros, in order
  for (auto & r : I.remaining) r = 0;
  while (I.next < I.buckets.size()) I.launch(I.next++);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto & w : I.waits) w();
  I.wait_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  at::NoGradGuard g;
  for (size_t b = 0; b < I.buckets.size(); ++b) {
    int64_t at = 0;
    for (size_t j : I.buckets[b]) {
      const int64_t n = I.params[j].numel();
      at::Tensor summed = I.flat[b].narrow(0, at, n).view(I.params[j].sizes());
      if (I.params[j].grad().defined()) {
        I.params[j].mutable_grad().copy_(summed);
      } else {
        I.params[j].mutable_grad() = summed.clone();
      }
      at += n;
    }
  }
  I.sync = false;
  for (auto & p : I.pending) p = at::Tensor();
  for (auto & p : I.before) p = at::Tensor();
}

double GradientSync::last_wait_ms() const { return impl_->wait_ms; }
size_t GradientSync::buckets() const { return impl_->buckets.size(); }

}  // namespace peft
