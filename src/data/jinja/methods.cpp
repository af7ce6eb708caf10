// What `obj.name`, `obj[key]`, `obj[a:b:c]` and `obj.method(...)` mean: Python's str methods (strip,
// split, startswith, replace, ...) and dict methods (items, keys, values, get), as the immutable sandbox
// allows them; list mutators (append, pop, ...) do not exist there and do not here.
#include <algorithm>
#include <limits>
#include <unordered_set>

#include "data/jinja/jinja.h"

namespace peft::jinja {

namespace {

const std::unordered_set<std::string> kStringMethods = {
    "strip", "lstrip", "rstrip", "split", "startswith", "endswith", "upper", "lower", "title", "capitalize",
    "replace", "join", "find", "count", "format", "isdigit", "isalpha", "isalnum", "isspace", "islower",
    "isupper", "removeprefix", "removesuffix"};
const std::unordered_set<std::string> kDictMethods = {"items", "keys", "values", "get"};

const std::string & want_string(const Value & v, const std::string & what) {
  if (!v.is_string()) template_fail(str(what, " must be a string, not '", v.type_name(), "'"));
  return v.str();
}

// ---- str methods ----

std::string strip(const std::string & s, const Value & chars, bool left, bool right) {
  const auto cps = utf8_decode(s);
  std::vector<uint32_t> set;
  const bool space = chars.is_undefined() || chars.is_none();
  if (!space) set = utf8_decode(want_string(chars, "strip()'s argument"));
  auto drop = [&](uint32_t c) { return space ? is_space(c) : std::find(set.begin(), set.end(), c) != set.end(); };
  size_t b = 0, e = cps.size();
  while (left && b < e && drop(cps[b])) ++b;
  while (right && e > b && drop(cps[e - 1])) --e;
  return utf8_encode(std::vector<uint32_t>(cps.begin() + b, cps.begin() + e));
}

Value split(const std::string & s, const Value & sep, int64_t maxsplit) {
  std::vector<Value> parts;
  if (sep.is_undefined() || sep.is_none()) {  // runs of whitespace; no empty parts
    const auto cps = utf8_decode(s);
    size_t i = 0;
    auto skip = [&] {
      while (i < cps.size() && is_space(cps[i])) ++i;
    };
    skip();
    while (i < cps.size()) {
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        parts.push_back(Value::string(utf8_encode(std::vector<uint32_t>(cps.begin() + i, cps.end()))));
        break;
      }
      size_t j = i;
      while (j < cps.size() && !is_space(cps[j])) ++j;
      parts.push_back(Value::string(utf8_encode(std::vector<uint32_t>(cps.begin() + i, cps.begin() + j))));
      i = j;
      skip();
    }
    return Value::list(std::move(parts));
  }
  const std::string & d = want_string(sep, "split()'s separator");
  if (d.empty()) template_fail("split(): empty separator");
  size_t start = 0;
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    const size_t at = s.find(d, start);
    if (at == std::string::npos) break;
    parts.push_back(Value::string(s.substr(start, at - start)));
    start = at + d.size();
  }
  parts.push_back(Value::string(s.substr(start)));
  return Value::list(std::move(parts));
}

bool affix(const std::string & s, const Value & what, bool prefix) {
  auto one = [&](const std::string & a) {
    if (a.size() > s.size()) return false;
    return prefix ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (what.is_list()) {
    for (const auto & x : what.items()) {
      if (one(want_string(x, "each prefix or suffix"))) return true;
    }
    return false;
  }
  return one(want_string(what, prefix ? "startswith()'s argument" : "endswith()'s argument"));
}

std::string replace(Renderer & r, const std::string & s, const std::string & old, const std::string & with,
                    int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {  // Python inserts `with` around every character
    const auto cps = utf8_decode(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      if (i < cps.size()) utf8_append(out, cps[i]);
      r.check_string(out.size(), "a replace() result");
    }
    return out;
  }
  size_t start = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += with;
    start = at + old.size();
    ++done;
    r.check_string(out.size(), "a replace() result");
  }
  out.append(s, start, std::string::npos);
  r.check_string(out.size(), "a replace() result");
  return out;
}

bool is_cased(uint32_t c) { return to_upper(c) != c || to_lower(c) != c; }

std::string title_method(const std::string & s) {  // Python's str.title()
  std::string out;
  bool prev_cased = false;
  for (uint32_t c : utf8_decode(s)) {
    utf8_append(out, prev_cased ? to_lower(c) : to_upper(c));
    prev_cased = is_cased(c);
  }
  return out;
}

bool char_class(const std::string & s, bool (*pred)(uint32_t)) {
  if (s.empty()) return false;
  for (uint32_t c : utf8_decode(s)) {
    if (!pred(c)) return false;
  }
  return true;
}

// islower()/isupper(): at least one cased character, all of them in that case
bool all_cased(const std::string & s, bool upper) {
  bool any = false;
  for (uint32_t c : utf8_decode(s)) {
    if (!is_cased(c)) continue;
    any = true;
    if ((upper ? to_upper(c) : to_lower(c)) != c) return false;
  }
  return any;
}

int64_t find(const std::string & s, const std::string & sub) {
  const size_t at = s.find(sub);
  return at == std::string::npos ? -1 : static_cast<int64_t>(utf8_length(s.substr(0, at)));
}

int64_t count(const std::string & s, const std::string & sub) {
  if (sub.empty()) return static_cast<int64_t>(utf8_length(s)) + 1;
  int64_t n = 0;
  for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
  return n;
}

// str.format: "{}", "{0}", "{name}" and "{{" "}}"; format specs (":>10") are not supported
std::string format(Renderer & r, const std::string & fmt, const Args & args) {
  std::string out;
  size_t next_auto = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if (c == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{' && i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '{') {
      const size_t close = fmt.find('}', i);
      if (close == std::string::npos) template_fail("format(): single '{' encountered in format string");
      const std::string field = fmt.substr(i + 1, close - i - 1);
      if (field.find_first_of(":!.[") != std::string::npos) {
        template_fail(str("format(): the field '{", field, "}' uses a format spec, conversion or lookup (not supported)"));
      }
      const Value * v = nullptr;
      if (field.empty() || std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
        size_t k = next_auto;
        if (field.empty()) {
          ++next_auto;
        } else {
          k = 0;
          for (char d : field) k = std::min<size_t>(k * 10 + static_cast<size_t>(d - '0'), 1u << 30);
        }
        if (k >= args.pos.size()) template_fail(str("format(): replacement index ", k, " out of range"));
        v = &args.pos[k];
      } else {
        for (const auto & kw : args.kw) {
          if (kw.first == field) v = &kw.second;
        }
        if (!v) template_fail(str("format(): no argument named '", field, "'"));
      }
      out += to_str(*v);
      i = close;
    } else if (c == '}') {
      template_fail("format(): single '}' encountered in format string");
    } else {
      out += c;
    }
    r.check_string(out.size(), "a format() result");
  }
  return out;
}

Value string_method(Renderer & r, const std::string & s, const std::string & name, Args & args) {
  const std::string what = "str." + name + "()";
  if (name == "format") return Value::string(format(r, s, args));
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Params p(args, what, {"chars"});
    return Value::string(strip(s, p.get(0), name != "rstrip", name != "lstrip"));
  }
  if (name == "split") {
    Params p(args, what, {"sep", "maxsplit"});
    return split(s, p.get(0), p.integer(1, -1));
  }
  if (name == "startswith" || name == "endswith") {
    Params p(args, what, {"prefix"});
    if (!p.given(0)) template_fail(str(what, " takes exactly one argument"));
    return Value::boolean(affix(s, p.get(0), name == "startswith"));
  }
  if (name == "replace") {
    Params p(args, what, {"old", "new", "count"});
    const std::string & old = want_string(p.get(0), "replace()'s first argument");
    const std::string & with = want_string(p.get(1), "replace()'s second argument");
    return Value::string(replace(r, s, old, with, p.integer(2, -1)));
  }
  if (name == "join") {
    Params p(args, what, {"iterable"});
    const Value items = iterate(p.get(0));
    std::string out;
    for (size_t i = 0; i < items.items().size(); ++i) {
      if (i) out += s;
      out += want_string(items.items()[i], str("join()'s item ", i));
      r.check_string(out.size(), "a join() result");
    }
    return Value::string(std::move(out));
  }
  if (name == "find" || name == "count" || name == "removeprefix" || name == "removesuffix") {
    Params p(args, what, {"sub"});
    const std::string & sub = want_string(p.get(0), what + "'s argument");
    if (name == "find") return Value::integer(find(s, sub));
    if (name == "count") return Value::integer(count(s, sub));
    if (name == "removeprefix") return Value::string(affix(s, p.get(0), true) ? s.substr(sub.size()) : s);
    return Value::string(affix(s, p.get(0), false) ? s.substr(0, s.size() - sub.size()) : s);
  }
  Params p(args, what, {});
  std::string out;
  if (name == "upper" || name == "lower") {
    for (uint32_t c : utf8_decode(s)) utf8_append(out, name == "upper" ? to_upper(c) : to_lower(c));
    return Value::string(std::move(out));
  }
  if (name == "title") return Value::string(title_method(s));
  if (name == "capitalize") {
    const auto cps = utf8_decode(s);
    for (size_t i = 0; i < cps.size(); ++i) utf8_append(out, i == 0 ? to_upper(cps[i]) : to_lower(cps[i]));
    return Value::string(std::move(out));
  }
  if (name == "isdigit") return Value::boolean(char_class(s, [](uint32_t c) { return c >= '0' && c <= '9'; }));
  if (name == "isalpha") {
    return Value::boolean(char_class(s, [](uint32_t c) { return is_alnum(c) && !(c >= '0' && c <= '9'); }));
  }
  if (name == "isalnum") return Value::boolean(char_class(s, is_alnum));
  if (name == "isspace") return Value::boolean(char_class(s, is_space));
  if (name == "islower" || name == "isupper") return Value::boolean(all_cased(s, name == "isupper"));
  template_fail(str("'str' object has no method '", name, "'"));
}

Value dict_method(const Dict & d, const std::string & name, Args & args) {
  if (name == "get") {
    Params p(args, "dict.get()", {"key", "default"});
    const Value * v = p.get(0).is_string() ? d.find(p.get(0).str()) : nullptr;
    return v ? *v : p.given(1) ? p.get(1) : Value::none();
  }
  Params p(args, "dict." + name + "()", {});
  std::vector<Value> out;
  out.reserve(d.size());
  for (const auto & e : d) {
    if (name == "keys") {
      out.push_back(Value::string(e.first));
    } else if (name == "values") {
      out.push_back(e.second);
    } else {
      out.push_back(Value::list({Value::string(e.first), e.second}, /*tuple=*/true));
    }
  }
  return Value::list(std::move(out));
}

std::string describe(const Value & obj) { return obj.type_name() + " object"; }

}  // namespace

bool call_method(Renderer & r, const Value & obj, const std::string & name, Args & args, Value & result) {
  if (obj.is_string() && kStringMethods.count(name)) {
    result = string_method(r, obj.str(), name, args);
    return true;
  }
  if (obj.is_dict() && kDictMethods.count(name)) {
    result = dict_method(obj.dict(), name, args);
    return true;
  }
  return false;
}

Value get_attr(const Value & obj, const std::string & name) {
  const bool method = (obj.is_string() && kStringMethods.count(name)) || (obj.is_dict() && kDictMethods.count(name));
  if (method) {  // a bound method, as Python's getattr gives
    return Value::callable(obj.type_name() + "." + name, [obj, name](Renderer & r, Args & args) {
      Value result;
      call_method(r, obj, name, args, result);
      return result;
    });
  }
  if (obj.is_dict() || obj.is_namespace()) {
    if (const Value * v = obj.dict().find(name)) return *v;
  }
  if (obj.is_undefined()) return Value::undefined(obj.undefined_hint());
  return Value::undefined(str("'", describe(obj), "' has no attribute '", name, "'"));
}

Value get_item(const Value & obj, const Value & key) {
  if (obj.is_list() && key.is_number() && !key.is_float()) {
    const int64_t n = static_cast<int64_t>(obj.items().size());
    const int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
    if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
    return Value::undefined(str("'", describe(obj), "' has no element ", key.as_int()));
  }
  if (obj.is_string() && key.is_number() && !key.is_float()) {
    const auto cps = utf8_decode(obj.str());
    const int64_t n = static_cast<int64_t>(cps.size());
    const int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
    if (i >= 0 && i < n) {
      std::string c;
      utf8_append(c, cps[static_cast<size_t>(i)]);
      return Value::string(c);
    }
    return Value::undefined(str("'str object' has no element ", key.as_int()));
  }
  if (obj.is_dict() && key.is_string()) {  // a key first, then (like Jinja) an attribute
    if (const Value * v = obj.dict().find(key.str())) return *v;
  }
  if (key.is_string()) return get_attr(obj, key.str());
  if (obj.is_undefined()) return Value::undefined(obj.undefined_hint());
  return Value::undefined(str("'", describe(obj), "' has no element ", repr(key)));
}

Value get_slice(Renderer & r, const Value & obj, const Value & start, const Value & stop, const Value & step) {
  auto part = [](const Value & v, const char * which, bool & given) -> int64_t {
    given = !(v.is_undefined() || v.is_none());
    if (!given) return 0;
    if (!v.is_number() || v.is_float()) template_fail(str("slice ", which, " must be an integer or none"));
    return v.as_int();
  };
  bool has_start, has_stop, has_step;
  int64_t a = part(start, "start", has_start), b = part(stop, "stop", has_stop), k = part(step, "step", has_step);
  if (!has_step) k = 1;
  if (k == 0) template_fail("slice step cannot be zero");
  if (!obj.is_list() && !obj.is_string()) {
    if (obj.is_undefined()) return Value::undefined(obj.undefined_hint());
    return Value::undefined(str("'", describe(obj), "' cannot be sliced"));
  }
  std::vector<uint32_t> cps;
  if (obj.is_string()) cps = utf8_decode(obj.str());
  const int64_t n = obj.is_string() ? static_cast<int64_t>(cps.size()) : static_cast<int64_t>(obj.items().size());
  // Python's slice.indices()
  auto clamp = [&](int64_t v, bool given, int64_t dflt) {
    if (!given) return dflt;
    if (v < 0) v += n;
    if (k > 0) return std::min(std::max<int64_t>(v, 0), n);
    return std::min(std::max<int64_t>(v, -1), n - 1);
  };
  a = clamp(a, has_start, k > 0 ? 0 : n - 1);
  b = clamp(b, has_stop, k > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = a; k > 0 ? i < b : i > b; i += k) idx.push_back(i);
  r.charge(idx.size() / 64);
  if (obj.is_string()) {
    std::string out;
    for (int64_t i : idx) utf8_append(out, cps[static_cast<size_t>(i)]);
    return Value::string(std::move(out));
  }
  std::vector<Value> out;
  out.reserve(idx.size());
  for (int64_t i : idx) out.push_back(obj.items()[static_cast<size_t>(i)]);
  return Value::list(std::move(out), obj.is_tuple());
}

Value iterate(const Value & v) {
  if (v.is_list()) return v;
  std::vector<Value> items;
  if (v.is_dict()) {
    for (const auto & e : v.dict()) items.push_back(Value::string(e.first));
  } else if (v.is_string()) {
    for (uint32_t c : utf8_decode(v.str())) {
      std::string s;
      utf8_append(s, c);
      items.push_back(Value::string(std::move(s)));
    }
  } else if (!v.is_undefined()) {
    template_fail(str("'", v.type_name(), "' object is not iterable"));
  }
  return Value::list(std::move(items));
}

}  // namespace peft::jinja
