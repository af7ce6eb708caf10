// A small Jinja engine for the subset Hugging Face chat templates use, with the semantics of Python
// Jinja as transformers configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
// loop controls, the `generation` tag, tojson as json.dumps, raise_exception and strftime_now).
// Not supported: template inheritance and includes, call and filter blocks, recursive loops, `*args`
// and `**kwargs` in calls, `%` string formatting. Deliberately unlike Python Jinja, as @huggingface/jinja:
// an undefined value's attributes and items are undefined (not an error), and "\r\n" in template text is
// kept (Python writes "\n"). Integers are 64-bit (overflow is an error). Internal to the library (public
// API: ChatTemplate).
//
//   value.{h,cpp}, text.cpp    values and their Python semantics, UTF-8
//   lexer.cpp, parser.cpp      source -> tokens -> syntax tree (ast.h)
//   render.cpp, operators.cpp  statements and expressions; + - * / ~ == < in ...
//   builtins.cpp, methods.cpp  filters, tests and globals; str/dict methods and attributes
#pragma once
#include <cstdint>
#include <ctime>
#include <initializer_list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/jinja/ast.h"
#include "data/jinja/value.h"

namespace peft::jinja {

/// What one template may cost: templates come with downloaded models, so a hostile one must end in an
/// error, not a hang, a stack overflow or an exhausted memory.
struct Limits {
  int max_nesting = 256;                 // tags and expressions inside one another (parse time)
  int max_call_depth = 64;               // macro calls inside one another (recursion)
  int max_eval_depth = 2000;             // expression and statement frames at once, all calls together
  uint64_t max_steps = 10'000'000;       // statements and expressions run, loop iterations, items filters walk
  size_t max_output = 64u << 20;         // bytes of the output, and of any string a template builds
  size_t max_items = 1'000'000;          // items of a list a template builds
  int64_t max_range = 100'000;           // range() length (Python Jinja's sandbox has the same limit)
};

/// A parsed template. Errors (peft::Error) read "ORIGIN:LINE:COLUMN: what".
class Template {
 public:
  Template(std::string source, std::string origin, Limits limits = {});
  /// Render with `vars` (they shadow the globals); strftime_now() formats `now` (local time).
  std::string render(const Dict & vars, std::time_t now) const;
  const std::string & source() const { return source_; }
  /// "ORIGIN:LINE:COLUMN" of a byte offset in the source (column counted in characters).
  std::string where(size_t at) const;

 private:
  std::string source_, origin_;
  Limits limits_;
  std::shared_ptr<const Body> body_;
};

// ---- the interpreter, as the builtins see it ----

/// Variables of one scope (the globals, the template, a loop iteration, a macro call), chained outward.
struct Scope {
  explicit Scope(const Scope * parent_scope) : parent(parent_scope) {}
  const Value * find(const std::string & name) const;
  const Scope * parent;
  std::unordered_map<std::string, Value> vars;
};

class Renderer {
 public:
  Renderer(const Limits & limits, std::time_t now) : limits_(limits), now_(now) {}
  /// Render a template body with `scope` as its outermost scope.
  std::string run(const Body & body, Scope & scope);

  Value eval(const Expr & e, Scope & s);
  /// Call a callable value (builtin, bound method, macro).
  Value call(const Value & fn, Args & args);
  /// Apply a filter or a test by name (map("upper"), select("odd")).
  Value apply_filter(const std::string & name, const Value & v, Args & args);
  bool apply_test(const std::string & name, const Value & v, Args & args);

  /// Charge `n` steps against max_steps.
  void charge(uint64_t n);
  /// Refuse a string of `bytes` or a list of `items` past the limits (what: for the message).
  void check_string(size_t bytes, const char * what) const;
  void check_items(size_t items, const char * what) const;

  const Limits & limits() const { return limits_; }
  std::time_t now() const { return now_; }

 private:
  enum class Flow { Normal, Break, Continue };
  struct Depth;

  Limits limits_;
  std::time_t now_;
  uint64_t steps_ = 0;
  int eval_depth_ = 0;
  int call_depth_ = 0;

  Flow exec(const Body & body, Scope & s, std::string & out);
  Flow exec_stmt(const Stmt & st, Scope & s, std::string & out);
  Flow exec_node(const Stmt & st, Scope & s, std::string & out);
  Flow exec_for(const Stmt & st, Scope & s, std::string & out);
  void define_macro(const Stmt & st, Scope & s);
  Value call_macro(const Stmt & m, const Scope & def, Args & args);
  void assign(const Expr & target, const Value & v, Scope & s);
  void emit(std::string & out, const std::string & text) const;
  Value eval_node(const Expr & e, Scope & s);
  Value eval_call(const Expr & e, Scope & s);
  Args eval_args(const std::vector<Arg> & args, Scope & s);
  Value binary(const std::string & op, const Value & a, const Value & b);
  bool compare_op(const std::string & op, const Value & a, const Value & b);
};

// ---- builtins (builtins.cpp, methods.cpp) ----

using FilterFn = Value (*)(Renderer &, const Value &, Args &);
using TestFn = bool (*)(Renderer &, const Value &, Args &);
/// The filter or test of that name, or null.
FilterFn find_filter(const std::string & name);
TestFn find_test(const std::string & name);
/// range, namespace, dict, raise_exception, strftime_now.
void add_globals(Scope & scope);

/// obj.name and obj[key] as Jinja resolves them (a dict's methods, a string's methods, keys, items);
/// missing -> undefined, never an error.
Value get_attr(const Value & obj, const std::string & name);
Value get_item(const Value & obj, const Value & key);
/// obj[start:stop:step] on a list, tuple or string (Python's rules; parts may be undefined/none).
Value get_slice(Renderer & r, const Value & obj, const Value & start, const Value & stop, const Value & step);
/// Call obj.name(args) if `name` is a method of obj's type; false if there is none.
bool call_method(Renderer & r, const Value & obj, const std::string & name, Args & args, Value & result);
/// The items a for loop or a filter walks: a list's items, a dict's keys, a string's characters,
/// nothing for undefined; TypeError otherwise.
Value iterate(const Value & v);

/// Binds call arguments to parameter names:
///   Params p(args, "filter 'indent'", {"width", "first", "blank"});  p.get(0) ... (undefined if not given)
class Params {
 public:
  Params(const Args & args, const std::string & what, std::initializer_list<const char *> names);
  const Value & get(size_t i) const { return values_[i]; }
  bool given(size_t i) const { return !values_[i].is_undefined(); }
  /// Typed access with a default when not given (or none); TypeError naming the parameter otherwise.
  int64_t integer(size_t i, int64_t dflt) const;
  bool boolean(size_t i, bool dflt) const;
  std::string string(size_t i, const std::string & dflt) const;

 private:
  std::string what_;
  std::vector<std::string> names_;
  std::vector<Value> values_;
};

}  // namespace peft::jinja
