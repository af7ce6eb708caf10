// Jinja parser: tokens -> statements and expressions, with Python Jinja's operator precedence
// (lowest first): `x if c else y`, or, and, not, comparisons (chained, `in`, `not in`), + -, ~,
// * / // %, **, unary - +, then primaries with postfix `.attr` `[index]` `[a:b:c]` `(args)` and the
// filters `| f(args)` and tests `is [not] t(args)`. Tags: if/elif/else, for (with `if` filter and
// else), set (also block set and `ns.attr`), macro, break/continue, generation (transformers' tag).
#include <algorithm>

#include "data/jinja/ast.h"

namespace peft::jinja {

namespace {

using TK = Token::Kind;
using EK = Expr::Kind;
using SK = Stmt::Kind;

bool keyword(const std::string & s) {
  return s == "if" || s == "else" || s == "elif" || s == "and" || s == "or" || s == "not" || s == "in" || s == "is";
}

bool mentions(const Body & body, const std::string & name);

bool mentions(const Expr * e, const std::string & name) {
  if (!e) return false;
  if (e->kind == EK::Name && e->name == name) return true;
  for (const auto & x : e->items) {
    if (mentions(x.get(), name)) return true;
  }
  for (const auto & a : e->args) {
    if (mentions(a.value.get(), name)) return true;
  }
  return false;
}

bool mentions(const Body & body, const std::string & name) {
  for (const auto & s : body) {
    if (mentions(s->expr.get(), name) || mentions(s->target.get(), name) || mentions(s->cond.get(), name) ||
        mentions(s->body, name) || mentions(s->orelse, name)) {
      return true;
    }
    for (const auto & p : s->params) {
      if (mentions(p.value.get(), name)) return true;
    }
  }
  return false;
}

class Parser {
 public:
  Parser(const std::vector<Token> & tokens, int max_depth) : t_(tokens), max_depth_(max_depth) {}

  Body run() {
    std::string end;
    Body body = parse_body({}, end, "", 0);
    return body;
  }

 private:
  const std::vector<Token> & t_;
  size_t p_ = 0;
  int max_depth_;
  int depth_ = 0;
  int loops_ = 0;  // enclosing for loops (break/continue need one)

  struct Nest {
    Parser & p;
    Nest(Parser & parser, size_t at) : p(parser) {
      if (++p.depth_ > p.max_depth_) p.fail(str("nested deeper than ", p.max_depth_, " levels"), at);
    }
    ~Nest() { --p.depth_; }
  };

  [[noreturn]] void fail(const std::string & msg, size_t at) const { throw TemplateError(msg, at); }

  const Token & peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  const Token & next() { return t_[std::min(p_++, t_.size() - 1)]; }
  bool is_op(const char * op, size_t k = 0) const { return peek(k).kind == TK::Op && peek(k).text == op; }
  bool is_name(const char * name, size_t k = 0) const { return peek(k).kind == TK::Name && peek(k).text == name; }

  static std::string describe(const Token & t) {
    switch (t.kind) {
      case TK::Text: return "template text";
      case TK::ExprOpen: return "'{{'";
      case TK::ExprClose: return "'}}'";
      case TK::StmtOpen: return "'{%'";
      case TK::StmtClose: return "'%}'";
      case TK::Name: return "'" + t.text + "'";
      case TK::String: return "a string";
      case TK::Int:
      case TK::Float: return "a number";
      case TK::Op: return "'" + t.text + "'";
      case TK::End: return "the end of the template";
    }
    return "?";
  }

  void expect_op(const char * op) {
    if (!is_op(op)) fail(str("expected '", op, "', got ", describe(peek())), peek().at);
    ++p_;
  }
  void expect(TK kind, const char * what) {
    if (peek().kind != kind) fail(str("expected ", what, ", got ", describe(peek())), peek().at);
    ++p_;
  }
  std::string expect_name(const char * what) {
    if (peek().kind != TK::Name) fail(str("expected ", what, ", got ", describe(peek())), peek().at);
    return next().text;
  }

  ExprPtr node(EK kind, size_t at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->at = at;
    return e;
  }
  // The node's height from its children: a long chain (1 + 1 + 1 ...) is as deep as a nested one.
  ExprPtr done(ExprPtr e) {
    int h = 0;
    for (const auto & x : e->items) h = std::max(h, x ? x->height : 0);
    for (const auto & a : e->args) h = std::max(h, a.value ? a.value->height : 0);
    e->height = h + 1;
    if (e->height > max_depth_) fail(str("expression nested deeper than ", max_depth_, " levels"), e->at);
    return e;
  }
  ExprPtr binary(EK kind, const std::string & op, ExprPtr l, ExprPtr r) {
    auto e = node(kind, l->at);
    e->name = op;
    e->items.push_back(std::move(l));
    e->items.push_back(std::move(r));
    return done(std::move(e));
  }

  // ---- statements ----

  // Statements up to a tag named in `ends` (its '{%' and name consumed, its name in `found`).
  Body parse_body(const std::vector<std::string> & ends, std::string & found, const std::string & opener,
                  size_t opener_at) {
    Body body;
    while (true) {
      const Token & t = peek();
      if (t.kind == TK::End) {
        if (ends.empty()) return body;
        fail(str("'{% ", opener, " %}' is never closed (no '{% ", ends.back(), " %}')"), opener_at);
      }
      if (t.kind == TK::Text) {
        auto s = stmt(SK::Text, t.at);
        s->text = next().text;
        body.push_back(std::move(s));
      } else if (t.kind == TK::ExprOpen) {
        ++p_;
        auto s = stmt(SK::Output, t.at);
        s->expr = parse_expr();
        expect(TK::ExprClose, "'}}'");
        body.push_back(std::move(s));
      } else if (t.kind == TK::StmtOpen) {
        const Token & name = peek(1);
        if (name.kind == TK::Name && std::find(ends.begin(), ends.end(), name.text) != ends.end()) {
          p_ += 2;
          found = name.text;
          return body;
        }
        body.push_back(parse_statement());
      } else {
        fail(str("unexpected ", describe(t)), t.at);
      }
    }
  }

  StmtPtr stmt(SK kind, size_t at) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->at = at;
    return s;
  }

  StmtPtr parse_statement() {
    const size_t at = next().at;  // '{%'
    const Token & name_tok = peek();
    if (name_tok.kind != TK::Name) fail(str("expected a tag name after '{%', got ", describe(name_tok)), name_tok.at);
    const std::string name = next().text;
    Nest nest(*this, at);
    if (name == "if") return parse_if(at);
    if (name == "for") return parse_for(at);
    if (name == "set") return parse_set(at);
    if (name == "macro") return parse_macro(at);
    if (name == "generation") {
      expect(TK::StmtClose, "'%}'");
      auto s = stmt(SK::Block, at);
      std::string end;
      s->body = parse_body({"endgeneration"}, end, "generation", at);
      expect(TK::StmtClose, "'%}'");
      return s;
    }
    if (name == "break" || name == "continue") {
      if (loops_ == 0) fail(str("'{% ", name, " %}' outside a for loop"), at);
      expect(TK::StmtClose, "'%}'");
      return stmt(name == "break" ? SK::Break : SK::Continue, at);
    }
    if (name.compare(0, 3, "end") == 0 || name == "elif" || name == "else") {
      fail(str("unexpected '{% ", name, " %}' (no open block it could close)"), at);
    }
    fail(str("unknown or unsupported tag '", name, "'"), name_tok.at);
  }

  StmtPtr parse_if(size_t at) {
    auto s = stmt(SK::If, at);
    s->expr = parse_expr();
    expect(TK::StmtClose, "'%}'");
    std::string end;
    s->body = parse_body({"elif", "else", "endif"}, end, "if", at);
    if (end == "elif") {
      Nest nest(*this, at);
      s->orelse.push_back(parse_if(peek().at));  // the elif's own endif is this if's
      return s;
    }
    if (end == "else") {
      expect(TK::StmtClose, "'%}'");
      s->orelse = parse_body({"endif"}, end, "if", at);
    }
    expect(TK::StmtClose, "'%}'");
    return s;
  }

  // for x in ..., for k, v in ..., for (a, b) in ...
  ExprPtr parse_target(bool allow_attr) {
    const size_t at = peek().at;
    if (is_op("(")) {
      ++p_;
      auto t = parse_target(false);
      expect_op(")");
      return t;
    }
    auto first = node(EK::Name, at);
    first->name = expect_name("a variable name");
    if (allow_attr && is_op(".")) {
      ++p_;
      auto attr = node(EK::Attr, at);
      attr->name = expect_name("an attribute name");
      attr->items.push_back(std::move(first));
      return done(std::move(attr));
    }
    if (!is_op(",")) return first;
    auto tuple = node(EK::Tuple, at);
    tuple->items.push_back(std::move(first));
    while (is_op(",")) {
      ++p_;
      if (peek().kind != TK::Name) break;
      auto n = node(EK::Name, peek().at);
      n->name = next().text;
      tuple->items.push_back(std::move(n));
    }
    return done(std::move(tuple));
  }

  StmtPtr parse_for(size_t at) {
    auto s = stmt(SK::For, at);
    s->target = parse_target(false);
    if (!is_name("in")) fail(str("expected 'in' after the loop variable, got ", describe(peek())), peek().at);
    ++p_;
    s->expr = parse_tuple_or_expr(false);
    if (is_name("if")) {
      ++p_;
      s->cond = parse_expr(false);
    }
    if (is_name("recursive")) fail("recursive for loops are not supported", peek().at);
    expect(TK::StmtClose, "'%}'");
    std::string end;
    ++loops_;
    s->body = parse_body({"else", "endfor"}, end, "for", at);
    --loops_;
    if (end == "else") {
      expect(TK::StmtClose, "'%}'");
      s->orelse = parse_body({"endfor"}, end, "for", at);
    }
    expect(TK::StmtClose, "'%}'");
    s->uses_loop = mentions(s->body, "loop");
    return s;
  }

  StmtPtr parse_set(size_t at) {
    auto target = parse_target(true);
    if (is_op("=")) {
      ++p_;
      auto s = stmt(SK::Set, at);
      s->target = std::move(target);
      s->expr = parse_tuple_or_expr(true);
      expect(TK::StmtClose, "'%}'");
      return s;
    }
    if (target->kind != EK::Name) fail("a block set ({% set x %}...{% endset %}) needs a plain name", target->at);
    expect(TK::StmtClose, "'=' or '%}'");
    auto s = stmt(SK::SetBlock, at);
    s->target = std::move(target);
    std::string end;
    s->body = parse_body({"endset"}, end, "set", at);
    expect(TK::StmtClose, "'%}'");
    return s;
  }

  StmtPtr parse_macro(size_t at) {
    auto s = stmt(SK::Macro, at);
    s->name = expect_name("the macro's name");
    expect_op("(");
    while (!is_op(")")) {
      Arg p;
      const size_t pat = peek().at;
      p.name = expect_name("a parameter name");
      if (is_op("=")) {
        ++p_;
        p.value = parse_expr();
      } else if (!s->params.empty() && s->params.back().value) {
        fail(str("parameter '", p.name, "' without a default follows one with a default"), pat);
      }
      for (const auto & q : s->params) {
        if (q.name == p.name) fail(str("parameter '", p.name, "' given twice"), pat);
      }
      s->params.push_back(std::move(p));
      if (!is_op(",")) break;
      ++p_;
    }
    expect_op(")");
    expect(TK::StmtClose, "'%}'");
    const int loops = loops_;
    loops_ = 0;
    std::string end;
    s->body = parse_body({"endmacro"}, end, "macro", at);
    loops_ = loops;
    expect(TK::StmtClose, "'%}'");
    return s;
  }

  // ---- expressions ----

  // `a, b, c` without parentheses is a tuple (a for loop's iterable, a set's value)
  ExprPtr parse_tuple_or_expr(bool with_cond) {
    auto first = parse_expr(with_cond);
    if (!is_op(",")) return first;
    auto tuple = node(EK::Tuple, first->at);
    tuple->items.push_back(std::move(first));
    while (is_op(",")) {
      ++p_;
      if (peek().kind == TK::StmtClose || is_name("if")) break;
      tuple->items.push_back(parse_expr(with_cond));
    }
    return done(std::move(tuple));
  }

  ExprPtr parse_expr(bool with_cond = true) {
    Nest nest(*this, peek().at);
    auto e = parse_or();
    if (!with_cond || !is_name("if")) return e;
    ++p_;
    auto c = node(EK::Cond, e->at);
    c->items.push_back(std::move(e));
    c->items.push_back(parse_or());
    if (is_name("else")) {
      ++p_;
      c->items.push_back(parse_expr());
    } else {
      c->items.push_back(nullptr);
    }
    return done(std::move(c));
  }

  ExprPtr parse_or() {
    auto l = parse_and();
    while (is_name("or")) {
      ++p_;
      l = binary(EK::Or, "or", std::move(l), parse_and());
    }
    return l;
  }

  ExprPtr parse_and() {
    auto l = parse_not();
    while (is_name("and")) {
      ++p_;
      l = binary(EK::And, "and", std::move(l), parse_not());
    }
    return l;
  }

  ExprPtr parse_not() {
    if (!is_name("not")) return parse_compare();
    const size_t at = next().at;
    Nest nest(*this, at);
    auto e = node(EK::Unary, at);
    e->name = "not";
    e->items.push_back(parse_not());
    return done(std::move(e));
  }

  ExprPtr parse_compare() {
    auto first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (peek().kind == TK::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                    peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        ++p_;
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        p_ += 2;
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(EK::Compare, first->at);
        cmp->items.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->items.push_back(parse_math1());
    }
    return cmp ? done(std::move(cmp)) : std::move(first);
  }

  ExprPtr parse_math1() {
    auto l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = next().text;
      l = binary(EK::Binary, op, std::move(l), parse_concat());
    }
    return l;
  }

  ExprPtr parse_concat() {
    auto l = parse_math2();
    while (is_op("~")) {
      ++p_;
      l = binary(EK::Binary, "~", std::move(l), parse_math2());
    }
    return l;
  }

  ExprPtr parse_math2() {
    auto l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = next().text;
      l = binary(EK::Binary, op, std::move(l), parse_pow());
    }
    return l;
  }

  ExprPtr parse_pow() {
    auto l = parse_unary(true);
    while (is_op("**")) {
      ++p_;
      l = binary(EK::Binary, "**", std::move(l), parse_unary(true));
    }
    return l;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token & t = next();
      Nest nest(*this, t.at);
      e = node(EK::Unary, t.at);
      e->name = t.text;
      e->items.push_back(parse_unary(false));
      e = done(std::move(e));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    return with_filter ? parse_filters(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    const Token & t = peek();
    switch (t.kind) {
      case TK::Name: {
        ++p_;
        auto e = node(EK::Const, t.at);
        if (t.text == "true" || t.text == "True") {
          e->value = Value::boolean(true);
        } else if (t.text == "false" || t.text == "False") {
          e->value = Value::boolean(false);
        } else if (t.text == "none" || t.text == "None") {
          e->value = Value::none();
        } else {
          e->kind = EK::Name;
          e->name = t.text;
        }
        return e;
      }
      case TK::String: {
        std::string s;
        while (peek().kind == TK::String) s += next().text;  // 'a' 'b' is 'ab'
        auto e = node(EK::Const, t.at);
        e->value = Value::string(std::move(s));
        return e;
      }
      case TK::Int:
      case TK::Float: {
        ++p_;
        auto e = node(EK::Const, t.at);
        e->value = t.kind == TK::Int ? Value::integer(t.i) : Value::number(t.f);
        return e;
      }
      case TK::Op:
        if (t.text == "(") return parse_paren();
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        break;
      default: break;
    }
    fail(str("expected an expression, got ", describe(t)), t.at);
  }

  ExprPtr parse_paren() {
    const size_t at = next().at;
    if (is_op(")")) {
      ++p_;
      return node(EK::Tuple, at);
    }
    auto first = parse_expr();
    if (is_op(")")) {
      ++p_;
      return first;
    }
    auto tuple = node(EK::Tuple, at);
    tuple->items.push_back(std::move(first));
    while (is_op(",")) {
      ++p_;
      if (is_op(")")) break;
      tuple->items.push_back(parse_expr());
    }
    expect_op(")");
    return done(std::move(tuple));
  }

  ExprPtr parse_list() {
    auto e = node(EK::List, next().at);
    while (!is_op("]")) {
      e->items.push_back(parse_expr());
      if (!is_op(",")) break;
      ++p_;
    }
    expect_op("]");
    return done(std::move(e));
  }

  ExprPtr parse_dict() {
    auto e = node(EK::Dict, next().at);
    while (!is_op("}")) {
      e->items.push_back(parse_expr());
      expect_op(":");
      e->items.push_back(parse_expr());
      if (!is_op(",")) break;
      ++p_;
    }
    expect_op("}");
    return done(std::move(e));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        ++p_;
        const Token & t = peek();
        if (t.kind == TK::Int) {  // x.0 is x[0]
          ++p_;
          auto idx = node(EK::Const, t.at);
          idx->value = Value::integer(t.i);
          auto i = node(EK::Index, e->at);
          i->items.push_back(std::move(e));
          i->items.push_back(std::move(idx));
          e = done(std::move(i));
          continue;
        }
        auto a = node(EK::Attr, e->at);
        a->name = expect_name("an attribute name after '.'");
        a->items.push_back(std::move(e));
        e = done(std::move(a));
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    ++p_;  // '['
    ExprPtr parts[3];
    if (!is_op(":")) parts[0] = parse_expr();
    if (is_op("]")) {
      if (!parts[0]) fail("expected an index inside '[]'", peek().at);
      ++p_;
      auto i = node(EK::Index, obj->at);
      i->items.push_back(std::move(obj));
      i->items.push_back(std::move(parts[0]));
      return done(std::move(i));
    }
    expect_op(":");
    if (!is_op("]") && !is_op(":")) parts[1] = parse_expr();
    if (is_op(":")) {
      ++p_;
      if (!is_op("]")) parts[2] = parse_expr();
    }
    expect_op("]");
    auto s = node(EK::Slice, obj->at);
    s->items.push_back(std::move(obj));
    for (auto & part : parts) s->items.push_back(std::move(part));
    return done(std::move(s));
  }

  void parse_args(std::vector<Arg> & args) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) fail("argument unpacking (*args, **kwargs) is not supported", peek().at);
      Arg a;
      if (peek().kind == TK::Name && is_op("=", 1)) {
        a.name = next().text;
        ++p_;
        for (const auto & b : args) {
          if (b.name == a.name) fail(str("keyword argument '", a.name, "' given twice"), peek().at);
        }
      } else if (!args.empty() && !args.back().name.empty()) {
        fail("a positional argument follows a keyword argument", peek().at);
      }
      a.value = parse_expr();
      args.push_back(std::move(a));
      if (!is_op(",")) break;
      ++p_;
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = node(EK::Call, callee->at);
    c->items.push_back(std::move(callee));
    parse_args(c->args);
    return done(std::move(c));
  }

  ExprPtr parse_filters(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        const size_t at = next().at;
        auto f = node(EK::Filter, at);
        f->name = expect_name("a filter name after '|'");
        f->items.push_back(std::move(e));
        if (is_op("(")) parse_args(f->args);
        e = done(std::move(f));
      } else if (is_name("is")) {
        const size_t at = next().at;
        auto t = node(EK::Test, at);
        if (is_name("not")) {
          ++p_;
          t->negated = true;
        }
        // `is none`, `is true`: those words name tests here, not constants
        t->name = expect_name("a test name after 'is'");
        t->items.push_back(std::move(e));
        const Token & a = peek();
        if (is_op("(")) {
          parse_args(t->args);
        } else if (a.kind == TK::String || a.kind == TK::Int || a.kind == TK::Float || is_op("[") || is_op("{") ||
                   (a.kind == TK::Name && !keyword(a.text))) {
          Arg arg;  // `x is divisibleby 3`, `x is sameas none`
          arg.value = parse_postfix(parse_primary());
          t->args.push_back(std::move(arg));
        }
        e = done(std::move(t));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }
};

}  // namespace

Body parse(const std::vector<Token> & tokens, int max_depth) { return Parser(tokens, max_depth).run(); }

}  // namespace peft::jinja
