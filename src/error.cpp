#include "peft/error.h"

#include <c10/util/Exception.h>

#include "peft/util/utf8.h"

namespace peft {

void fail(const std::string & what) { throw Error(what); }

std::string error_message(const std::exception & e, size_t max_bytes) {
  const auto * c10 = dynamic_cast<const c10::Error *>(&e);
  std::string s = c10 ? c10->what_without_backtrace() : e.what();
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  if (s.size() > max_bytes) s = s.substr(0, max_bytes) + "...";
  return utf8_lossy(s);  // (a message may quote bytes of a file or a request)
}

}  // namespace peft
