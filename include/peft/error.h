// peft::Error and PEFT_CHECK: every error the library raises names the file, field, key or module at fault
// and, where one helps, a hint. Only the CLI catches; library code throws.
#pragma once
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>

namespace peft {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string & what) : std::runtime_error(what) {}
};

namespace detail {
inline void str_append(std::ostringstream &) {}
template <class T, class... R> void str_append(std::ostringstream & os, const T & v, const R &... rest) {
  os << v;
  str_append(os, rest...);
}
}  // namespace detail

/// Concatenate anything streamable into one string: str("tensor '", name, "' has ", n, " dims").
template <class... A> std::string str(const A &... a) {
  std::ostringstream os;
  detail::str_append(os, a...);
  return os.str();
}

[[noreturn]] void fail(const std::string & what);

/// What an error says, fit for a client or a log line: c10's backtrace (library paths and load
/// addresses) left out, the first line only, at most `max_bytes`, valid UTF-8.
std::string error_message(const std::exception & e, size_t max_bytes = 1000);

}  // namespace peft

#define PEFT_CHECK(cond, ...)                      \
  do {                                             \
    if (!(cond)) ::peft::fail(::peft::str(__VA_ARGS__)); \
  } while (0)
