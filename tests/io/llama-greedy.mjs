// Greedy decoding in llama.cpp (node-llama-cpp's prebuilt CPU library: no GPU, no build, no download)
// for the llama.cpp tests (tests/io/test-llamacpp.cpp). Reads a request, prints JSON:
//   node llama-greedy.mjs REF_DIR REQUEST.json
//   REQUEST: {"model": F.gguf, "lora": F.gguf (optional), "n": N, "prompts": [TEXT, ...],
//             "forced": [[ID, ...], ...] (optional)}
//   out:     {"release": llama.cpp release, "results": [{"prompt_ids": [...], "ids": [...]}],
//             "forced": [[ID, ...], ...]}
// prompt_ids: llama.cpp's tokens of the text (with bos when the file says add_bos); ids: up to N greedy
// tokens, stopping after an end-of-generation token. forced: for each given sequence, llama.cpp's
// greedy next token after each of its prefixes (teacher forcing: the top-1 at every position). The KV
// cache is F32, as peft computes in float32 (node-llama-cpp's default F16 cache flips near-ties).
import path from "node:path";
import fs from "node:fs";
import {pathToFileURL} from "node:url";

const [refDir, requestFile] = process.argv.slice(2);
const req = JSON.parse(fs.readFileSync(requestFile, "utf8"));
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(path.join(path.resolve(refDir), "node_modules",
                                                                        "node-llama-cpp", "dist", "index.js")).href);
const llama = await getLlama({gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
                              progressLogs: false, logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: req.model, gpuLayers: 0});
const ctx = await model.createContext({
  contextSize: 512, threads: 1, flashAttention: false,
  experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
  ...(req.lora ? {lora: {adapters: [{filePath: req.lora}]}} : {}),
});
const seq = ctx.getSequence();
const n = Number(req.n ?? 32);

const results = [];
for (const text of req.prompts ?? []) {
  await seq.clearHistory();
  const bos = model.tokens.shouldPrependBosToken && model.tokens.bos != null ? [model.tokens.bos] : [];
  const promptIds = [...bos, ...model.tokenize(text)];
  const ids = [];
  for await (const t of seq.evaluate(promptIds, {temperature: 0, yieldEogToken: true})) {
    ids.push(t);
    if (ids.length >= n || model.isEogToken(t)) break;
  }
  results.push({prompt_ids: promptIds, ids});
}

const forced = [];
for (const seqIds of req.forced ?? []) {
  await seq.clearHistory();
  const input = seqIds.map((t) => [t, {generateNext: {token: true, options: {temperature: 0}}}]);
  const out = await seq.controlledEvaluate(input);
  forced.push(out.map((o) => (o && o.next && o.next.token != null ? o.next.token : -1)));
}

process.stdout.write(JSON.stringify({release: llama.llamaCppRelease.release, results, forced}) + "\n");
await ctx.dispose();
await model.dispose();
await llama.dispose();
