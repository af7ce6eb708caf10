// peft train --nproc-per-node N: start N worker processes of this same command with torchrun's
// environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), like torchrun's standalone
// mode. A worker that fails makes the launcher stop the others and exit 1 naming its rank.
#pragma once
#include <string>

namespace peft::cli {

struct LaunchOptions {
  int nproc_per_node = 1, nnodes = 1, node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: a free port (one node)
};

/// Runs the workers to the end; the exit code for the launcher.
int launch_workers(const LaunchOptions & o);

}  // namespace peft::cli
