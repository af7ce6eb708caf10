// Options structs and their checks: an OptionError names the field at fault, as a FieldNamer names it
// (the field itself, e.g. "train.lr", unless a caller maps fields to its own words: the command line
// gives its flags, "--lr"); and Choice<E>, an option that takes one of a few names, parsed once where it
// is set and compared as an enum everywhere else.
#pragma once
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "peft/error.h"

namespace peft {

/// A value, or a combination of values, of an options struct that cannot work; found before any work.
class OptionError : public Error {
 public:
  using Error::Error;
};

/// How an error names a field ("train.lr"); empty: the field as it is.
using FieldNamer = std::function<std::string(const std::string & field)>;

inline std::string field_name(const FieldNamer & namer, const std::string & field) {
  return namer ? namer(field) : field;
}

/// `fields` as namer names them, each name once, joined "a, b and c" (two fields may share a name: a
/// command line's --betas sets beta1 and beta2).
inline std::string field_names(const FieldNamer & namer, std::initializer_list<const char *> fields) {
  std::vector<std::string> names;
  for (const char * f : fields) {
    std::string n = field_name(namer, f);
    bool seen = false;
    for (const auto & m : names) seen = seen || m == n;
    if (!seen) names.push_back(std::move(n));
  }
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i == 0 ? "" : i + 1 == names.size() ? " and " : ", ") + names[i];
  return out;
}

/// Throw an OptionError unless `cond`.
#define PEFT_CHECK_OPTION(cond, ...)                                          \
  do {                                                                        \
    if (!(cond)) throw ::peft::OptionError(::peft::str(__VA_ARGS__));         \
  } while (0)

/// The value named `name` among choice_names(E{}) (found by argument-dependent lookup: a function
/// `const std::vector<std::string> & choice_names(E)` beside the enum, listing the names in the enum's
/// order). An unknown name is an OptionError: "FIELD must be a, b or c, got 'x'" (without a field:
/// "'x' is not one of a, b or c").
template <class E> E parse_choice(const std::string & name, const std::string & field = "") {
  const std::vector<std::string> & names = choice_names(E{});
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return static_cast<E>(i);
  }
  std::string list;
  for (size_t i = 0; i < names.size(); ++i) list += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  throw OptionError(field.empty() ? str("'", name, "' is not one of ", list) : str(field, " must be ", list, ", got '", name, "'"));
}

/// The name of `v` (choice_names(E{})[v]).
template <class E> const std::string & choice_name(E v) { return choice_names(E{})[static_cast<size_t>(v)]; }

/// An option holding an enum E: set from the enum or from its name (`o.lr_scheduler = "cosine"`, parsed
/// here, once), read as the enum (`o.lr_scheduler == LrScheduler::cosine`, `switch`).
template <class E> class Choice {
 public:
  Choice(E v) : v_(v) {}  // NOLINT: implicit on purpose
  Choice(const std::string & name) : v_(parse_choice<E>(name)) {}  // NOLINT
  Choice(const char * name) : v_(parse_choice<E>(name)) {}         // NOLINT
  operator E() const { return v_; }                                // NOLINT
  E value() const { return v_; }
  const std::string & name() const { return choice_name(v_); }

 private:
  E v_;
};

}  // namespace peft
