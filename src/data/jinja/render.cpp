// The Jinja interpreter: statements write into the output, expressions evaluate to values, with
// Python's scoping (a for loop's iteration and a macro call are scopes; if is not; a macro sees the
// scope it was defined in) and the limits of jinja::Limits charged as it goes.
#include <cmath>
#include <limits>

#include "data/jinja/jinja.h"

namespace peft::jinja {

namespace {

using EK = Expr::Kind;
using SK = Stmt::Kind;

// Filter and test names are checked when the template is parsed, as Python Jinja does.
void check_names(const Expr * e) {
  if (!e) return;
  if (e->kind == EK::Filter && !find_filter(e->name)) throw TemplateError(str("no filter named '", e->name, "'"), e->at);
  if (e->kind == EK::Test && !find_test(e->name)) throw TemplateError(str("no test named '", e->name, "'"), e->at);
  for (const auto & x : e->items) check_names(x.get());
  for (const auto & a : e->args) check_names(a.value.get());
}

void check_names(const Body & body) {
  for (const auto & s : body) {
    check_names(s->expr.get());
    check_names(s->target.get());
    check_names(s->cond.get());
    for (const auto & p : s->params) check_names(p.value.get());
    check_names(s->body);
    check_names(s->orelse);
  }
}

[[noreturn]] void fail_undefined(const Value & v) {
  const std::string hint = v.undefined_hint();
  template_fail(hint.empty() ? "an undefined value was used" : hint);
}

}  // namespace

// ---- Template ----

Template::Template(std::string source, std::string origin, Limits limits)
    : source_(std::move(source)), origin_(std::move(origin)), limits_(limits) {
  try {
    auto body = std::make_shared<Body>(parse(lex(source_), limits_.max_nesting));
    check_names(*body);
    body_ = std::move(body);
  } catch (const TemplateError & e) {
    throw Error(str(where(e.at()), ": syntax error: ", e.message()));
  }
}

std::string Template::where(size_t at) const {
  if (at == TemplateError::npos) return origin_;
  at = std::min(at, source_.size());
  size_t line = 1, line_start = 0;
  for (size_t i = 0; i < at; ++i) {
    if (source_[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  const size_t col = 1 + utf8_length(source_.substr(line_start, at - line_start));
  return str(origin_, ":", line, ":", col);
}

std::string Template::render(const Dict & vars, std::time_t now) const {
  Scope globals(nullptr);
  add_globals(globals);
  Scope top(&globals);
  for (const auto & kv : vars) top.vars[kv.first] = kv.second;
  try {
    Renderer r(limits_, now);
    return r.run(*body_, top);
  } catch (const TemplateError & e) {
    throw Error(str(where(e.at()), ": ", e.message()));
  }
}

const Value * Scope::find(const std::string & name) const {
  for (const Scope * s = this; s; s = s->parent) {
    auto it = s->vars.find(name);
    if (it != s->vars.end()) return &it->second;
  }
  return nullptr;
}

// ---- limits ----

struct Renderer::Depth {
  Renderer & r;
  Depth(Renderer & renderer, size_t at) : r(renderer) {
    if (++r.eval_depth_ > r.limits_.max_eval_depth) {
      throw TemplateError(str("template evaluation nested deeper than ", r.limits_.max_eval_depth, " levels"), at);
    }
  }
  ~Depth() { --r.eval_depth_; }
};

void Renderer::charge(uint64_t n) {
  steps_ += n;
  if (steps_ > limits_.max_steps) {
    template_fail(str("the template ran more than ", limits_.max_steps,
                      " steps (statements, expressions, loop iterations, items filters walk): stopped"));
  }
}

void Renderer::check_string(size_t bytes, const char * what) const {
  if (bytes > limits_.max_output) template_fail(str(what, " would be longer than ", limits_.max_output, " bytes"));
}

void Renderer::check_items(size_t items, const char * what) const {
  if (items > limits_.max_items) template_fail(str(what, " would have more than ", limits_.max_items, " items"));
}

void Renderer::emit(std::string & out, const std::string & text) const {
  if (out.size() + text.size() > limits_.max_output) {
    template_fail(str("the rendered text would be longer than ", limits_.max_output, " bytes"));
  }
  out += text;
}

// ---- statements ----

std::string Renderer::run(const Body & body, Scope & scope) {
  std::string out;
  exec(body, scope, out);
  return out;
}

Renderer::Flow Renderer::exec(const Body & body, Scope & s, std::string & out) {
  for (const auto & st : body) {
    const Flow f = exec_stmt(*st, s, out);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Renderer::Flow Renderer::exec_stmt(const Stmt & st, Scope & s, std::string & out) {
  Depth depth(*this, st.at);
  try {
    charge(1);
    return exec_node(st, s, out);
  } catch (const TemplateError & err) {
    if (err.at() != TemplateError::npos) throw;
    throw TemplateError(err.message(), st.at);
  }
}

Renderer::Flow Renderer::exec_node(const Stmt & st, Scope & s, std::string & out) {
  switch (st.kind) {
    case SK::Text: emit(out, st.text); return Flow::Normal;
    case SK::Output: emit(out, to_str(eval(*st.expr, s))); return Flow::Normal;
    case SK::If: return exec(eval(*st.expr, s).truthy() ? st.body : st.orelse, s, out);
    case SK::For: return exec_for(st, s, out);
    case SK::Set: assign(*st.target, eval(*st.expr, s), s); return Flow::Normal;
    case SK::SetBlock: {
      Scope inner(&s);
      std::string text;
      const Flow f = exec(st.body, inner, text);
      assign(*st.target, Value::string(std::move(text)), s);
      return f;
    }
    case SK::Macro: define_macro(st, s); return Flow::Normal;
    case SK::Break: return Flow::Break;
    case SK::Continue: return Flow::Continue;
    case SK::Block: return exec(st.body, s, out);
  }
  return Flow::Normal;
}

void Renderer::assign(const Expr & target, const Value & v, Scope & s) {
  try {
    if (target.kind == EK::Name) {
      s.vars[target.name] = v;
    } else if (target.kind == EK::Tuple) {
      if (!v.is_list()) template_fail(str("cannot unpack a '", v.type_name(), "' into ", target.items.size(), " names"));
      if (v.items().size() != target.items.size()) {
        template_fail(str("cannot unpack ", v.items().size(), " values into ", target.items.size(), " names"));
      }
      for (size_t i = 0; i < target.items.size(); ++i) assign(*target.items[i], v.items()[i], s);
    } else if (target.kind == EK::Attr) {
      const Value obj = eval(*target.items[0], s);
      if (!obj.is_namespace()) {
        template_fail(str("cannot set attribute '", target.name, "' of a '", obj.type_name(),
                          "' (only a namespace() can be assigned to)"));
      }
      if (v.is_namespace() || v.is_callable() || v.holds_reference()) {
        template_fail("a namespace cannot hold a namespace or a callable");
      }
      obj.ns_dict().set(target.name, v);
    } else {
      template_fail("cannot assign to this expression");
    }
  } catch (const TemplateError & e) {
    if (e.at() != TemplateError::npos) throw;
    throw TemplateError(e.message(), target.at);
  }
}

namespace {

Value loop_value(const std::vector<Value> & items, size_t i) {
  const int64_t n = static_cast<int64_t>(items.size());
  const int64_t k = static_cast<int64_t>(i);
  Dict d;
  d.set("index", Value::integer(k + 1));
  d.set("index0", Value::integer(k));
  d.set("revindex", Value::integer(n - k));
  d.set("revindex0", Value::integer(n - k - 1));
  d.set("first", Value::boolean(k == 0));
  d.set("last", Value::boolean(k == n - 1));
  d.set("length", Value::integer(n));
  d.set("depth", Value::integer(1));
  d.set("depth0", Value::integer(0));
  d.set("previtem", k > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
  d.set("nextitem", k + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
  d.set("cycle", Value::callable("loop.cycle", [k](Renderer &, Args & args) {
    if (args.pos.empty()) template_fail("loop.cycle() needs at least one value");
    return args.pos[static_cast<size_t>(k) % args.pos.size()];
  }));
  return Value::dict(std::move(d));
}

}  // namespace

Renderer::Flow Renderer::exec_for(const Stmt & st, Scope & s, std::string & out) {
  Value seq;
  try {
    seq = iterate(eval(*st.expr, s));
  } catch (const TemplateError & e) {
    if (e.at() != TemplateError::npos) throw;
    throw TemplateError(e.message(), st.expr->at);
  }
  Scope loop(&s);
  const std::vector<Value> * items = &seq.items();
  std::vector<Value> kept;
  if (st.cond) {  // `for x in xs if cond`: the loop (and loop.length) sees only the kept items
    for (const auto & item : *items) {
      charge(1);
      loop.vars.clear();
      assign(*st.target, item, loop);
      if (eval(*st.cond, loop).truthy()) kept.push_back(item);
    }
    items = &kept;
  }
  // each iteration starts with only the loop's own names (kept in place when the body set nothing else)
  const size_t own = (st.target->kind == Expr::Kind::Tuple ? st.target->items.size() : 1) + (st.uses_loop ? 1 : 0);
  bool iterated = false;
  for (size_t i = 0; i < items->size(); ++i) {
    charge(1);
    iterated = true;
    if (loop.vars.size() > own) loop.vars.clear();
    assign(*st.target, (*items)[i], loop);
    if (st.uses_loop) loop.vars["loop"] = loop_value(*items, i);
    const Flow f = exec(st.body, loop, out);
    if (f == Flow::Break) break;
  }
  if (!iterated) {
    loop.vars.clear();
    return exec(st.orelse, loop, out);
  }
  return Flow::Normal;
}

void Renderer::define_macro(const Stmt & st, Scope & s) {
  const Stmt * m = &st;
  const Scope * def = &s;  // a macro value never outlives this scope (namespaces refuse callables)
  s.vars[st.name] = Value::callable(st.name, [m, def](Renderer & r, Args & args) { return r.call_macro(*m, *def, args); });
}

Value Renderer::call_macro(const Stmt & m, const Scope & def, Args & args) {
  if (call_depth_ >= limits_.max_call_depth) {
    template_fail(str("macro '", m.name, "' called ", limits_.max_call_depth, " levels deep (runaway recursion?)"));
  }
  charge(1);
  if (args.pos.size() > m.params.size()) {
    template_fail(str("macro '", m.name, "' takes not more than ", m.params.size(), " argument(s), got ",
                      args.pos.size()));
  }
  Scope scope(&def);
  std::vector<bool> bound(m.params.size(), false);
  for (size_t i = 0; i < args.pos.size(); ++i) {
    scope.vars[m.params[i].name] = args.pos[i];
    bound[i] = true;
  }
  for (const auto & kw : args.kw) {
    size_t i = 0;
    while (i < m.params.size() && m.params[i].name != kw.first) ++i;
    if (i == m.params.size()) template_fail(str("macro '", m.name, "' has no parameter '", kw.first, "'"));
    if (bound[i]) template_fail(str("macro '", m.name, "' got parameter '", kw.first, "' twice"));
    scope.vars[kw.first] = kw.second;
    bound[i] = true;
  }
  ++call_depth_;
  struct Leave {
    int & d;
    ~Leave() { --d; }
  } leave{call_depth_};
  for (size_t i = 0; i < m.params.size(); ++i) {
    if (bound[i]) continue;
    const Arg & p = m.params[i];
    scope.vars[p.name] = p.value ? eval(*p.value, scope) : Value::undefined(str("'", p.name, "' is undefined"));
  }
  std::string out;
  exec(m.body, scope, out);
  return Value::string(std::move(out));
}

// ---- expressions ----

Value Renderer::eval(const Expr & e, Scope & s) {
  Depth depth(*this, e.at);
  try {
    charge(1);
    return eval_node(e, s);
  } catch (const TemplateError & err) {
    if (err.at() != TemplateError::npos) throw;
    throw TemplateError(err.message(), e.at);
  }
}

Args Renderer::eval_args(const std::vector<Arg> & args, Scope & s) {
  Args out;
  for (const auto & a : args) {
    if (a.name.empty()) {
      out.pos.push_back(eval(*a.value, s));
    } else {
      out.kw.emplace_back(a.name, eval(*a.value, s));
    }
  }
  return out;
}

Value Renderer::call(const Value & fn, Args & args) {
  if (fn.is_undefined()) fail_undefined(fn);
  if (!fn.is_callable()) template_fail(str("'", fn.type_name(), "' object is not callable"));
  return fn.callable_fn()(*this, args);
}

Value Renderer::eval_call(const Expr & e, Scope & s) {
  const Expr & callee = *e.items[0];
  if (callee.kind == EK::Attr) {  // obj.method(...): no bound method built
    const Value obj = eval(*callee.items[0], s);
    if (obj.is_undefined()) fail_undefined(obj);
    Args args = eval_args(e.args, s);
    Value result;
    if (call_method(*this, obj, callee.name, args, result)) return result;
    const Value fn = get_attr(obj, callee.name);
    if (fn.is_undefined() && !obj.is_dict() && !obj.is_namespace()) {
      template_fail(str("'", obj.type_name(), "' object has no method '", callee.name, "'"));
    }
    return call(fn, args);
  }
  const Value fn = eval(callee, s);
  Args args = eval_args(e.args, s);
  return call(fn, args);
}

Value Renderer::apply_filter(const std::string & name, const Value & v, Args & args) {
  FilterFn f = find_filter(name);
  if (!f) template_fail(str("no filter named '", name, "'"));
  return f(*this, v, args);
}

bool Renderer::apply_test(const std::string & name, const Value & v, Args & args) {
  TestFn t = find_test(name);
  if (!t) template_fail(str("no test named '", name, "'"));
  return t(*this, v, args);
}

Value Renderer::eval_node(const Expr & e, Scope & s) {
  switch (e.kind) {
    case EK::Const: return e.value;
    case EK::Name: {
      const Value * v = s.find(e.name);
      return v ? *v : Value::undefined(str("'", e.name, "' is undefined"));
    }
    case EK::List:
    case EK::Tuple: {
      std::vector<Value> items;
      items.reserve(e.items.size());
      for (const auto & x : e.items) items.push_back(eval(*x, s));
      return Value::list(std::move(items), e.kind == EK::Tuple);
    }
    case EK::Dict: {
      Dict d;
      for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
        const Value k = eval(*e.items[i], s);
        if (!k.is_string()) template_fail(str("dict keys must be strings here, got a '", k.type_name(), "'"));
        d.set(k.str(), eval(*e.items[i + 1], s));
      }
      return Value::dict(std::move(d));
    }
    case EK::Attr: return get_attr(eval(*e.items[0], s), e.name);
    case EK::Index: {
      const Value obj = eval(*e.items[0], s);
      return get_item(obj, eval(*e.items[1], s));
    }
    case EK::Slice: {
      const Value obj = eval(*e.items[0], s);
      Value parts[3];
      for (int i = 0; i < 3; ++i) {
        if (e.items[i + 1]) parts[i] = eval(*e.items[i + 1], s);
      }
      return get_slice(*this, obj, parts[0], parts[1], parts[2]);
    }
    case EK::Call: return eval_call(e, s);
    case EK::Filter: {
      const Value v = eval(*e.items[0], s);
      Args args = eval_args(e.args, s);
      return apply_filter(e.name, v, args);
    }
    case EK::Test: {
      const Value v = eval(*e.items[0], s);
      Args args = eval_args(e.args, s);
      return Value::boolean(apply_test(e.name, v, args) != e.negated);
    }
    case EK::Unary: {
      const Value v = eval(*e.items[0], s);
      if (e.name == "not") return Value::boolean(!v.truthy());
      if (v.is_undefined()) fail_undefined(v);
      if (v.is_float()) return Value::number(e.name == "-" ? -v.as_float() : v.as_float());
      if (!v.is_number()) template_fail(str("bad operand type for unary ", e.name, ": '", v.type_name(), "'"));
      if (e.name == "+") return Value::integer(v.as_int());
      if (v.as_int() == std::numeric_limits<int64_t>::min()) template_fail("integer overflow");
      return Value::integer(-v.as_int());
    }
    case EK::Binary: {
      const Value a = eval(*e.items[0], s);
      return binary(e.name, a, eval(*e.items[1], s));
    }
    case EK::And: {
      Value a = eval(*e.items[0], s);
      return a.truthy() ? eval(*e.items[1], s) : a;
    }
    case EK::Or: {
      Value a = eval(*e.items[0], s);
      return a.truthy() ? a : eval(*e.items[1], s);
    }
    case EK::Compare: {
      Value left = eval(*e.items[0], s);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = eval(*e.items[i + 1], s);
        if (!compare_op(e.ops[i], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case EK::Cond:
      if (eval(*e.items[1], s).truthy()) return eval(*e.items[0], s);
      return e.items[2] ? eval(*e.items[2], s) : Value::undefined("the condition was false and there is no else");
  }
  return Value();
}

}  // namespace peft::jinja
