// The Jinja engine's front end: tokens (lexer.cpp) and the syntax tree (parser.cpp).
// Every token and node keeps the byte offset in the template source where it starts, for messages.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/jinja/value.h"

namespace peft::jinja {

// ---- tokens ----

struct Token {
  enum class Kind : uint8_t {
    Text,        // template text between tags (whitespace control already applied)
    ExprOpen,    // {{
    ExprClose,   // }}
    StmtOpen,    // {%
    StmtClose,   // %}
    Name,
    String,      // text holds the decoded value
    Int,
    Float,
    Op,          // operators and punctuation: text holds it ("**", "(", ...)
    End,
  };
  Kind kind;
  std::string text;
  size_t at;  // byte offset in the source
  int64_t i = 0;
  double f = 0.0;
};

/// Split a template into tokens with trim_blocks and lstrip_blocks on (as transformers configures
/// Jinja), `-` whitespace control, comments dropped and {% raw %} bodies kept as text. Throws
/// TemplateError (with the offset) on an unclosed tag, string or comment, or a character outside Jinja.
std::vector<Token> lex(const std::string & source);

// ---- syntax tree ----

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

/// A call argument or a macro parameter: `name` empty for a positional one.
struct Arg {
  std::string name;
  ExprPtr value;  // a parameter's default (may be null)
};

struct Expr {
  enum class Kind : uint8_t {
    Const,    // value
    Name,     // name
    List,     // items
    Tuple,    // items
    Dict,     // items: key, value, key, value, ...
    Attr,     // items[0].name
    Index,    // items[0][items[1]]
    Slice,    // items[0][items[1]:items[2]:items[3]] (null parts omitted)
    Call,     // items[0](args)
    Filter,   // items[0] | name(args)
    Test,     // items[0] is [not] name(args)
    Unary,    // name ("-", "+", "not") items[0]
    Binary,   // items[0] name items[1]: + - * / // % ** ~
    And,      // items[0] and items[1]
    Or,       // items[0] or items[1]
    Compare,  // items[0] ops[0] items[1] ops[1] items[2] ... (Python chains them)
    Cond,     // items[0] if items[1] else items[2] (items[2] null: undefined)
  };
  Kind kind;
  size_t at;
  std::string name;
  Value value;
  std::vector<ExprPtr> items;
  std::vector<std::string> ops;
  std::vector<Arg> args;
  bool negated = false;  // Test: `is not`
  int height = 1;        // levels of nodes below and including this one
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind : uint8_t {
    Text,      // text
    Output,    // {{ expr }}
    If,        // if expr: body, else: orelse (an elif is an If alone in orelse)
    For,       // for target in expr [if cond]: body, else: orelse
    Set,       // set target = expr
    SetBlock,  // set target %}body{% endset
    Macro,     // macro name(params): body
    Break,
    Continue,
    Block,     // body rendered as is ({% generation %}...{% endgeneration %})
  };
  Kind kind;
  size_t at;
  std::string text;
  ExprPtr expr, target, cond;
  Body body, orelse;
  std::string name;
  std::vector<Arg> params;
  bool uses_loop = false;  // For: the body reads `loop`
};

/// Parse tokens into statements. Nesting (expressions and blocks together) is limited to max_depth.
/// Throws TemplateError with the offending token's offset.
Body parse(const std::vector<Token> & tokens, int max_depth);

}  // namespace peft::jinja
