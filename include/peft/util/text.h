// Small string tests shared across the library.
#pragma once
#include <string>

namespace peft {

inline bool starts_with(const std::string & s, const std::string & prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

inline bool ends_with(const std::string & s, const std::string & suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace peft
