// Encode texts with the JavaScript reference tokenizer and decode the ids again:
//   node encode-reference.js PACKAGE TEXTS.json
// Prints [[ids (no special tokens added), decode(ids) (special tokens kept)], ...].
const pkg = require(process.argv[2]);
const texts = JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"));
const tok = pkg.fromPreTrained();
process.stdout.write(JSON.stringify(texts.map((t) => {
  const ids = tok.encode(t, { add_special_tokens: false });
  return [ids, tok.decode(ids)];
})));
