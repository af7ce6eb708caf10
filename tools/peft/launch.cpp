#include "launch.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>
#include <vector>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft::cli {

namespace {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  PEFT_CHECK(fd >= 0, "cannot open a socket to find a free port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0;
  ::close(fd);
  PEFT_CHECK(ok, "cannot find a free port for the rendezvous");
  return ntohs(a.sin_port);
}

std::vector<std::string> own_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> args;
  for (std::string a; std::getline(in, a, '\0');) args.push_back(a);
  return args;
}

// SIGINT / SIGTERM at the launcher: passed on to every worker, which stops after its step and saves (a
// second one passed on stops them at once). The workers have their own process group, so a Ctrl-C at
// the terminal reaches them once, through here, not twice (once from the terminal, once forwarded).
volatile std::sig_atomic_t g_signal = 0, g_signals = 0;
extern "C" void on_launcher_signal(int sig) {
  g_signal = sig;
  g_signals = g_signals + 1;
}

std::string status_text(int status) {
  if (WIFEXITED(status)) return str("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return str("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return "stopped";
}

}  // namespace

int launch_workers(const LaunchOptions & o) {
  const int port = o.master_port > 0 ? o.master_port : (o.nnodes == 1 ? free_port() : 29500);
  const int world = o.nproc_per_node * o.nnodes;
  // one machine: the ranks meet through a file in a folder only this user can open (no listening socket
  // for the store at all: LibTorch 1.13's TCPStore server always binds every interface), and Gloo's
  // connections listen on 127.0.0.1
  const bool one_machine = o.nnodes == 1;
  std::string store_dir;
  if (one_machine) {
    const char * tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/peft-rendezvous-XXXXXX";
    PEFT_CHECK(::mkdtemp(tmpl.data()) != nullptr, "cannot create a rendezvous folder '", tmpl, "': ",
               std::strerror(errno));
    store_dir = tmpl;
  }
  struct RemoveAtEnd {  // the folder goes when the launcher returns or throws
    std::string dir;
    ~RemoveAtEnd() {
      if (!dir.empty()) remove_tree(dir);
    }
  } remove_at_end{store_dir};
  const std::string master_addr = one_machine ? "127.0.0.1" : o.master_addr;
  const std::vector<std::string> args = own_arguments();
  std::map<pid_t, int> ranks;
  for (int local = 0; local < o.nproc_per_node; ++local) {
    const int rank = o.node_rank * o.nproc_per_node + local;
    const pid_t pid = ::fork();
    PEFT_CHECK(pid >= 0, "cannot start worker ", rank, ": ", std::strerror(errno));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a killed launcher takes its workers along
      ::setpgid(0, 0);                     // (signals from the terminal come through the launcher)
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node).c_str(), 1);
      ::setenv("MASTER_ADDR", master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      if (one_machine) ::setenv("PEFT_RENDEZVOUS_FILE", (store_dir + "/store").c_str(), 1);
      else ::unsetenv("PEFT_RENDEZVOUS_FILE");
      std::vector<char *> argv;
      for (const auto & a : args) argv.push_back(const_cast<char *>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      ::_exit(127);
    }
    ranks[pid] = rank;
  }
  std::cerr << "launched " << o.nproc_per_node << " workers (ranks " << o.node_rank * o.nproc_per_node << "-"
            << (o.node_rank + 1) * o.nproc_per_node - 1 << " of " << world << ", rendezvous "
            << (one_machine ? store_dir + "/store" : str(master_addr, ":", port)) << ")\n";
  struct sigaction sa {}, old_int {}, old_term {};
  sa.sa_handler = on_launcher_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // (no SA_RESTART: waitpid returns to pass the signal on)
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  int result = 0, forwarded = 0;
  while (!ranks.empty()) {
    while (forwarded < g_signals) {
      ++forwarded;
      for (const auto & r : ranks) ::kill(r.first, g_signal);
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    auto it = ranks.find(pid);
    if (it == ranks.end()) continue;
    const int rank = it->second;
    ranks.erase(it);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    // stopped by a signal we passed on: the others finish their step and save too (no SIGTERM from here)
    if (forwarded > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 128 + g_signal) {
      if (result == 0) result = 128 + g_signal;
      continue;
    }
    if (result == 0 || result > 1) {
      std::cerr << "error: rank " << rank << " " << status_text(status) << "; stopping the other ranks\n";
      result = 1;
      for (const auto & r : ranks) ::kill(r.first, SIGTERM);
      // what has not stopped within 5 s is killed
      std::thread([pids = ranks] {
        std::this_thread::sleep_for(std::chrono::seconds(5));
        for (const auto & r : pids) ::kill(r.first, SIGKILL);
      }).detach();
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return result;
}

}  // namespace peft::cli
