#include "connections.h"

#include <dirent.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>

namespace peft::serve {

ConnectionWorkers::EnqueueResult ConnectionWorkers::enqueue(std::function<void()> fn) {
  std::lock_guard<std::mutex> g(mu_);
  if (stop_) return static_cast<EnqueueResult>(false);
  jobs_.push_back(std::move(fn));
  // a job no idle worker will take gets a new one, up to the cap (beyond it, jobs wait their turn)
  if (jobs_.size() > idle_ && threads_.size() < max_) threads_.emplace_back([this] { work(); });
  cv_.notify_one();
  return static_cast<EnqueueResult>(true);
}

void ConnectionWorkers::shutdown() {
  std::vector<std::thread> ts;
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
    ts.swap(threads_);
  }
  cv_.notify_all();
  for (auto & t : ts) {
    if (t.joinable()) t.join();
  }
}

size_t ConnectionWorkers::threads() const {
  std::lock_guard<std::mutex> g(mu_);
  return threads_.size();
}

void ConnectionWorkers::work() {
  while (true) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> lk(mu_);
      ++idle_;
      cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping
      fn = std::move(jobs_.front());
      jobs_.pop_front();
    }
    fn();
  }
}

namespace {

bool address_of(const sockaddr_storage & a, socklen_t len, std::string & host, int & port) {
  char h[NI_MAXHOST], p[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<const sockaddr *>(&a), len, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return false;
  }
  host = h;
  port = std::atoi(p);
  return true;
}

// The first of this process's sockets for which match(fd) holds (-1: none).
int find_socket(const std::function<bool(int)> & match) {
  DIR * d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent * e = ::readdir(d)) {
    char * end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    struct stat st;
    if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (match(static_cast<int>(fd))) {
      found = static_cast<int>(fd);
      break;
    }
  }
  ::closedir(d);
  return found;
}

}  // namespace

bool widen_listen_backlog(int port) {
  const int fd = find_socket([&](int fd) {
    int listening = 0;
    socklen_t n = sizeof listening;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) != 0 || !listening) return false;
    sockaddr_storage local{};
    socklen_t ll = sizeof local;
    std::string host;
    int p = -1;
    return ::getsockname(fd, reinterpret_cast<sockaddr *>(&local), &ll) == 0 && address_of(local, ll, host, p) && p == port;
  });
  return fd >= 0 && ::listen(fd, SOMAXCONN) == 0;  // (listen again on a listening socket: a new backlog)
}

int find_request_socket(const httplib::Request & req) {
  if (req.remote_port < 0 || req.local_port < 0) return -1;
  return find_socket([&](int fd) {
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr *>(&local), &ll) != 0) return false;
    if (::getpeername(fd, reinterpret_cast<sockaddr *>(&peer), &pl) != 0) return false;
    std::string lh, ph;
    int lp = -1, pp = -1;
    if (!address_of(local, ll, lh, lp) || !address_of(peer, pl, ph, pp)) return false;
    return lp == req.local_port && pp == req.remote_port && ph == req.remote_addr;
  });
}

bool peer_closed(int fd) {
  if (fd < 0) return false;
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return false;                                   // bytes waiting (a pipelined request)
  if (n == 0) return true;                                   // EOF: the client closed
  return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;  // reset, or another error
}

}  // namespace peft::serve
