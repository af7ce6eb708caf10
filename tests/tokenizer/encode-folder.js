// Encode texts with the JavaScript reference tokenizer loaded from a checkpoint folder:
//   node encode-folder.js TOKENIZERS_PACKAGE MODEL_DIR TEXTS.json
// TOKENIZERS_PACKAGE is the @lenml/tokenizers folder; MODEL_DIR holds tokenizer.json and (optionally)
// tokenizer_config.json. Prints [[ids without special tokens, ids with them (add_special_tokens)], ...].
const fs = require("fs");
const path = require("path");
const { TokenizerLoader } = require(process.argv[2]);
const dir = process.argv[3];
const readJson = (p) => JSON.parse(fs.readFileSync(p, "utf8"));
const cfgPath = path.join(dir, "tokenizer_config.json");
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: readJson(path.join(dir, "tokenizer.json")),
  tokenizerConfig: fs.existsSync(cfgPath) ? readJson(cfgPath) : {},
});
const texts = readJson(process.argv[4]);
process.stdout.write(JSON.stringify(texts.map((t) => [tok.encode(t, { add_special_tokens: false }),
                                                      tok.encode(t, { add_special_tokens: true })])));
