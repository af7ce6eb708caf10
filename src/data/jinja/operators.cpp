// Jinja's operators with Python's semantics: arithmetic on ints (overflow is an error, // and % floor),
// floats and bools; + and * on strings and lists (within the size limits); ~; comparisons, in / not in.
#include <cmath>
#include <limits>

#include "data/jinja/jinja.h"

namespace peft::jinja {

namespace {

[[noreturn]] void fail_undefined(const Value & v) {
  const std::string hint = v.undefined_hint();
  template_fail(hint.empty() ? "an undefined value was used" : hint);
}

bool checked_add(int64_t a, int64_t b, int64_t & out) { return !__builtin_add_overflow(a, b, &out); }
bool checked_sub(int64_t a, int64_t b, int64_t & out) { return !__builtin_sub_overflow(a, b, &out); }
bool checked_mul(int64_t a, int64_t b, int64_t & out) { return !__builtin_mul_overflow(a, b, &out); }

[[noreturn]] void unsupported(const std::string & op, const Value & a, const Value & b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  template_fail(str("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(), "'"));
}

}  // namespace

bool Renderer::compare_op(const std::string & op, const Value & a, const Value & b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in" || op == "not in") {
    bool found = false;
    if (b.is_string()) {
      if (!a.is_string()) {
        template_fail(str("'in <string>' requires a string as left operand, not '", a.type_name(), "'"));
      }
      found = b.str().find(a.str()) != std::string::npos;
    } else if (b.is_list()) {
      for (const auto & x : b.items()) {
        if (equals(a, x)) {
          found = true;
          break;
        }
      }
    } else if (b.is_dict()) {
      found = a.is_string() && b.dict().find(a.str()) != nullptr;
    } else if (!b.is_undefined()) {
      template_fail(str("argument of type '", b.type_name(), "' is not iterable"));
    }
    return op == "in" ? found : !found;
  }
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  const int c = compare(a, b);
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

Value Renderer::binary(const std::string & op, const Value & a, const Value & b) {
  if (op == "~") {
    std::string sa = to_str(a), sb = to_str(b);
    check_string(sa.size() + sb.size(), "a '~' result");
    return Value::string(sa + sb);
  }
  const bool ints = a.is_number() && b.is_number() && !a.is_float() && !b.is_float();
  const bool nums = a.is_number() && b.is_number();
  if (op == "+" || op == "-") {
    if (ints) {
      int64_t r;
      const bool ok = op == "+" ? checked_add(a.as_int(), b.as_int(), r) : checked_sub(a.as_int(), b.as_int(), r);
      if (!ok) template_fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::number(op == "+" ? a.as_float() + b.as_float() : a.as_float() - b.as_float());
    if (op == "+" && a.is_string() && b.is_string()) {
      check_string(a.str().size() + b.str().size(), "a '+' result");
      return Value::string(a.str() + b.str());
    }
    if (op == "+" && a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      check_items(a.items().size() + b.items().size(), "a '+' result");
      std::vector<Value> items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      return Value::list(std::move(items), a.is_tuple());
    }
    unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      if (!checked_mul(a.as_int(), b.as_int(), r)) template_fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_float() * b.as_float());
    const Value & seq = a.is_string() || a.is_list() ? a : b;
    const Value & count = &seq == &a ? b : a;
    if ((seq.is_string() || seq.is_list()) && count.is_number() && !count.is_float()) {
      const int64_t n = std::max<int64_t>(0, count.as_int());
      if (seq.is_string()) {
        const size_t len = seq.str().size();
        if (len == 0 || n == 0) return Value::string("");
        if (static_cast<uint64_t>(n) > limits_.max_output / len) check_string(limits_.max_output + 1, "a '*' result");
        std::string out;
        out.reserve(len * static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) out += seq.str();
        return Value::string(std::move(out));
      }
      const size_t len = seq.items().size();
      if (len == 0 || n == 0) return Value::list({}, seq.is_tuple());
      if (static_cast<uint64_t>(n) > limits_.max_items / len) check_items(limits_.max_items + 1, "a '*' result");
      std::vector<Value> items;
      for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.items().begin(), seq.items().end());
      return Value::list(std::move(items), seq.is_tuple());
    }
    unsupported(op, a, b);
  }
  if (!nums) unsupported(op, a, b);
  if (op == "/") {
    if (b.as_float() == 0.0) template_fail("division by zero");
    return Value::number(a.as_float() / b.as_float());
  }
  if (op == "//" || op == "%") {
    if (ints) {
      const int64_t x = a.as_int(), y = b.as_int();
      if (y == 0) template_fail(op == "//" ? "integer division by zero" : "integer modulo by zero");
      if (x == std::numeric_limits<int64_t>::min() && y == -1) template_fail("integer overflow");
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {  // Python floors
        q -= 1;
        r += y;
      }
      return Value::integer(op == "//" ? q : r);
    }
    const double x = a.as_float(), y = b.as_float();
    if (y == 0.0) template_fail(op == "//" ? "float floor division by zero" : "float modulo");
    if (op == "//") return Value::number(std::floor(x / y));
    double r = std::fmod(x, y);
    if (r != 0.0 && ((r < 0) != (y < 0))) r += y;
    return Value::number(r);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), exp = b.as_int(), r = 1;
      while (exp > 0) {
        if ((exp & 1) && !checked_mul(r, base, r)) template_fail("integer overflow");
        exp >>= 1;
        if (exp > 0 && !checked_mul(base, base, base)) template_fail("integer overflow");
      }
      return Value::integer(r);
    }
    if (a.as_float() == 0.0 && b.as_float() < 0) template_fail("0.0 cannot be raised to a negative power");
    const double r = std::pow(a.as_float(), b.as_float());
    if (std::isnan(r)) template_fail("a negative number raised to a fractional power");
    return Value::number(r);
  }
  template_fail(str("unknown operator '", op, "'"));
}

}  // namespace peft::jinja
