// Drives peft serve's chat page in Debian's chromium (headless, through puppeteer-core) as a user would:
// types API keys when the page asks, picks the model(s), fills the sampling settings, types each message
// and sends it (Enter for the first, the Send button after), waits for the streamed answers, and prints what
// the page shows as JSON. Used by tests/serve/test-chat-page.cpp.
//   node chat-page.mjs NODE_MODULES_PARENT URL PLAN.json
// PLAN: {"keys": [typed in order each time the page asks for one], "remember_key": tick "remember",
//        "screenshot": PNG path or null,
//        "sessions": [{"models": [one or two], "settings": {input id: value}, "messages": [...],
//                      "stop": true (click Stop once the answer has started; one message)}]}
// Output: {"sessions": [{"panes": [{"model", "answers": [...], "finish": [...], "meta": [...]}]}],
//          "key_prompts": N, "page_errors": [...], "foreign_requests": [urls not on the server]}
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';

const [modules, url, planPath] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), 'package.json'));
const puppeteer = require('puppeteer-core');
const plan = JSON.parse(fs.readFileSync(planPath, 'utf8'));
const origin = new URL(url).origin;
const step = 60000;  // the longest wait for one step (ms)

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'peft-chat-page-'));
const args = ['--headless=new', '--disable-gpu', '--no-first-run', '--no-default-browser-check', `--user-data-dir=${profile}`];
if (process.getuid && process.getuid() === 0) args.push('--no-sandbox');  // (chromium refuses root without it)
const browser = await puppeteer.launch({
  executablePath: process.env.PEFT_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args,
  timeout: step,
  protocolTimeout: step,
});
const out = { sessions: [], key_prompts: 0, page_errors: [], foreign_requests: [] };
let keys = (plan.keys || []).slice();
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 760 });
  page.setDefaultTimeout(step);
  page.on('pageerror', (e) => out.page_errors.push(String(e)));
  page.on('request', (r) => {
    if (!r.url().startsWith(origin + '/') && !r.url().startsWith('data:')) out.foreign_requests.push(r.url());
  });

  // the page's state; an API key typed whenever the page asks for one
  const settle = async () => {
    const t0 = Date.now();
    for (;;) {
      const s = await page.evaluate(() => ({ state: document.body.dataset.state, asks: !document.getElementById('key-form').hidden }));
      if (s.asks) {
        if (keys.length === 0) throw new Error('the page asks for an API key and the plan has none left');
        out.key_prompts++;
        await page.type('#api-key', keys.shift());
        if (plan.remember_key) await page.$eval('#api-key-remember', (el) => { el.checked = true; });
        await page.click('#api-key-save');
      } else if (s.state === 'idle') {
        return;
      }
      if (Date.now() - t0 > step) throw new Error(`the page stayed '${s.state}' for ${step} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const fill = async (selector, value) => {
    await page.$eval(selector, (el) => { el.value = ''; });
    if (value !== '') await page.type(selector, String(value));
  };

  for (const session of plan.sessions) {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await settle();
    await page.select('#model-0', session.models[0]);
    await page.select('#model-1', session.models[1] || '');
    for (const [id, value] of Object.entries(session.settings || {})) await fill('#' + id, value);
    for (let i = 0; i < session.messages.length; i++) {
      await fill('#input', session.messages[i]);
      if (i === 0) await page.focus('#input').then(() => page.keyboard.press('Enter'));
      else await page.click('#send');
      if (session.stop) {
        // as soon as an answer shows text (or has ended), the user clicks Stop
        await page.waitForFunction(() => {
          const a = document.querySelector('.pane .msg.assistant:last-child');
          return a && (a.querySelector('.content').textContent !== '' || a.dataset.finish);
        }, { polling: 10 });
        await page.click('#stop');
      }
      await settle();
    }
    const panes = await page.evaluate(() =>
      [...document.querySelectorAll('.pane')].filter((p) => !p.hidden).map((p) => ({
        model: p.querySelector('.pane-title').textContent,
        answers: [...p.querySelectorAll('.msg.assistant .content')].map((e) => e.textContent),
        finish: [...p.querySelectorAll('.msg.assistant')].map((e) => e.dataset.finish || ''),
        meta: [...p.querySelectorAll('.msg.assistant .meta')].map((e) => e.textContent),
      })));
    out.sessions.push({ panes });
  }
  if (plan.screenshot) await page.screenshot({ path: plan.screenshot, type: 'png' });
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(out.error ? 1 : 0);
