// Data-parallel training across processes on LibTorch's c10d: rendezvous through a TCPStore (a FileStore
// on one machine, when `peft train --nproc-per-node` starts the ranks), collectives
// through Gloo (CPU; a CUDA build would take NCCL here, see docs/design/distributed.md), and the
// gradients of the trainable tensors summed across ranks in buckets that are all-reduced while the
// backward pass is still running. Environment as torchrun sets it: RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace peft {

struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// PEFT_RENDEZVOUS_FILE (set by `peft train --nproc-per-node` on one machine): the ranks meet through
  /// this file (c10d's FileStore, in a folder only this user can open) instead of a TCPStore, so nothing
  /// listens beyond Gloo's connections on 127.0.0.1. LibTorch 1.13's TCPStore server binds every
  /// interface (its Socket::listen takes a port, no address): ranks started by hand or across machines
  /// serve the store that way, unless every rank is given the same fresh PEFT_RENDEZVOUS_FILE.
  std::string store_file;
  /// torchrun's variables (all absent: one process). Malformed values are errors naming the variable.
  static DistEnv from_env();
  bool distributed() const { return world_size > 1; }
};

/// A process group of `world_size` ranks (Gloo).
class ProcessGroup {
 public:
  /// Rendezvous: rank 0 serves the TCPStore at master_addr:master_port, every rank connects (with
  /// store_file: every rank opens that FileStore, and Gloo listens on 127.0.0.1); a peer
  /// that does not arrive within `timeout`, a port in use, an unreachable master or ranks that disagree
  /// on the world size are errors naming them. Collectives time out after `timeout` too.
  static std::shared_ptr<ProcessGroup> create(const DistEnv & env, std::chrono::milliseconds timeout);
  ~ProcessGroup();
  int rank() const;
  int size() const;
  /// Sum `t` across ranks in place; the returned function waits for it.
  std::function<void()> all_reduce_async(at::Tensor t);
  void all_reduce(at::Tensor t);
  double sum(double v);
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Sums the gradients of `params` across ranks: hooks on the tensors gather each gradient as backward
/// produces it; a bucket (about `bucket_bytes`) is all-reduced as soon as all of its gradients are there,
/// in a fixed order on every rank, so communication overlaps the rest of the backward pass.
class GradientSync {
 public:
  GradientSync(std::shared_ptr<ProcessGroup> pg, std::vector<at::Tensor> params, int64_t bucket_bytes = 4 << 20);
  ~GradientSync();
  /// Before a backward: sync = this backward completes the step's gradients (the last micro-batch);
  /// earlier micro-batches only accumulate locally.
  void prepare(bool sync);
  /// After the last backward: wait for every bucket and write the summed gradients.
  void finish();
  /// Milliseconds the last finish() waited (communication not hidden behind the backward pass).
  double last_wait_ms() const;
  size_t buckets() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft
