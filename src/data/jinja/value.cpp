// Jinja values: construction, Python's truth, str()/repr(), == and <, json.dumps, and JSON input.
#include "data/jinja/value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace peft::jinja {

void template_fail(const std::string & message) { throw TemplateError(message); }

namespace {

struct StringHeap : detail::Heap {
  std::string s;
};
struct ListHeap : detail::Heap {
  std::vector<Value> items;
  bool tuple = false;
};
struct DictHeap : detail::Heap {
  Dict d;
};
struct CallableHeap : detail::Heap {
  std::string name;
  Native fn;
};

const std::string kEmpty;

}  // namespace

// ---- Dict ----

const Value * Dict::find(const std::string & key) const {
  if (!index_.empty()) {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &entries_[it->second].second;
  }
  for (const auto & e : entries_) {
    if (e.first == key) return &e.second;
  }
  return nullptr;
}

void Dict::set(const std::string & key, Value value) {
  if (!index_.empty()) {
    auto it = index_.find(key);
    if (it != index_.end()) {
      entries_[it->second].second = std::move(value);
      return;
    }
  } else {
    for (auto & e : entries_) {
      if (e.first == key) {
        e.second = std::move(value);
        return;
      }
    }
  }
  entries_.emplace_back(key, std::move(value));
  if (entries_.size() > 8) {
    if (index_.empty()) {
      for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].first] = i;
    } else {
      index_[key] = entries_.size() - 1;
    }
  }
}

// ---- construction and access ----

Value Value::undefined(const std::string & hint) {
  Value v;
  if (!hint.empty()) {
    auto h = std::make_shared<StringHeap>();
    h->s = hint;
    v.heap_ = std::move(h);
  }
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}

Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}

Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}

Value Value::number(double f) {
  Value v;
  v.kind_ = Kind::Float;
  v.f_ = f;
  return v;
}

Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::String;
  auto h = std::make_shared<StringHeap>();
  h->s = std::move(s);
  v.heap_ = std::move(h);
  return v;
}

Value Value::list(std::vector<Value> items, bool tuple) {
  Value v;
  v.kind_ = Kind::List;
  int depth = 0;
  for (const auto & x : items) {
    depth = std::max(depth, static_cast<int>(x.depth_));
    v.holds_ref_ = v.holds_ref_ || x.holds_ref_ || x.is_namespace() || x.is_callable();
  }
  if (depth + 1 > kMaxDepth) template_fail(peft::str("a list nested deeper than ", kMaxDepth, " levels"));
  v.depth_ = static_cast<int16_t>(depth + 1);
  auto h = std::make_shared<ListHeap>();
  h->items = std::move(items);
  h->tuple = tuple;
  v.heap_ = std::move(h);
  return v;
}

Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::Dict;
  int depth = 0;
  for (const auto & e : d) {
    depth = std::max(depth, static_cast<int>(e.second.depth_));
    v.holds_ref_ = v.holds_ref_ || e.second.holds_ref_ || e.second.is_namespace() || e.second.is_callable();
  }
  if (depth + 1 > kMaxDepth) template_fail(peft::str("a dict nested deeper than ", kMaxDepth, " levels"));
  v.depth_ = static_cast<int16_t>(depth + 1);
  auto h = std::make_shared<DictHeap>();
  h->d = std::move(d);
  v.heap_ = std::move(h);
  return v;
}

Value Value::ns(Dict d) {
  for (const auto & e : d) {
    if (e.second.is_namespace() || e.second.is_callable() || e.second.holds_ref_) {
      template_fail("a namespace cannot hold a namespace or a callable");
    }
  }
  Value v;
  v.kind_ = Kind::Namespace;
  v.depth_ = 1;  // its attributes are checked as they are set
  auto h = std::make_shared<DictHeap>();
  h->d = std::move(d);
  v.heap_ = std::move(h);
  return v;
}

Value Value::callable(std::string name, Native fn) {
  Value v;
  v.kind_ = Kind::Callable;
  auto h = std::make_shared<CallableHeap>();
  h->name = std::move(name);
  h->fn = std::move(fn);
  v.heap_ = std::move(h);
  return v;
}

bool Value::is_tuple() const { return kind_ == Kind::List && static_cast<const ListHeap &>(*heap_).tuple; }

double Value::as_float() const {
  if (kind_ == Kind::Float) return f_;
  return static_cast<double>(as_int());
}

const std::string & Value::str() const { return static_cast<const StringHeap &>(*heap_).s; }
const std::vector<Value> & Value::items() const { return static_cast<const ListHeap &>(*heap_).items; }
const Dict & Value::dict() const { return static_cast<const DictHeap &>(*heap_).d; }
Dict & Value::ns_dict() const { return static_cast<DictHeap &>(*heap_).d; }
const std::string & Value::callable_name() const { return static_cast<const CallableHeap &>(*heap_).name; }
const Native & Value::callable_fn() const { return static_cast<const CallableHeap &>(*heap_).fn; }

std::string Value::undefined_hint() const {
  return kind_ == Kind::Undefined && heap_ ? static_cast<const StringHeap &>(*heap_).s : kEmpty;
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return b_;
    case Kind::Int: return i_ != 0;
    case Kind::Float: return f_ != 0.0;
    case Kind::String: return !str().empty();
    case Kind::List: return !items().empty();
    case Kind::Dict: return !dict().empty();
    case Kind::Namespace:
    case Kind::Callable: return true;
  }
  return false;
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return is_tuple() ? "tuple" : "list";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Callable: return "function";
  }
  return "?";
}

// ---- str() and repr() ----

std::string format_float(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f < 0 ? "-inf" : "inf";
  // the shortest %e form that reads back as the same double
  char buf[64];
  for (int prec = 0; prec < 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec, f);
    if (std::strtod(buf, nullptr) == f) break;
  }
  std::string s = buf;
  std::string out = s[0] == '-' ? "-" : "";
  const size_t e = s.find('e');
  std::string digits;
  for (size_t i = out.size(); i < e; ++i) {
    if (s[i] != '.') digits.push_back(s[i]);
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int exponent = std::atoi(s.c_str() + e + 1);
  const int decpt = exponent + 1;  // value = 0.DIGITS x 10^decpt
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) return out + "0." + std::string(-decpt, '0') + digits;
    if (decpt >= static_cast<int>(digits.size())) return out + digits + std::string(decpt - digits.size(), '0') + ".0";
    return out + digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  std::snprintf(buf, sizeof buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + buf;
}

namespace {

// Code points Python's str.isprintable() rejects (controls, format characters, separators other
// than ' ', private use); a practical subset of the Unicode tables.
bool printable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad) return false;
  if (cp == 0x61c || cp == 0x1680 || cp == 0x180e || (cp >= 0x2000 && cp <= 0x200f)) return false;
  if ((cp >= 0x2028 && cp <= 0x202f) || (cp >= 0x205f && cp <= 0x206f) || cp == 0x3000 || cp == 0xfeff) return false;
  if ((cp >= 0xe000 && cp <= 0xf8ff) || (cp >= 0xfff9 && cp <= 0xfffb) || (cp >= 0xd800 && cp <= 0xdfff)) return false;
  return cp <= 0x10ffff;
}

std::string repr_string(const std::string & s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  char buf[16];
  for (uint32_t cp : utf8_decode(s)) {
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (printable(cp)) {
      utf8_append(out, cp);
    } else {
      std::snprintf(buf, sizeof buf, cp <= 0xff ? "\\x%02x" : cp <= 0xffff ? "\\u%04x" : "\\U%08x", cp);
      out += buf;
    }
  }
  out += quote;
  return out;
}

}  // namespace

std::string repr(const Value & v) {
  switch (v.kind()) {
    case Value::Kind::String: return repr_string(v.str());
    case Value::Kind::List: {
      const bool tuple = v.is_tuple();
      std::string out = tuple ? "(" : "[";
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out += ", ";
        out += repr(v.items()[i]);
      }
      if (tuple && v.items().size() == 1) out += ",";
      return out + (tuple ? ")" : "]");
    }
    case Value::Kind::Dict: {
      std::string out = "{";
      bool first = true;
      for (const auto & e : v.dict()) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(e.first) + ": " + repr(e.second);
      }
      return out + "}";
    }
    case Value::Kind::Undefined: return "Undefined";
    default: return to_str(v);
  }
}

std::string to_str(const Value & v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return v.as_bool() ? "True" : "False";
    case Value::Kind::Int: return std::to_string(v.as_int());
    case Value::Kind::Float: return format_float(v.as_float());
    case Value::Kind::String: return v.str();
    case Value::Kind::List:
    case Value::Kind::Dict: return repr(v);
    case Value::Kind::Namespace: {
      std::string out = "<Namespace {";
      bool first = true;
      for (const auto & e : v.dict()) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(e.first) + ": " + repr(e.second);
      }
      return out + "}>";
    }
    case Value::Kind::Callable: return "<function " + v.callable_name() + ">";
  }
  return "";
}

// ---- == and < ----

bool equals(const Value & a, const Value & b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::Undefined:
    case K::None: return true;
    case K::String: return a.str() == b.str();
    case K::List: {
      if (a.is_tuple() != b.is_tuple() || a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i) {
        if (!equals(a.items()[i], b.items()[i])) return false;
      }
      return true;
    }
    case K::Dict: {
      if (a.dict().size() != b.dict().size()) return false;
      for (const auto & e : a.dict()) {
        const Value * other = b.dict().find(e.first);
        if (!other || !equals(e.second, *other)) return false;
      }
      return true;
    }
    case K::Namespace: return &a.ns_dict() == &b.ns_dict();
    case K::Callable: return &a.callable_fn() == &b.callable_fn();
    default: return false;
  }
}

namespace {

std::string lower_string(const std::string & s) {
  std::string out;
  for (uint32_t cp : utf8_decode(s)) utf8_append(out, to_lower(cp));
  return out;
}

}  // namespace

int compare(const Value & a, const Value & b, bool case_insensitive) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      const double x = a.as_float(), y = b.as_float();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    const int c = case_insensitive ? lower_string(a.str()).compare(lower_string(b.str())) : a.str().compare(b.str());
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    const auto & x = a.items();
    const auto & y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (int c = compare(x[i], y[i], case_insensitive)) return c;
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  template_fail(str("'<' not supported between instances of '", a.type_name(), "' and '", b.type_name(), "'"));
}

// ---- json.dumps ----

namespace {

void json_string(std::string & out, const std::string & s, bool ensure_ascii) {
  out += '"';
  char buf[16];
  for (uint32_t cp : utf8_decode(s)) {
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (cp < 0x20 || (ensure_ascii && cp >= 0x7f)) {
          if (cp > 0xffff) {  // a surrogate pair, as Python writes it
            const uint32_t c = cp - 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
          } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", cp);
          }
          out += buf;
        } else {
          utf8_append(out, cp);
        }
    }
  }
  out += '"';
}

void json_value(std::string & out, const Value & v, const JsonStyle & st, int level) {
  const std::string item_sep = !st.item_sep.empty() ? st.item_sep : st.indent >= 0 ? "," : ", ";
  const std::string key_sep = !st.key_sep.empty() ? st.key_sep : ": ";
  auto newline = [&](int lvl) {
    if (st.indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(st.indent) * lvl, ' ');
  };
  switch (v.kind()) {
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.as_bool() ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.as_int()); return;
    case Value::Kind::Float: {
      const double f = v.as_float();
      out += std::isnan(f) ? "NaN" : std::isinf(f) ? (f < 0 ? "-Infinity" : "Infinity") : format_float(f);
      return;
    }
    case Value::Kind::String: json_string(out, v.str(), st.ensure_ascii); return;
    case Value::Kind::List: {
      if (v.items().empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out += item_sep;
        newline(level + 1);
        json_value(out, v.items()[i], st, level + 1);
      }
      newline(level);
      out += ']';
      return;
    }
    case Value::Kind::Dict:
    case Value::Kind::Namespace: {
      if (v.dict().empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value> *> entries;
      for (const auto & e : v.dict()) entries.push_back(&e);
      if (st.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](auto * a, auto * b) { return a->first < b->first; });
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += item_sep;
        newline(level + 1);
        json_string(out, entries[i]->first, st.ensure_ascii);
        out += key_sep;
        json_value(out, entries[i]->second, st, level + 1);
      }
      newline(level);
      out += '}';
      return;
    }
    default: template_fail(str("Object of type ", v.type_name(), " is not JSON serializable"));
  }
}

template <class J> Value json_to_value(const J & j, int depth) {
  if (depth > Value::kMaxDepth) template_fail(str("JSON input nested deeper than ", Value::kMaxDepth, " levels"));
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const uint64_t u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto & x : j) items.push_back(json_to_value(x, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.set(it.key(), json_to_value(it.value(), depth + 1));
      return Value::dict(std::move(d));
    }
    default: template_fail("JSON input holds a value of an unsupported type (binary)");
  }
}

}  // namespace

std::string to_json(const Value & v, const JsonStyle & style) {
  std::string out;
  json_value(out, v, style, 0);
  return out;
}

Value from_json(const nlohmann::json & j) { return json_to_value(j, 0); }
Value from_json(const nlohmann::ordered_json & j) { return json_to_value(j, 0); }

}  // namespace peft::jinja
