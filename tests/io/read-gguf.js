// Parse a GGUF file with the JavaScript reference parser (@huggingface/gguf) and print what it read as
// JSON: {version, little_endian, metadata: {key: value}, types: {key: GGUF value type}, tensors:
// [{name, shape (ggml order), dtype (ggml type), offset}], tensor_data_offset}. 64-bit integers are
// printed as numbers.
//   node read-gguf.js REF_DIR FILE.gguf
// REF_DIR: the folder tests/tokenizer/fetch-reference.sh installed into.
const path = require("path");

const [refDir, file] = process.argv.slice(2).map((p) => path.resolve(p));
const { gguf } = require(path.join(refDir, "node_modules", "@huggingface", "gguf"));

const plain = (v) => (typeof v === "bigint" ? Number(v) : Array.isArray(v) ? v.map(plain) : v);

gguf(file, { allowLocalFile: true, typedMetadata: true })
  .then((r) => {
    const metadata = {};
    const types = {};
    for (const [k, v] of Object.entries(r.typedMetadata)) {
      metadata[k] = plain(v.value);
      types[k] = v.type;
    }
    const tensors = r.tensorInfos.map((t) => ({
      name: t.name,
      shape: t.shape.map(Number),
      dtype: t.dtype,
      offset: Number(t.offset),
    }));
    process.stdout.write(JSON.stringify({
      version: plain(r.metadata.version),
      little_endian: r.littleEndian,
      metadata,
      types,
      tensors,
      tensor_data_offset: Number(r.tensorDataOffset),
    }) + "\n");
  })
  .catch((e) => {
    process.stderr.write(`read-gguf.js: ${e && e.stack ? e.stack : e}\n`);
    process.exit(1);
  });
