// Jinja's filters, tests and globals that chat templates use, with Python Jinja's arguments and
// results; tojson is transformers' (json.dumps, ensure_ascii off), and the globals add transformers'
// raise_exception and strftime_now. Filters that walk items charge them to the step budget.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <unordered_map>

#include "data/jinja/jinja.h"

namespace peft::jinja {

// ---- Params ----

Params::Params(const Args & args, const std::string & what, std::initializer_list<const char *> names)
    : what_(what), names_(names.begin(), names.end()), values_(names.size()) {
  if (args.pos.size() > names_.size()) {
    template_fail(str(what_, " takes at most ", names_.size(), " argument(s), got ", args.pos.size()));
  }
  for (size_t i = 0; i < args.pos.size(); ++i) values_[i] = args.pos[i];
  for (const auto & kw : args.kw) {
    const size_t i = static_cast<size_t>(std::find(names_.begin(), names_.end(), kw.first) - names_.begin());
    if (i == names_.size()) template_fail(str(what_, " got an unexpected keyword argument '", kw.first, "'"));
    if (i < args.pos.size()) template_fail(str(what_, " got multiple values for argument '", kw.first, "'"));
    values_[i] = kw.second;
  }
}

int64_t Params::integer(size_t i, int64_t dflt) const {
  const Value & v = values_[i];
  if (v.is_undefined() || v.is_none()) return dflt;
  if (!v.is_number() || v.is_float()) {
    template_fail(str(what_, ": '", names_[i], "' must be an integer, not '", v.type_name(), "'"));
  }
  return v.as_int();
}

bool Params::boolean(size_t i, bool dflt) const { return given(i) ? values_[i].truthy() : dflt; }

std::string Params::string(size_t i, const std::string & dflt) const {
  const Value & v = values_[i];
  if (v.is_undefined() || v.is_none()) return dflt;
  if (!v.is_string()) template_fail(str(what_, ": '", names_[i], "' must be a string, not '", v.type_name(), "'"));
  return v.str();
}

namespace {

std::string lower(const std::string & s) {
  std::string out;
  for (uint32_t c : utf8_decode(s)) utf8_append(out, to_lower(c));
  return out;
}

// attribute="a.b.0" as the sort/map/sum filters take it: dict keys and list indexes, dot separated
Value attribute_path(const Value & item, const Value & attribute) {
  if (attribute.is_number() && !attribute.is_float()) return get_item(item, attribute);
  std::string path = attribute.is_string() ? attribute.str() : to_str(attribute);
  Value v = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool index = !part.empty() && part.size() < 18 &&
                       std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    v = index ? get_item(v, Value::integer(std::strtoll(part.c_str(), nullptr, 10))) : get_item(v, Value::string(part));
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

std::vector<Value> walk(Renderer & r, const Value & v) {
  Value seq = iterate(v);
  r.charge(seq.items().size());
  return seq.items();
}

Value make_list(Renderer & r, std::vector<Value> items) {
  r.check_items(items.size(), "a filter's result");
  return Value::list(std::move(items));
}

// ---- filters ----

Value f_abs(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'abs'", {});
  if (v.is_float()) return Value::number(std::fabs(v.as_float()));
  if (!v.is_number()) template_fail(str("bad operand type for abs(): '", v.type_name(), "'"));
  if (v.as_int() == std::numeric_limits<int64_t>::min()) template_fail("integer overflow");
  return Value::integer(std::llabs(v.as_int()));
}

Value f_attr(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'attr'", {"name"});
  return get_attr(v, p.string(0, ""));
}

Value f_capitalize(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'capitalize'", {});
  Args none;
  Value out;
  call_method(r, Value::string(to_str(v)), "capitalize", none, out);
  return out;
}

Value f_default(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'default'", {"default_value", "boolean"});
  const bool use_default = v.is_undefined() || (p.boolean(1, false) && !v.truthy());
  return use_default ? (p.given(0) ? p.get(0) : Value::string("")) : v;
}

Value f_dictsort(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'dictsort'", {"case_sensitive", "by", "reverse"});
  if (!v.is_dict()) template_fail(str("dictsort: a dict is needed, not '", v.type_name(), "'"));
  const bool cs = p.boolean(0, false), rev = p.boolean(2, false);
  const std::string by = p.string(1, "key");
  if (by != "key" && by != "value") template_fail("dictsort: 'by' must be 'key' or 'value'");
  std::vector<Value> items;
  for (const auto & e : v.dict()) items.push_back(Value::list({Value::string(e.first), e.second}, true));
  r.charge(items.size());
  const size_t k = by == "key" ? 0 : 1;
  std::stable_sort(items.begin(), items.end(), [&](const Value & x, const Value & y) {
    const int c = compare(x.items()[k], y.items()[k], !cs);
    return rev ? c > 0 : c < 0;
  });
  return Value::list(std::move(items));
}

Value f_escape(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'escape'", {});
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return Value::string(std::move(out));
}

Value f_first(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'first'", {});
  const Value seq = iterate(v);
  return seq.items().empty() ? Value::undefined("no first item, the sequence was empty") : seq.items().front();
}

Value f_last(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'last'", {});
  const Value seq = iterate(v);
  return seq.items().empty() ? Value::undefined("no last item, the sequence was empty") : seq.items().back();
}

// Python's float() of a string: surrounding whitespace, '_' between digits, inf/nan
bool parse_float(const std::string & s, double & out) {
  std::string t;
  for (char c : s) {
    if (c != '_') t += c;
  }
  const char * b = t.c_str();
  while (*b && std::isspace(static_cast<unsigned char>(*b))) ++b;
  if (!*b) return false;
  char * e = nullptr;
  out = std::strtod(b, &e);
  while (*e && std::isspace(static_cast<unsigned char>(*e))) ++e;
  return *e == '\0' && e != b && t.find_first_of("xX") == std::string::npos;  // strtod reads hex, Python does not
}

Value f_float(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'float'", {"default"});
  const Value dflt = p.given(0) ? p.get(0) : Value::number(0.0);
  if (v.is_number()) return Value::number(v.as_float());
  double f;
  if (v.is_string() && parse_float(v.str(), f)) return Value::number(f);
  return dflt;
}

Value f_int(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'int'", {"default", "base"});
  const Value dflt = p.given(0) ? p.get(0) : Value::integer(0);
  const int64_t base = p.integer(1, 10);
  if (v.is_float()) {
    const double f = std::trunc(v.as_float());
    if (!(std::fabs(f) < 9.2e18)) return dflt;
    return Value::integer(static_cast<int64_t>(f));
  }
  if (v.is_number()) return Value::integer(v.as_int());
  if (!v.is_string()) return dflt;
  std::string t;
  for (char c : v.str()) {
    if (c != '_') t += c;
  }
  const char * b = t.c_str();
  while (*b && std::isspace(static_cast<unsigned char>(*b))) ++b;
  char * e = nullptr;
  errno = 0;
  const long long i = std::strtoll(b, &e, static_cast<int>(base));
  const char * rest = e;
  while (*rest && std::isspace(static_cast<unsigned char>(*rest))) ++rest;
  if (e != b && *rest == '\0' && errno == 0) return Value::integer(i);
  double f;  // Jinja falls back to int(float(value))
  if (parse_float(v.str(), f) && std::fabs(f) < 9.2e18) return Value::integer(static_cast<int64_t>(std::trunc(f)));
  return dflt;
}

Value f_indent(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'indent'", {"width", "first", "blank"});
  std::string pad;
  if (p.get(0).is_string()) {
    pad = p.get(0).str();
  } else {
    const int64_t w = p.integer(0, 4);
    if (w < 0 || w > 4096) template_fail("indent: width must be between 0 and 4096");
    pad.assign(static_cast<size_t>(w), ' ');
  }
  const bool first = p.boolean(1, false), blank = p.boolean(2, false);
  // Jinja: s += "\n"; lines = s.splitlines(); the first line and (unless blank) empty lines stay as they are
  std::string s = to_str(v) + "\n";
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' || s[i] == '\r') {
      lines.push_back(s.substr(start, i - start));
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      start = i + 1;
    }
  }
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += "\n";
    if ((i > 0 || first) && (blank || !lines[i].empty())) out += pad;
    out += lines[i];
    r.check_string(out.size(), "an indent result");
  }
  return Value::string(std::move(out));
}

Value f_items(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'items'", {});
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) template_fail(str("items: can only get item pairs from a mapping, not '", v.type_name(), "'"));
  Args none;
  Value out;
  call_method(r, v, "items", none, out);
  return out;
}

Value f_join(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'join'", {"d", "attribute"});
  const std::string sep = p.string(0, "");
  std::string out;
  bool first = true;
  for (const auto & item : walk(r, v)) {
    if (!first) out += sep;
    first = false;
    out += to_str(p.given(1) ? attribute_path(item, p.get(1)) : item);
    r.check_string(out.size(), "a join result");
  }
  return Value::string(std::move(out));
}

Value f_length(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'length'", {});
  if (v.is_string()) return Value::integer(static_cast<int64_t>(utf8_length(v.str())));
  if (v.is_list()) return Value::integer(static_cast<int64_t>(v.items().size()));
  if (v.is_dict()) return Value::integer(static_cast<int64_t>(v.dict().size()));
  if (v.is_undefined()) return Value::integer(0);
  template_fail(str("object of type '", v.type_name(), "' has no len()"));
}

Value f_list(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'list'", {});
  return make_list(r, walk(r, v));
}

Value f_lower(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'lower'", {});
  Args none;
  Value out;
  call_method(r, Value::string(to_str(v)), "lower", none, out);
  return out;
}

Value f_upper(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'upper'", {});
  Args none;
  Value out;
  call_method(r, Value::string(to_str(v)), "upper", none, out);
  return out;
}

Value f_map(Renderer & r, const Value & v, Args & a) {
  std::vector<Value> out;
  const Value * attribute = nullptr;
  const Value * dflt = nullptr;
  for (const auto & kw : a.kw) {
    if (kw.first == "attribute") attribute = &kw.second;
    if (kw.first == "default") dflt = &kw.second;
  }
  if (attribute) {  // map(attribute="name", default=...)
    for (const auto & item : walk(r, v)) {
      Value x = attribute_path(item, *attribute);
      out.push_back(x.is_undefined() && dflt ? *dflt : x);
    }
    return make_list(r, std::move(out));
  }
  if (a.pos.empty() || !a.pos[0].is_string()) template_fail("map: give a filter name or attribute=");
  const std::string name = a.pos[0].str();
  Args rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (const auto & item : walk(r, v)) {
    Args each = rest;
    out.push_back(r.apply_filter(name, item, each));
  }
  return make_list(r, std::move(out));
}

Value min_max(Renderer & r, const Value & v, Args & a, bool max, const char * what) {
  Params p(a, what, {"case_sensitive", "attribute"});
  const bool cs = p.boolean(0, false);
  const Value * best = nullptr;
  Value best_key;
  const std::vector<Value> items = walk(r, v);
  for (const auto & item : items) {
    Value key = p.given(1) ? attribute_path(item, p.get(1)) : item;
    if (!best || compare(key, best_key, !cs) * (max ? 1 : -1) > 0) {
      best = &item;
      best_key = key;
    }
  }
  return best ? *best : Value::undefined(str(what, ": the sequence was empty"));
}

Value f_max(Renderer & r, const Value & v, Args & a) { return min_max(r, v, a, true, "filter 'max'"); }
Value f_min(Renderer & r, const Value & v, Args & a) { return min_max(r, v, a, false, "filter 'min'"); }

// select/reject(test, args...), selectattr/rejectattr(attribute, test, args...)
Value select(Renderer & r, const Value & v, Args & a, bool keep, bool by_attr, const char * what) {
  size_t k = 0;
  Value attribute;
  if (by_attr) {
    if (a.pos.empty()) template_fail(str(what, ": the attribute is missing"));
    attribute = a.pos[k++];
  }
  std::string test;
  if (k < a.pos.size()) {
    if (!a.pos[k].is_string()) template_fail(str(what, ": the test must be given by name"));
    test = a.pos[k++].str();
    if (!find_test(test)) template_fail(str(what, ": no test named '", test, "'"));
  }
  Args rest;
  rest.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(std::min(k, a.pos.size())), a.pos.end());
  rest.kw = a.kw;
  std::vector<Value> out;
  for (const auto & item : walk(r, v)) {
    const Value x = by_attr ? attribute_path(item, attribute) : item;
    Args each = rest;
    const bool ok = test.empty() ? x.truthy() : r.apply_test(test, x, each);
    if (ok == keep) out.push_back(item);
  }
  return make_list(r, std::move(out));
}

Value f_select(Renderer & r, const Value & v, Args & a) { return select(r, v, a, true, false, "filter 'select'"); }
Value f_reject(Renderer & r, const Value & v, Args & a) { return select(r, v, a, false, false, "filter 'reject'"); }
Value f_selectattr(Renderer & r, const Value & v, Args & a) {
  return select(r, v, a, true, true, "filter 'selectattr'");
}
Value f_rejectattr(Renderer & r, const Value & v, Args & a) {
  return select(r, v, a, false, true, "filter 'rejectattr'");
}

Value f_replace(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'replace'", {"old", "new", "count"});
  Args args;
  args.pos = {p.get(0), p.get(1)};
  if (p.given(2)) args.pos.push_back(p.get(2));
  Value out;
  call_method(r, Value::string(to_str(v)), "replace", args, out);
  return out;
}

Value f_reverse(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'reverse'", {});
  if (v.is_string()) {
    auto cps = utf8_decode(v.str());
    std::reverse(cps.begin(), cps.end());
    return Value::string(utf8_encode(cps));
  }
  std::vector<Value> items = walk(r, v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value f_round(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'round'", {"precision", "method"});
  const int64_t prec = p.integer(0, 0);
  const std::string method = p.string(1, "common");
  if (method != "common" && method != "ceil" && method != "floor") {
    template_fail("round: method must be 'common', 'ceil' or 'floor'");
  }
  if (!v.is_number()) template_fail(str("round: a number is needed, not '", v.type_name(), "'"));
  if (prec < -300 || prec > 300) template_fail("round: precision out of range");
  if (method == "common") {
    if (!v.is_float()) return Value::integer(v.as_int());  // Python: round(int, n) stays an int
    if (!std::isfinite(v.as_float()) || std::fabs(v.as_float()) >= 4503599627370496.0) return v;  // 2^52: integral
    if (prec >= 0) {  // printf rounds the exact binary value half-to-even, as Python's round does
      char buf[512];
      std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(prec), v.as_float());
      return Value::number(std::strtod(buf, nullptr));
    }
    const double scale = std::pow(10.0, static_cast<double>(-prec));
    return Value::number(std::nearbyint(v.as_float() / scale) * scale);
  }
  const double scale = std::pow(10.0, static_cast<double>(prec));
  const double x = v.as_float() * scale;
  return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Value f_safe(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'safe'", {});
  return v;
}

Value f_sort(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'sort'", {"reverse", "case_sensitive", "attribute"});
  const bool rev = p.boolean(0, false), cs = p.boolean(1, false);
  std::vector<Value> items = walk(r, v);
  std::vector<Value> keys;
  for (const auto & item : items) keys.push_back(p.given(2) ? attribute_path(item, p.get(2)) : item);
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    const int c = compare(keys[x], keys[y], !cs);
    return rev ? c > 0 : c < 0;
  });
  std::vector<Value> out;
  for (size_t i : order) out.push_back(items[i]);
  return Value::list(std::move(out));
}

Value f_string(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'string'", {});
  return Value::string(to_str(v));
}

Value f_sum(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'sum'", {"attribute", "start"});
  Value total = p.given(1) ? p.get(1) : Value::integer(0);
  for (const auto & item : walk(r, v)) {
    const Value x = p.given(0) ? attribute_path(item, p.get(0)) : item;
    if (!x.is_number() || !total.is_number()) {
      template_fail(str("sum: unsupported operand type(s) for +: '", total.type_name(), "' and '", x.type_name(), "'"));
    }
    if (x.is_float() || total.is_float()) {
      total = Value::number(total.as_float() + x.as_float());
    } else {
      int64_t s;
      if (__builtin_add_overflow(total.as_int(), x.as_int(), &s)) template_fail("integer overflow");
      total = Value::integer(s);
    }
  }
  return total;
}

// Jinja's title filter: words begin after whitespace, '-', '(', '{', '[' or '<'
Value f_title(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'title'", {});
  std::string out;
  bool word_start = true;
  for (uint32_t c : utf8_decode(to_str(v))) {
    const bool sep = is_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    utf8_append(out, sep ? c : word_start ? to_upper(c) : to_lower(c));
    word_start = sep;
  }
  return Value::string(std::move(out));
}

// transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
Value f_tojson(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'tojson'", {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonStyle st;
  st.ensure_ascii = p.boolean(0, false);
  st.indent = static_cast<int>(std::min<int64_t>(p.integer(1, -1), 1024));
  st.sort_keys = p.boolean(3, false);
  if (p.given(2) && !p.get(2).is_none()) {
    const Value & sep = p.get(2);
    if (!sep.is_list() || sep.items().size() != 2 || !sep.items()[0].is_string() || !sep.items()[1].is_string()) {
      template_fail("tojson: separators must be a pair of strings");
    }
    st.item_sep = sep.items()[0].str();
    st.key_sep = sep.items()[1].str();
  }
  std::string out = to_json(v, st);
  r.check_string(out.size(), "a tojson result");
  return Value::string(std::move(out));
}

Value f_trim(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'trim'", {"chars"});
  Args args;
  if (p.given(0)) args.pos.push_back(p.get(0));
  Value out;
  call_method(r, Value::string(to_str(v)), "strip", args, out);
  return out;
}

Value f_unique(Renderer & r, const Value & v, Args & a) {
  Params p(a, "filter 'unique'", {"case_sensitive", "attribute"});
  const bool cs = p.boolean(0, false);
  std::vector<Value> out, seen;
  for (const auto & item : walk(r, v)) {
    Value key = p.given(1) ? attribute_path(item, p.get(1)) : item;
    if (!cs && key.is_string()) key = Value::string(lower(key.str()));
    bool dup = false;
    for (const auto & s : seen) {
      if (equals(s, key)) {
        dup = true;
        break;
      }
    }
    r.charge(seen.size() / 64);
    if (!dup) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value::list(std::move(out));
}

Value f_wordcount(Renderer &, const Value & v, Args & a) {
  Params p(a, "filter 'wordcount'", {});
  int64_t n = 0;
  bool in_word = false;
  for (uint32_t c : utf8_decode(to_str(v))) {
    const bool w = is_alnum(c) || c == '_';
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::integer(n);
}

const std::unordered_map<std::string, FilterFn> & filters() {
  static const std::unordered_map<std::string, FilterFn> table = {
      {"abs", f_abs},       {"attr", f_attr},           {"capitalize", f_capitalize},
      {"count", f_length},  {"d", f_default},           {"default", f_default},
      {"dictsort", f_dictsort}, {"e", f_escape},        {"escape", f_escape},
      {"first", f_first},   {"float", f_float},         {"indent", f_indent},
      {"int", f_int},       {"items", f_items},         {"join", f_join},
      {"last", f_last},     {"length", f_length},       {"list", f_list},
      {"lower", f_lower},   {"map", f_map},             {"max", f_max},
      {"min", f_min},       {"reject", f_reject},       {"rejectattr", f_rejectattr},
      {"replace", f_replace}, {"reverse", f_reverse},   {"round", f_round},
      {"safe", f_safe},     {"select", f_select},       {"selectattr", f_selectattr},
      {"sort", f_sort},     {"string", f_string},       {"sum", f_sum},
      {"title", f_title},   {"tojson", f_tojson},       {"trim", f_trim},
      {"unique", f_unique}, {"upper", f_upper},         {"wordcount", f_wordcount},
  };
  return table;
}

// ---- tests ----

bool t_defined(Renderer &, const Value & v, Args &) { return !v.is_undefined(); }
bool t_undefined(Renderer &, const Value & v, Args &) { return v.is_undefined(); }
bool t_none(Renderer &, const Value & v, Args &) { return v.is_none(); }
bool t_boolean(Renderer &, const Value & v, Args &) { return v.is_bool(); }
bool t_true(Renderer &, const Value & v, Args &) { return v.is_bool() && v.as_bool(); }
bool t_false(Renderer &, const Value & v, Args &) { return v.is_bool() && !v.as_bool(); }
bool t_integer(Renderer &, const Value & v, Args &) { return v.is_int(); }
bool t_float(Renderer &, const Value & v, Args &) { return v.is_float(); }
bool t_number(Renderer &, const Value & v, Args &) { return v.is_number(); }
bool t_string(Renderer &, const Value & v, Args &) { return v.is_string(); }
bool t_mapping(Renderer &, const Value & v, Args &) { return v.is_dict(); }
bool t_callable(Renderer &, const Value & v, Args &) { return v.is_callable() || v.is_undefined(); }  // as Python's
// Python: anything with __iter__ / __len__ and __getitem__ (Undefined has both)
bool t_iterable(Renderer &, const Value & v, Args &) {
  return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
}
bool t_sequence(Renderer & r, const Value & v, Args & a) { return t_iterable(r, v, a); }

int64_t want_int(const Value & v, const char * test) {
  if (!v.is_number() || v.is_float()) template_fail(str("test '", test, "' needs an integer, not '", v.type_name(), "'"));
  return v.as_int();
}
bool t_odd(Renderer &, const Value & v, Args &) { return want_int(v, "odd") % 2 != 0; }
bool t_even(Renderer &, const Value & v, Args &) { return want_int(v, "even") % 2 == 0; }
bool t_divisibleby(Renderer &, const Value & v, Args & a) {
  Params p(a, "test 'divisibleby'", {"num"});
  const int64_t d = want_int(p.get(0), "divisibleby");
  if (d == 0) template_fail("divisibleby: division by zero");
  return want_int(v, "divisibleby") % d == 0;
}

const Value & other(Args & a, const char * test) {
  if (a.pos.size() != 1 || !a.kw.empty()) template_fail(str("test '", test, "' takes exactly one argument"));
  return a.pos[0];
}
bool t_eq(Renderer &, const Value & v, Args & a) { return equals(v, other(a, "eq")); }
bool t_ne(Renderer &, const Value & v, Args & a) { return !equals(v, other(a, "ne")); }
bool t_lt(Renderer &, const Value & v, Args & a) { return compare(v, other(a, "lt")) < 0; }
bool t_le(Renderer &, const Value & v, Args & a) { return compare(v, other(a, "le")) <= 0; }
bool t_gt(Renderer &, const Value & v, Args & a) { return compare(v, other(a, "gt")) > 0; }
bool t_ge(Renderer &, const Value & v, Args & a) { return compare(v, other(a, "ge")) >= 0; }
bool t_sameas(Renderer &, const Value & v, Args & a) {
  const Value & o = other(a, "sameas");
  if (v.kind() != o.kind() || v.is_undefined()) return false;  // Python makes a new Undefined per lookup
  switch (v.kind()) {
    case Value::Kind::String: return &v.str() == &o.str();
    case Value::Kind::List: return &v.items() == &o.items();
    case Value::Kind::Dict:
    case Value::Kind::Namespace: return &v.dict() == &o.dict();
    case Value::Kind::Callable: return &v.callable_fn() == &o.callable_fn();
    default: return equals(v, o);
  }
}
bool t_in(Renderer &, const Value & v, Args & a) {
  const Value & seq = other(a, "in");
  if (seq.is_string()) return v.is_string() && seq.str().find(v.str()) != std::string::npos;
  if (seq.is_dict()) return v.is_string() && seq.dict().find(v.str());
  for (const auto & x : iterate(seq).items()) {
    if (equals(v, x)) return true;
  }
  return false;
}
bool t_lower(Renderer & r, const Value & v, Args &) {
  Args none;
  Value out;
  return v.is_string() && call_method(r, v, "islower", none, out) && out.as_bool();
}
bool t_upper(Renderer & r, const Value & v, Args &) {
  Args none;
  Value out;
  return v.is_string() && call_method(r, v, "isupper", none, out) && out.as_bool();
}
bool t_filter(Renderer &, const Value & v, Args &) { return v.is_string() && find_filter(v.str()); }
bool t_test(Renderer &, const Value & v, Args &) { return v.is_string() && find_test(v.str()); }

const std::unordered_map<std::string, TestFn> & tests() {
  static const std::unordered_map<std::string, TestFn> table = {
      {"boolean", t_boolean},   {"callable", t_callable}, {"defined", t_defined},   {"divisibleby", t_divisibleby},
      {"eq", t_eq},             {"equalto", t_eq},        {"==", t_eq},             {"even", t_even},
      {"false", t_false},       {"filter", t_filter},     {"float", t_float},       {"ge", t_ge},
      {">=", t_ge},             {"gt", t_gt},             {">", t_gt},              {"greaterthan", t_gt},
      {"in", t_in},             {"integer", t_integer},   {"iterable", t_iterable}, {"le", t_le},
      {"<=", t_le},             {"lower", t_lower},       {"lt", t_lt},             {"<", t_lt},
      {"lessthan", t_lt},       {"mapping", t_mapping},   {"ne", t_ne},             {"!=", t_ne},
      {"none", t_none},         {"number", t_number},     {"odd", t_odd},           {"sameas", t_sameas},
      {"sequence", t_sequence}, {"string", t_string},     {"test", t_test},         {"true", t_true},
      {"undefined", t_undefined}, {"upper", t_upper},
  };
  return table;
}

// ---- globals ----

Value g_range(Renderer & r, Args & a) {
  if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) template_fail("range() takes 1 to 3 positional arguments");
  int64_t v[3] = {0, 0, 1};
  for (size_t i = 0; i < a.pos.size(); ++i) {
    if (!a.pos[i].is_number() || a.pos[i].is_float()) {
      template_fail(str("range() arguments must be integers, not '", a.pos[i].type_name(), "'"));
    }
  }
  if (a.pos.size() == 1) {
    v[1] = a.pos[0].as_int();
  } else {
    v[0] = a.pos[0].as_int();
    v[1] = a.pos[1].as_int();
    if (a.pos.size() == 3) v[2] = a.pos[2].as_int();
  }
  if (v[2] == 0) template_fail("range() arg 3 must not be zero");
  // the length without overflow: ceil((stop - start) / step) when positive
  const long double span = static_cast<long double>(v[1]) - static_cast<long double>(v[0]);
  const long double len = span / static_cast<long double>(v[2]);
  if (len > static_cast<long double>(r.limits().max_range)) {
    template_fail(str("range() of more than ", r.limits().max_range,
                      " items (the limit Jinja's sandbox sets too): refusing a runaway loop"));
  }
  std::vector<Value> out;
  for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) out.push_back(Value::integer(i));
  return Value::list(std::move(out));
}

Value g_namespace(Renderer &, Args & a) {
  if (a.pos.size() > 1) template_fail("namespace() takes at most one positional argument (a dict)");
  Dict d;
  if (!a.pos.empty()) {
    if (!a.pos[0].is_dict()) template_fail(str("namespace(): a dict is needed, not '", a.pos[0].type_name(), "'"));
    d = a.pos[0].dict();
  }
  for (const auto & kw : a.kw) d.set(kw.first, kw.second);
  return Value::ns(std::move(d));
}

Value g_dict(Renderer &, Args & a) {
  if (a.pos.size() > 1 || (a.pos.size() == 1 && !a.pos[0].is_dict())) {
    template_fail("dict() takes keyword arguments or one dict");
  }
  Dict d = a.pos.empty() ? Dict() : a.pos[0].dict();
  for (const auto & kw : a.kw) d.set(kw.first, kw.second);
  return Value::dict(std::move(d));
}

Value g_raise_exception(Renderer &, Args & a) {
  const std::string msg = a.pos.empty() ? std::string() : to_str(a.pos[0]);
  template_fail("the template raised an error: " + msg);
}

Value g_strftime_now(Renderer & r, Args & a) {
  Params p(a, "strftime_now()", {"format"});
  const std::string fmt = p.string(0, "");
  if (fmt.empty()) return Value::string("");
  std::tm tm{};
  const std::time_t now = r.now();
  localtime_r(&now, &tm);
  std::vector<char> buf(fmt.size() * 8 + 64);
  const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
  if (n == 0) template_fail("strftime_now(): the format gives an empty or too long text");
  return Value::string(std::string(buf.data(), n));
}

}  // namespace

FilterFn find_filter(const std::string & name) {
  auto it = filters().find(name);
  return it == filters().end() ? nullptr : it->second;
}

TestFn find_test(const std::string & name) {
  auto it = tests().find(name);
  return it == tests().end() ? nullptr : it->second;
}

void add_globals(Scope & scope) {
  scope.vars["range"] = Value::callable("range", g_range);
  scope.vars["namespace"] = Value::callable("namespace", g_namespace);
  scope.vars["dict"] = Value::callable("dict", g_dict);
  scope.vars["raise_exception"] = Value::callable("raise_exception", g_raise_exception);
  scope.vars["strftime_now"] = Value::callable("strftime_now", g_strftime_now);
}

}  // namespace peft::jinja
