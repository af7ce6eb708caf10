#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>

#include "peft/dist/dist.h"
#include "peft/error.h"

namespace peft {

namespace {

int env_int(const char * name, int fallback, int lo, int hi) {
  const char * v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char * end = nullptr;
  const long x = std::strtol(v, &end, 10);
  PEFT_CHECK(end != v && *end == '\0' && x >= lo && x <= hi, "environment variable ", name, "='", v,
             "' must be an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(x);
}

// LibTorch >= 2.4 serves a TCPStore with libuv unless told otherwise, and one built without libuv (Debian's
// 2.6) then refuses to serve: the classic server, which every version has (1.13 has no such option)
template <class O> auto classic_tcpstore(O & o, int) -> decltype(o.useLibUV = false, void()) { o.useLibUV = false; }
template <class O> void classic_tcpstore(O &, long) {}

}  // namespace

DistEnv DistEnv::from_env() {
  DistEnv e;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int("LOCAL_RANK", 0, 0, 1 << 20);
  if (const char * a = std::getenv("MASTER_ADDR"); a != nullptr && *a != '\0') e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  if (const char * f = std::getenv("PEFT_RENDEZVOUS_FILE"); f != nullptr && *f != '\0') e.store_file = f;
  return e;
}

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  std::shared_ptr<c10d::ProcessGroupGloo> pg;
  int rank = 0, size = 1;
};

std::shared_ptr<ProcessGroup> ProcessGroup::create(const DistEnv & env, std::chrono::milliseconds timeout) {
  auto out = std::shared_ptr<ProcessGroup>(new ProcessGroup);
  auto & I = *(out->impl_ = std::make_unique<Impl>());
  I.rank = env.rank;
  I.size = env.world_size;
  // under torchrun's agent the store is served already: every rank is a client, under the agent's prefix
  const char * agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  const bool agent_store = agent != nullptr && std::string(agent) == "True";
  const bool file_store = !env.store_file.empty() && !agent_store;
  const std::string where = file_store ? env.store_file : str(env.master_addr, ":", env.master_port);
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(env.master_port);
  o.isServer = env.rank == 0 && !agent_store;
  o.numWorkers = env.world_size;
  o.waitWorkers = false;
  o.timeout = timeout;
  classic_tcpstore(o, 0);
  try {
    if (file_store) {
      I.store = c10::make_intrusive<c10d::FileStore>(env.store_file, env.world_size);
      I.store->setTimeout(timeout);
    } else {
      I.store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
    }
    if (agent_store) {
      const char * restart = std::getenv("TORCHELASTIC_RESTART_COUNT");
      I.store = c10::make_intrusive<c10d::PrefixStore>(str("/worker/attempt_", restart ? restart : "0"), I.store);
    }
  } catch (const std::exception & e) {
    if (file_store) fail(str("rank ", env.rank, " cannot open the rendezvous file ", where, ": ", e.what()));
    fail(env.rank == 0 ? str("rank 0 cannot serve the rendezvous at ", where, " (MASTER_PORT in use?): ", e.what())
                       : str("rank ", env.rank, " cannot reach the master at ", where, " within ", timeout.count() / 1000.0,
                             " s: ", e.what()));
  }
  // every rank announces itself with its world size; everyone waits for all of them
  try {
    I.store->set(str("peft/rank/", env.rank), std::vector<uint8_t>{});
    I.store->set(str("peft/world/", env.rank), [&] {
      const std::string s = std::to_string(env.world_size);
      return std::vector<uint8_t>(s.begin(), s.end());
    }());
    if (env.rank == 0) {
      std::vector<std::string> keys;
      for (int r = 0; r < env.world_size; ++r) keys.push_back(str("peft/rank/", r));
      try {
        I.store->wait(keys, timeout);
      } catch (const std::exception &) {
        std::string missing;
        for (int r = 0; r < env.world_size; ++r) {
          if (!I.store->check({str("peft/rank/", r)})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        }
        fail(str("rank(s) ", missing, " never arrived at the rendezvous at ", where, " within ",
                 timeout.count() / 1000.0, " s"));
      }
    }
    I.store->wait({"peft/rank/0"}, timeout);
    const auto w = I.store->get("peft/world/0");
    const int world0 = std::stoi(std::string(w.begin(), w.end()));
    PEFT_CHECK(world0 == env.world_size, "rank ", env.rank, " has WORLD_SIZE ", env.world_size, ", rank 0 has ", world0,
               ": every rank must be started with the same world size");
  } catch (const Error &) {
    throw;
  } catch (const std::exception & e) {
    fail(str("rendezvous at ", where, " failed for rank ", env.rank, ": ", e.what()));
  }
  auto opts = c10d::ProcessGroupGloo::Options::create();
  // on one machine every rank talks over loopback; across machines Gloo picks this host's interface
  const bool local = file_store || env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
  opts->devices.push_back(local ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                : c10d::ProcessGroupGloo::createDefaultDevice());
  opts->timeout = timeout;
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("gloo", I.store);
  try {
    I.pg = std::make_shared<c10d::ProcessGroupGloo>(prefixed, env.rank, env.world_size, opts);
  } catch (const std::exception & e) {
    fail(str("rank ", env.rank, ": cannot connect the process group: ", e.what()));
  }
  return out;
}

ProcessGroup::~ProcessGroup() = default;
int ProcessGroup::rank() const { return impl_->rank; }
int ProcessGroup::size() const { return impl_->size; }

std::function<void()> ProcessGroup::all_reduce_async(at::Tensor t) {
  std::vector<at::Tensor> v{t};
  auto work = impl_->pg->allreduce(v);
  const int rank = impl_->rank;
  return [work, rank]() {
    try {
      work->wait();
    } catch (const std::exception & e) {
      fail(str("rank ", rank, ": an all-reduce failed (a peer stopped or timed out): ", e.what()));
    }
  };
}

void ProcessGroup::all_reduce(at::Tensor t) { all_reduce_async(t)(); }

double ProcessGroup::sum(double v) {
  at::Tensor t = at::full({1}, v, at::kDouble);
  all_reduce(t);
  return t.item<double>();
}

void ProcessGroup::barrier() { all_reduce(at::zeros({1})); }

}  // namespace peft
