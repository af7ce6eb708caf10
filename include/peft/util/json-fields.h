// Typed reads of a JSON object's fields, with one wording for a field of the wrong type or out of range
// ("must be an integer, got 3.5", "must be in [0, 2], got 7"). The readers of config.json (ConfigReader),
// adapter_config.json (FieldReader) and OpenAI requests (serve/openai.cpp) are this with their own
// defaults, their own prefix ("config.json: field 'r' ", "'temperature' ") and their own error type.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>

namespace peft {

class JsonFields {
 public:
  /// Reports a bad field and throws: `field` is the key, `message` what is wrong ("must be a number, got
  /// \"x\""). It must not return.
  using Fail = std::function<void(const char * field, const std::string & message)>;
  JsonFields(const nlohmann::json & object, Fail fail) : j_(object), fail_(std::move(fail)) {}

  /// Present and not null.
  bool has(const char * k) const;
  /// The value (present: the caller checks has() first).
  const nlohmann::json & at(const char * k) const { return j_.at(k); }
  /// An integer in [lo, hi] (the message says ">= lo" when hi is the largest int64).
  int64_t integer(const char * k, int64_t lo = std::numeric_limits<int64_t>::min(),
                  int64_t hi = std::numeric_limits<int64_t>::max()) const;
  /// A number (an integer too); [lo, hi] checked by the caller's own rule when it has one.
  double number(const char * k) const;
  /// A number in [lo, hi].
  double number_in(const char * k, double lo, double hi) const;
  bool boolean(const char * k) const;
  std::string string(const char * k) const;
  /// Report `message` for field `k` (a rule of the caller's: "must be positive, got 0").
  [[noreturn]] void fail(const char * k, const std::string & message) const;

 private:
  const nlohmann::json & j_;
  Fail fail_;
};

}  // namespace peft
