// Encode texts with the JavaScript reference tokenizer: node encode-reference.js PACKAGE TEXTS.json
const pkg = require(process.argv[2]);
const texts = JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"));
const tok = pkg.fromPreTrained();
process.stdout.write(JSON.stringify(texts.map((t) => tok.encode(t, { add_special_tokens: false }))));
