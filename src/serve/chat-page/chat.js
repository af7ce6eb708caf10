// peft serve's chat page. Picks the base model or a loaded adapter (or two side by side: the same message
// goes to both, both stream at once), sends each pane's conversation to POST /v1/chat/completions with
// "stream": true and shows the server-sent events as they arrive. The server applies the chat template.
// With --api-key the API answers 401: the page asks for the key and sends it as "Authorization: Bearer".
// State for tests and scripts: body[data-state] is loading / idle / busy; each answer's element gets
// data-finish (stop, length, stopped, error) when it ends.
'use strict';

const KEY_STORE = 'peft-serve-api-key';
const $ = (id) => document.getElementById(id);

let apiKey = '';
try {
  apiKey = localStorage.getItem(KEY_STORE) || '';
} catch (e) {
  // (storage disabled: the key stays in memory)
}
let keyWaiters = [];  // requests waiting for the user to give a key
let controller = null;  // the running exchange's AbortController
let baseModel = '';

const panes = [0, 1].map((i) => ({
  el: $('pane-' + i),
  select: $('model-' + i),
  log: $('pane-' + i).querySelector('.log'),
  title: $('pane-' + i).querySelector('.pane-title'),
  messages: [],  // this pane's conversation: {role, content}
}));

function setStatus(text) {
  $('status').textContent = text;
}

function setState(state) {
  document.body.dataset.state = state;
  $('send').disabled = state !== 'idle';
  $('stop').disabled = state !== 'busy';
}

// The message of an API error response ({"error": {"message"}}), or its text.
async function errorMessage(res) {
  const text = await res.text().catch(() => '');
  try {
    const j = JSON.parse(text);
    if (j && j.error && j.error.message) return j.error.message;
  } catch (e) {
    // not JSON
  }
  return text ? `HTTP ${res.status}: ${text.slice(0, 300)}` : `HTTP ${res.status}`;
}

function askKey(message) {
  $('key-label').textContent = message;
  $('key-form').hidden = false;
  $('api-key').value = '';
  $('api-key').focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function releaseKeyWaiters() {
  const waiting = keyWaiters;
  keyWaiters = [];
  waiting.forEach((resolve) => resolve());
}

// fetch() on this server's API with the key; a 401 asks for the key and sends the request again
async function api(path, init = {}) {
  for (;;) {
    const headers = Object.assign({}, init.headers);
    if (apiKey) headers['Authorization'] = 'Bearer ' + apiKey;
    const res = await fetch(path, Object.assign({}, init, { headers, cache: 'no-store' }));
    if (res.status !== 401) return res;
    const refused = await errorMessage(res);
    const prompt = apiKey ? `The server refused the key (${refused}). API key:` : 'This server needs an API key:';
    await askKey(prompt);
    if (init.signal && init.signal.aborted) throw new DOMException('stopped', 'AbortError');
  }
}

function fillSelect(select, ids, withNone) {
  const keep = select.value;
  select.textContent = '';
  if (withNone) select.append(new Option('(none)', ''));
  for (const id of ids) select.append(new Option(id === baseModel ? `${id} (base)` : `${id} (adapter)`, id));
  select.value = ids.includes(keep) ? keep : withNone ? '' : ids[0] || '';
}

async function loadModels() {
  setState('loading');
  setStatus('loading the model list…');
  try {
    const res = await api('/v1/models');
    if (!res.ok) throw new Error(await errorMessage(res));
    const list = (await res.json()).data || [];
    const base = list.find((m) => !m.parent);
    baseModel = base ? base.id : '';
    const ids = list.map((m) => m.id);
    fillSelect(panes[0].select, ids, false);
    fillSelect(panes[1].select, ids, true);
    setStatus(`${ids.length} model${ids.length === 1 ? '' : 's'}: the base and ${ids.length - 1} adapter${ids.length === 2 ? '' : 's'}`);
  } catch (e) {
    setStatus('cannot list the models: ' + e.message);
  }
  updatePanes();
  setState('idle');
}

function updatePanes() {
  const two = panes[1].select.value !== '';
  panes[1].el.hidden = !two;
  $('panes').classList.toggle('two', two);
  for (const p of panes) p.title.textContent = p.select.value;
}

function addMessage(pane, role, text, model) {
  const div = document.createElement('div');
  div.className = 'msg ' + role;
  const who = document.createElement('div');
  who.className = 'who';
  who.textContent = role === 'user' ? 'you' : model;
  const content = document.createElement('div');
  content.className = 'content';
  content.textContent = text;
  const meta = document.createElement('div');
  meta.className = 'meta';
  div.append(who, content, meta);
  pane.log.append(div);
  pane.log.scrollTop = pane.log.scrollHeight;
  return { div, content, meta };
}

// The sampling fields that are filled in (the server's defaults for the others); the server checks them.
function settings() {
  const s = {};
  const number = (id, field) => {
    const v = $(id).value.trim();
    if (v !== '') s[field] = Number(v);
  };
  number('temperature', 'temperature');
  number('top-p', 'top_p');
  number('max-tokens', 'max_tokens');
  number('seed', 'seed');
  return s;
}

// Read a server-sent event stream, calling onData with each event's data; stops at "[DONE]".
async function readEvents(res, onData) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let data = null;
  let finished = false;
  const line = (l) => {
    if (l.endsWith('\r')) l = l.slice(0, -1);
    if (l === '') {
      if (data === null) return;
      const d = data;
      data = null;
      if (d === '[DONE]') finished = true;
      else onData(JSON.parse(d));
    } else if (l.startsWith('data:')) {
      const v = l.startsWith('data: ') ? l.slice(6) : l.slice(5);
      data = data === null ? v : data + '\n' + v;
    }
    // (comments and the event, id and retry fields are not used by the API)
  };
  try {
    while (!finished) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while (!finished && (nl = buffer.indexOf('\n')) >= 0) {
        const l = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        line(l);
      }
    }
    if (!finished) {
      buffer += decoder.decode();
      if (buffer) line(buffer);
      line('');
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function describe(finish, usage, t0) {
  const secs = (performance.now() - t0) / 1000;
  const parts = [finish === 'length' ? 'max tokens reached' : 'finished'];
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  parts.push(`${secs.toFixed(2)} s`);
  if (usage && secs > 0) parts.push(`${(usage.completion_tokens / secs).toFixed(1)} tokens/s`);
  return parts.join(' · ');
}

// One pane's turn: the user's message, then the streamed answer.
async function converse(pane, text, sampling, signal) {
  const model = pane.select.value;
  pane.messages.push({ role: 'user', content: text });
  const asked = addMessage(pane, 'user', text);
  const answer = addMessage(pane, 'assistant', '', model);
  answer.div.classList.add('streaming');
  const system = $('system').value;
  const messages = (system.trim() ? [{ role: 'system', content: system }] : []).concat(pane.messages);
  const body = Object.assign({ model, messages, stream: true, stream_options: { include_usage: true } }, sampling);
  let got = '';
  let finish = null;
  let usage = null;
  const t0 = performance.now();
  try {
    const res = await api('/v1/chat/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal,
    });
    if (!res.ok) throw new Error(await errorMessage(res));
    await readEvents(res, (ev) => {
      if (ev.error) throw new Error(ev.error.message || JSON.stringify(ev.error));
      if (ev.usage) usage = ev.usage;
      const c = ev.choices && ev.choices[0];
      if (!c) return;
      if (c.delta && typeof c.delta.content === 'string' && c.delta.content !== '') {
        got += c.delta.content;
        answer.content.textContent = got;
        pane.log.scrollTop = pane.log.scrollHeight;
      }
      if (c.finish_reason) finish = c.finish_reason;
    });
    if (finish === null) throw new Error('the stream ended without a finish reason');
    pane.messages.push({ role: 'assistant', content: got });
    answer.meta.textContent = describe(finish, usage, t0);
    answer.div.dataset.finish = finish;
  } catch (e) {
    if (e.name === 'AbortError') {
      // a stopped answer stays in the conversation as far as it got
      if (got !== '') pane.messages.push({ role: 'assistant', content: got });
      else pane.messages.pop();
      answer.meta.textContent = 'stopped';
      answer.div.dataset.finish = 'stopped';
    } else {
      // unanswered: the message is not part of the next request
      pane.messages.pop();
      asked.div.classList.add('unsent');
      answer.div.classList.add('error');
      answer.meta.textContent = 'error: ' + e.message;
      answer.div.dataset.finish = 'error';
    }
  } finally {
    answer.div.classList.remove('streaming');
  }
  return answer.div.dataset.finish;
}

async function send() {
  const input = $('input');
  const text = input.value;
  if (text.trim() === '' || controller || document.body.dataset.state !== 'idle') return;
  if (!panes[0].select.value) {
    setStatus('no model to send to: reload the model list');
    return;
  }
  const targets = panes.filter((p, i) => i === 0 || p.select.value !== '');
  input.value = '';
  controller = new AbortController();
  setState('busy');
  setStatus(targets.length === 2 ? 'streaming both answers…' : 'streaming…');
  const sampling = settings();
  const ends = await Promise.all(targets.map((p) => converse(p, text, sampling, controller.signal)));
  controller = null;
  setState('idle');
  setStatus(ends.includes('error') ? 'the server answered with an error (shown below the message)' : '');
  input.focus();
}

function stop() {
  if (controller) controller.abort();
  $('key-form').hidden = true;
  releaseKeyWaiters();
}

function clear() {
  stop();
  for (const p of panes) {
    p.messages = [];
    p.log.textContent = '';
  }
  setStatus('');
}

$('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const key = $('api-key').value.trim();
  if (key === '') return;
  apiKey = key;
  try {
    if ($('api-key-remember').checked) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
  } catch (err) {
    // (storage disabled)
  }
  $('key-form').hidden = true;
  releaseKeyWaiters();
});
$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
$('input').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
$('stop').addEventListener('click', stop);
$('clear').addEventListener('click', clear);
$('refresh').addEventListener('click', () => {
  if (document.body.dataset.state === 'idle') loadModels();
});
for (const p of panes) p.select.addEventListener('change', updatePanes);

loadModels();
