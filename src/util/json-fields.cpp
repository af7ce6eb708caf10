#include "peft/util/json-fields.h"

#include "peft/error.h"

namespace peft {

bool JsonFields::has(const char * k) const { return j_.contains(k) && !j_[k].is_null(); }

void JsonFields::fail(const char * k, const std::string & message) const {
  fail_(k, message);
  peft::fail(str("field '", k, "' ", message));  // (a Fail that returned)
}

int64_t JsonFields::integer(const char * k, int64_t lo, int64_t hi) const {
  const auto & v = at(k);
  if (!v.is_number_integer()) fail(k, str("must be an integer, got ", v.dump()));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    fail(k, hi == std::numeric_limits<int64_t>::max() ? str("must be >= ", lo, ", got ", x)
                                                       : str("must be in [", lo, ", ", hi, "], got ", x));
  }
  return x;
}

double JsonFields::number(const char * k) const {
  const auto & v = at(k);
  if (!v.is_number()) fail(k, str("must be a number, got ", v.dump()));
  return v.get<double>();
}

double JsonFields::number_in(const char * k, double lo, double hi) const {
  const double x = number(k);
  if (!(x >= lo && x <= hi)) fail(k, str("must be in [", lo, ", ", hi, "], got ", x));
  return x;
}

bool JsonFields::boolean(const char * k) const {
  const auto & v = at(k);
  if (!v.is_boolean()) fail(k, str("must be true or false, got ", v.dump()));
  return v.get<bool>();
}

std::string JsonFields::string(const char * k) const {
  const auto & v = at(k);
  if (!v.is_string()) fail(k, str("must be a string, got ", v.dump()));
  return v.get<std::string>();
}

}  // namespace peft
