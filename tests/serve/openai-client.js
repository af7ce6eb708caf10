// Drive a peft serve instance with OpenAI's official Node client (the npm package "openai"):
//   node openai-client.js REF_DIR BASE_URL API_KEY MODEL PROMPT
// REF_DIR: where tests/tokenizer/fetch-reference.sh installed the npm packages. Prints one JSON object:
// the models list, a completion, a chat completion, and the same two streamed (deltas joined), all greedy.
const path = require("path");
const [refDir, baseURL, apiKey, model, prompt] = process.argv.slice(2);
const OpenAI = require(path.join(path.resolve(refDir), "node_modules", "openai"));

async function main() {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
  const out = {};
  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);
  const c = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0 });
  out.completion = { text: c.choices[0].text, finish_reason: c.choices[0].finish_reason, usage: c.usage, object: c.object };
  const messages = [{ role: "user", content: prompt }];
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
  out.chat = { content: chat.choices[0].message.content, role: chat.choices[0].message.role,
               finish_reason: chat.choices[0].finish_reason, usage: chat.usage, object: chat.object };
  let text = "", chunks = 0, finish = null;
  const s = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, stream: true });
  for await (const part of s) {
    chunks++;
    text += part.choices[0]?.text ?? "";
    finish = part.choices[0]?.finish_reason ?? finish;
  }
  out.stream = { text, chunks, finish_reason: finish };
  let content = "", roles = [], usage = null;
  finish = null;
  const cs = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, stream: true,
                                                    stream_options: { include_usage: true } });
  for await (const part of cs) {
    if (part.usage) usage = part.usage;
    const ch = part.choices[0];
    if (!ch) continue;
    if (ch.delta.role) roles.push(ch.delta.role);
    content += ch.delta.content ?? "";
    finish = ch.finish_reason ?? finish;
  }
  out.chat_stream = { content, roles, finish_reason: finish, usage };
  try {
    await client.completions.create({ model: "no-such-adapter", prompt, max_tokens: 2 });
    out.unknown_model = "no error";
  } catch (e) {
    out.unknown_model = { status: e.status, code: e.code, type: e.type };
  }
  console.log(JSON.stringify(out));
}
main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
