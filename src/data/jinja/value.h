// The Jinja engine's values: undefined, none, bool, int, float, string, list/tuple, dict, namespace and
// callable (builtins, bound methods, macros), with Python's semantics for truth, str(), repr(), ==, < and
// tojson, since chat templates are written for Python Jinja. Also the UTF-8 text helpers the engine shares.
// Lists and dicts are immutable once built (templates run in an immutable sandbox); only a namespace
// changes, through `set ns.attr = ...`.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "peft/error.h"

namespace peft::jinja {

/// An error found while parsing or rendering; `at` is the byte offset in the template source it refers
/// to, or npos until the interpreter attaches the expression it was evaluating.
class TemplateError : public Error {
 public:
  static constexpr size_t npos = static_cast<size_t>(-1);
  explicit TemplateError(const std::string & message, size_t at = npos) : Error(message), message_(message), at_(at) {}
  const std::string & message() const { return message_; }
  size_t at() const { return at_; }

 private:
  std::string message_;
  size_t at_;
};

/// Throw a TemplateError (no position: the interpreter adds the expression's).
[[noreturn]] void template_fail(const std::string & message);

class Value;
class Renderer;

namespace detail {
/// The shared part of a string, list, dict, namespace or callable (or an undefined value's hint).
struct Heap {
  virtual ~Heap() = default;
};
}  // namespace detail

/// Arguments of a call: positional, then keyword (in call order).
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

/// What a callable runs: a builtin, a bound method or a macro.
using Native = std::function<Value(Renderer &, Args &)>;

/// An insertion-ordered string-keyed map (Python dicts keep insertion order, and tojson shows it).
class Dict {
 public:
  const Value * find(const std::string & key) const;
  void set(const std::string & key, Value value);
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  std::vector<std::pair<std::string, Value>>::const_iterator begin() const { return entries_.begin(); }
  std::vector<std::pair<std::string, Value>>::const_iterator end() const { return entries_.end(); }

 private:
  std::vector<std::pair<std::string, Value>> entries_;
  std::unordered_map<std::string, size_t> index_;  // built once there are more than a few entries
};

class Value {
 public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };

  /// Containers may nest at most this deep (deeper values would overflow the stack when printed or freed).
  static constexpr int kMaxDepth = 512;

  Value() : kind_(Kind::Undefined), i_(0) {}
  /// Undefined; `hint` names what was looked up, for error messages ("'foo' is undefined").
  static Value undefined(const std::string & hint = "");
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(std::string s);
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value dict(Dict d);
  static Value ns(Dict d);
  static Value callable(std::string name, Native fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }  // list or tuple
  bool is_tuple() const;
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }
  bool is_callable() const { return kind_ == Kind::Callable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }  // Int or Bool
  double as_float() const;                                                   // any number
  const std::string & str() const;
  const std::vector<Value> & items() const;
  const Dict & dict() const;   // Dict or Namespace
  Dict & ns_dict() const;      // a Namespace's attributes, to assign
  const std::string & callable_name() const;
  const Native & callable_fn() const;
  /// The hint of an undefined value ("" if none).
  std::string undefined_hint() const;

  /// Python truth: undefined, none, false, 0, 0.0, "", [], {} are false.
  bool truthy() const;
  /// Nesting depth of a container (0 for scalars).
  int depth() const { return depth_; }
  /// Whether a namespace or callable is inside (a namespace may not hold one: no cycles, no escaped macros).
  bool holds_reference() const { return holds_ref_; }
  /// Python's type name: 'str', 'int', 'list', 'dict', 'NoneType', ...
  std::string type_name() const;

 private:
  Kind kind_;
  bool holds_ref_ = false;
  int16_t depth_ = 0;
  union {
    bool b_;
    int64_t i_;
    double f_;
  };
  std::shared_ptr<detail::Heap> heap_;
};

// ---- Python semantics ----

/// str(v) as Python Jinja prints it: None, True, 1.5, 'a' -> a, [1, 'a'], {'k': 1}; undefined -> "".
std::string to_str(const Value & v);
/// repr(v): strings quoted and escaped as Python does.
std::string repr(const Value & v);
/// Python's float repr: shortest round-trip digits, "1.0", "1e+16", "inf", "nan".
std::string format_float(double f);
/// Python ==.
bool equals(const Value & a, const Value & b);
/// Python ordering: -1, 0, 1; TypeError (a TemplateError) between unorderable types. For strings,
/// case_insensitive compares lower-cased (the sort/unique filters' default).
int compare(const Value & a, const Value & b, bool case_insensitive = false);

/// json.dumps as transformers' tojson filter calls it (ensure_ascii, indent, separators, sort_keys).
struct JsonStyle {
  int indent = -1;  // < 0: one line
  bool ensure_ascii = false;
  std::string item_sep, key_sep;  // empty: Python's defaults (", " or "," with indent, and ": ")
  bool sort_keys = false;
};
std::string to_json(const Value & v, const JsonStyle & style);

/// A JSON value (messages, tools, ...) as a template value; object key order is kept for ordered_json.
Value from_json(const nlohmann::json & j);
Value from_json(const nlohmann::ordered_json & j);

// ---- UTF-8 text ----

/// Code points of a UTF-8 string. A byte that is not valid UTF-8 becomes U+DC80 + byte (Python's
/// surrogateescape), which utf8_append writes back as that byte: text round-trips unchanged.
std::vector<uint32_t> utf8_decode(const std::string & s);
void utf8_append(std::string & out, uint32_t cp);
std::string utf8_encode(const std::vector<uint32_t> & cps);
/// Number of code points.
size_t utf8_length(const std::string & s);
/// Python's str.isspace() for one code point.
bool is_space(uint32_t cp);
/// Simple case mapping (ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic; other scripts unchanged).
uint32_t to_upper(uint32_t cp);
uint32_t to_lower(uint32_t cp);
/// A letter or digit (ASCII, or any code point >= U+00C0 treated as a letter) -- for title() and wordcount.
bool is_alnum(uint32_t cp);

}  // namespace peft::jinja
