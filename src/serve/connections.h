// The HTTP server's connections (internal to src/serve): a worker thread per connection, started on
// demand up to a cap and reused, so idle or slow clients never starve /health or other clients (the
// cap is the limit); and a request's own socket, to notice that its client has gone while a long
// completion is still being computed.
#pragma once
#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace peft::serve {

class ConnectionWorkers : public httplib::TaskQueue {
 public:
  explicit ConnectionWorkers(size_t max_threads) : max_(max_threads) {}
  ~ConnectionWorkers() override { shutdown(); }
  // void in cpp-httplib 0.11 (Debian 12), bool in 0.18 (Debian 13; false: the connection is closed)
  using EnqueueResult = decltype(std::declval<httplib::TaskQueue &>().enqueue(std::function<void()>()));
  EnqueueResult enqueue(std::function<void()> fn) override;
  void shutdown() override;
  size_t threads() const;

 private:
  void work();
  size_t max_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false;
};

/// Raise the listen backlog of this process's listening socket on `port` to the system's maximum
/// (cpp-httplib 0.11 listens with a backlog of 5: a burst of connections overflowed it, and each
/// overflowing client waited a second for its SYN to be sent again). False if no such socket was found.
bool widen_listen_backlog(int port);

/// The socket of the connection a request came on (-1 if not found): the one whose local and peer
/// ports and peer address are the request's.
int find_request_socket(const httplib::Request & req);

/// True when the peer of `fd` has closed its side (EOF or an error; pipelined bytes waiting to be read
/// are not a close). A socket of -1 is never closed.
bool peer_closed(int fd);

}  // namespace peft::serve
