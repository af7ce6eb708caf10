// peft export --format gguf without --adapter: the model file's bytes, without llama.cpp (that is
// test-llamacpp.cpp):
//  - ggml's Q8_0 / Q4_0 blocks against blocks worked out by hand (the scale, roundf's half away from zero,
//    Q4_0's first largest |x| and nibble order);
//  - kjv-llama's file read back with @huggingface/gguf (tokref fixture): hyper-parameters, tokenizer
//    keys, tensor names, types and alignment; the data sections of the bf16 / q8_0 / q4_0 files hash to
//    what the llama.cpp kit's hf_to_gguf.py wrote for the same model (recorded: byte-identical);
//  - GgufWriter streams: a tensor's loader runs only while the file is written, one at a time, and a
//    failing one leaves no file (nor a temp file) behind;
//  - what is refused, with the message naming the field.
#include <dirent.h>

#include <cstring>
#include <fstream>

#include "peft/io/files.h"
#include "peft/io/ggml-quants.h"
#include "peft/io/gguf.h"
#include "support.h"

using namespace peft;
using peft::test::exists;
using json = nlohmann::json;

namespace {

const std::string kKjv = std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama";

bool reference_available() { return exists(test::tokenizer_ref_dir() + "/node_modules/@huggingface/gguf/package.json"); }

std::string hex(const std::string & b) {
  static const char * d = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) s += std::string{d[c >> 4], d[c & 15]};
  return s;
}

uint64_t fnv1a(const char * p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
  return h;
}

std::string export_model(const std::string & model, const std::string & dtype) {
  const std::string out = test::temp_dir("gguf-model") + "/m.gguf";
  std::string log;
  EXPECT_EQ(test::run_cli("export --model " + model + " --format gguf --dtype " + dtype + " --out " + out, &log), 0) << log;
  return out;
}

json parse_reference(const std::string & file) {
  std::string out;
  const int rc = test::run_command("node " + std::string(PEFT_TEST_SOURCE) + "/io/read-gguf.js " +
                                   test::tokenizer_ref_dir() + " " + file + " 2>&1", &out);
  json j = rc == 0 ? json::parse(out, nullptr, false) : json();
  if (rc != 0 || j.is_discarded()) ADD_FAILURE() << "read-gguf.js failed: " << out.substr(0, 2000);
  return j;
}

// a folder with the files of `from` (copied) and `config` changes; "" values drop the field
std::string model_copy(const std::string & from, const json & config_changes) {
  const std::string dir = test::temp_dir("gguf-model-src");
  test::run_command("cp " + from + "/* " + dir + "/");
  json cfg = read_json_file(dir + "/config.json");
  for (const auto & kv : config_changes.items()) {
    if (kv.value().is_string() && kv.value().get<std::string>().empty()) cfg.erase(kv.key());
    else cfg[kv.key()] = kv.value();
  }
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  return dir;
}

// a byte-level BPE tokenizer.json of n single-character tokens (GPT-2's printable byte characters), no merges
json tiny_tokenizer(int n) {
  json vocab = json::object();
  for (int i = 0; i < n; ++i) {
    // '!' .. '~', then GPT-2's characters for the bytes after: U+0100, U+0101, ...
    vocab[i < 94 ? std::string(1, static_cast<char>('!' + i)) : std::string{'\xC4', static_cast<char>(0x80 + i - 94)}] = i;
  }
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"normalizer", nullptr}, {"added_tokens", json::array()}};
}

}  // namespace

TEST(GgmlQuants, Q8_0BlockByHand) {
  // amax 127: d = 1 (f16 0x3c00), q = roundf(x): halves away from zero
  std::vector<float> x(32, 0.0f);
  x[0] = 127, x[1] = -3.5f, x[2] = 2.5f, x[3] = 0.49f, x[4] = -0.5f, x[31] = -127;
  const std::string b = ggml_encode(at::from_blob(x.data(), {32}).clone(), GgmlType::Q8_0);
  ASSERT_EQ(b.size(), 34u);
  EXPECT_EQ(hex(b.substr(0, 2)), "003c");
  EXPECT_EQ(static_cast<int8_t>(b[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(b[3]), -4);
  EXPECT_EQ(static_cast<int8_t>(b[4]), 3);
  EXPECT_EQ(static_cast<int8_t>(b[5]), 0);
  EXPECT_EQ(static_cast<int8_t>(b[6]), -1);
  EXPECT_EQ(static_cast<int8_t>(b[33]), -127);
  // all zeros: d = 0, q = 0
  EXPECT_EQ(ggml_encode(at::zeros({32}), GgmlType::Q8_0), std::string(34, '\0'));
  // decoding gives the values back within half a step (d / 2)
  at::Tensor r = at::randn({4, 64});
  at::Tensor back = ggml_decode(ggml_encode(r, GgmlType::Q8_0), GgmlType::Q8_0, r.numel()).reshape({4, 64});
  EXPECT_LE((back - r).abs().max().item<float>(), r.abs().max().item<float>() / 127 / 2 * 1.01);
}

TEST(GgmlQuants, Q4_0BlockByHand) {
  // the first largest |x| is -8: d = -8 / -8 = 1, q = min(15, (int8)(x + 8.5)); byte j = q[j] | q[j + 16] << 4
  std::vector<float> x(32, 0.0f);
  x[0] = -8, x[1] = 7, x[2] = -0.6f, x[3] = 7.4f, x[4] = 3.49f, x[16] = 8, x[17] = -1;
  const std::string b = ggml_encode(at::from_blob(x.data(), {32}).clone(), GgmlType::Q4_0);
  ASSERT_EQ(b.size(), 18u);
  EXPECT_EQ(hex(b.substr(0, 2)), "003c");  // +1.0: x[16] = 8 has the same |x| but comes later
  // q: x0 -8 -> 0, x16 8 -> min(15, 16) = 15; x1 7 -> 15, x17 -1 -> 7; x2 -0.6 -> 7; x3 7.4 -> 15; x4 3.49 -> 11;
  // zeros -> 8
  EXPECT_EQ(hex(b.substr(2)), "f07f878f8b8888888888888888888888");
  // the sign of d follows the first largest: 8 before -8 gives d = -1 (f16 0xbc00)
  std::vector<float> y(32, 0.0f);
  y[0] = 8, y[1] = -8;
  EXPECT_EQ(hex(ggml_encode(at::from_blob(y.data(), {32}).clone(), GgmlType::Q4_0).substr(0, 2)), "00bc");
  EXPECT_EQ(hex(ggml_encode(at::zeros({32}), GgmlType::Q4_0).substr(2)), std::string(32, '8'));
}

TEST(GgufModelExport, KjvLlamaFile) {
  if (!reference_available()) GTEST_SKIP() << "@huggingface/gguf not installed (tokref fixture: npm offline?)";
  const json j = parse_reference(export_model(kKjv, "q4_0"));
  ASSERT_TRUE(j.is_object());
  const json & m = j["metadata"];
  EXPECT_EQ(m["general.architecture"], "llama");
  EXPECT_EQ(m["general.type"], "model");
  EXPECT_EQ(m["general.file_type"], 2);  // LLAMA_FTYPE_MOSTLY_Q4_0
  EXPECT_EQ(m["general.quantization_version"], 2);
  EXPECT_EQ(m["llama.block_count"], 4);
  EXPECT_EQ(m["llama.embedding_length"], 256);
  EXPECT_EQ(m["llama.feed_forward_length"], 704);
  EXPECT_EQ(m["llama.attention.head_count"], 4);
  EXPECT_EQ(m["llama.attention.head_count_kv"], 2);
  EXPECT_EQ(m["llama.context_length"], 256);
  EXPECT_EQ(m["llama.rope.dimension_count"], 64);
  EXPECT_FLOAT_EQ(m["llama.rope.freq_base"].get<float>(), 10000.0f);
  EXPECT_FLOAT_EQ(m["llama.attention.layer_norm_rms_epsilon"].get<float>(), 1e-5f);
  EXPECT_FALSE(m.contains("llama.attention.key_length"));  // head_dim * heads = hidden_size
  EXPECT_EQ(m["tokenizer.ggml.model"], "gpt2");
  EXPECT_EQ(m["tokenizer.ggml.pre"], "gpt-2");
  EXPECT_EQ(m["tokenizer.ggml.tokens"].size(), 4096u);
  EXPECT_EQ(m["tokenizer.ggml.tokens"][6], "<|end|>");
  EXPECT_EQ(m["tokenizer.ggml.token_type"][6], 3);    // control (special)
  EXPECT_EQ(m["tokenizer.ggml.token_type"][100], 1);  // normal
  EXPECT_EQ(m["tokenizer.ggml.merges"].size(), 3833u);
  EXPECT_EQ(m["tokenizer.ggml.bos_token_id"], 1);
  EXPECT_EQ(m["tokenizer.ggml.eos_token_id"], 2);
  EXPECT_EQ(m["tokenizer.ggml.eot_token_id"], 6);  // config.json's second eos id
  EXPECT_EQ(m["tokenizer.ggml.padding_token_id"], 0);
  EXPECT_EQ(m["tokenizer.ggml.add_bos_token"], true);
  EXPECT_EQ(m["tokenizer.ggml.add_eos_token"], false);
  EXPECT_EQ(m["tokenizer.chat_template"], read_json_file(kKjv + "/tokenizer_config.json")["chat_template"]);
  // token_embd, 9 per layer, output_norm; no output: the model ties it (llama.cpp reuses token_embd)
  ASSERT_EQ(j["tensors"].size(), 2u + 9u * 4u);
  std::set<std::string> names;
  for (const auto & t : j["tensors"]) {
    const std::string n = t["name"];
    names.insert(n);
    EXPECT_EQ(t["offset"].get<int64_t>() % 32, 0) << n;
    EXPECT_EQ(t["dtype"], n.find("norm") != std::string::npos ? 0 : 2) << n;  // norms F32, the rest Q4_0
  }
  EXPECT_TRUE(names.count("token_embd.weight"));
  EXPECT_TRUE(names.count("blk.3.ffn_down.weight"));
  EXPECT_TRUE(names.count("output_norm.weight"));
  EXPECT_FALSE(names.count("output.weight"));
}

TEST(GgufModelExport, TensorDataIsTheKitConvertersBytes) {
  // FNV-1a of the data section of kjv-llama's file as the llama.cpp kit's hf_to_gguf.py wrote it (whose
  // Q8_0 / Q4_0 are byte-identical to llama-quantize --pure); the metadata differs (eot_token_id) so the
  // data section is compared
  const std::vector<std::pair<std::string, uint64_t>> want = {
      {"bf16", 0x0678bf8475c7e397ull}, {"q8_0", 0xe6507139d39e7c66ull}, {"q4_0", 0xaf847bde728ef1acull}};
  for (const auto & w : want) {
    const std::string b = read_file(export_model(kKjv, w.first));
    // the data section: the file's last bytes, as many as the tensors take (from the reference sizes)
    const size_t data = w.first == "bf16" ? 8004608 : w.first == "q8_0" ? 4256768 : 2257920;
    ASSERT_GT(b.size(), data) << w.first;
    EXPECT_EQ(fnv1a(b.data() + b.size() - data, data), w.second) << w.first;
  }
}

TEST(GgufWriter, StreamsTensorsAndLeavesNothingOnError) {
  const std::string dir = test::temp_dir("gguf-stream");
  GgufWriter w;
  int calls = 0, held = 0;
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> made;  // each loader's tensor
  for (int i = 0; i < 3; ++i) {
    w.add_tensor("t" + std::to_string(i), {4, 32}, GgmlType::Q8_0, [&, i]() {
      ++calls;
      for (const auto & m : made) held += !m.expired();  // an earlier tensor still in memory
      at::Tensor t = at::full({4, 32}, float(i + 1));
      made.push_back(t.storage().getWeakStorageImpl());
      return t;
    });
  }
  EXPECT_EQ(calls, 0);  // nothing read before write()
  w.write(dir + "/a.gguf");
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(held, 0);  // one tensor at a time
  // a loader that fails: no file, no temp file, an existing file untouched
  std::ofstream(dir + "/b.gguf") << "old";
  GgufWriter bad;
  bad.add_tensor("x", {32}, GgmlType::F32, []() { return at::zeros({32}); });
  bad.add_tensor("y", {32}, GgmlType::F32, []() -> at::Tensor { throw std::runtime_error("read failed"); });
  EXPECT_THROW(bad.write(dir + "/b.gguf"), std::runtime_error);
  EXPECT_EQ(read_file(dir + "/b.gguf"), "old");
  GgufWriter wrong;
  wrong.add_tensor("z", {2, 32}, GgmlType::F32, []() { return at::zeros({3, 32}); });
  EXPECT_NE(test::error_of([&] { wrong.write(dir + "/c.gguf"); }).find("'z'"), std::string::npos);
  EXPECT_FALSE(exists(dir + "/c.gguf"));
  DIR * d = opendir(dir.c_str());
  int entries = 0;
  while (dirent * e = readdir(d)) entries += std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0;
  closedir(d);
  EXPECT_EQ(entries, 2);  // a.gguf, b.gguf
  // a quantized tensor needs whole blocks
  EXPECT_NE(test::error_of([&] { w.add_tensor("q", at::zeros({2, 48}), GgmlType::Q4_0); }).find("blocks of 32"),
            std::string::npos);
}

TEST(GgufModelExport, RefusedWithNamedErrors) {
  // a tiny Qwen3 with o_proj biases (attention_bias): llama.cpp's qwen3 has no attn_output.bias
  const std::string qwen3 = model_copy(test::golden_model("tiny-qwen3"), json::object());
  std::ofstream(qwen3 + "/tokenizer.json") << tiny_tokenizer(96).dump();
  json wordpiece = tiny_tokenizer(96);
  wordpiece["model"]["type"] = "WordPiece";
  const std::string wp = model_copy(qwen3, json::object());
  std::ofstream(wp + "/tokenizer.json") << wordpiece.dump();
  json prefix = tiny_tokenizer(96);
  prefix["pre_tokenizer"]["add_prefix_space"] = true;
  const std::string pre = model_copy(qwen3, json::object());
  std::ofstream(pre + "/tokenizer.json") << prefix.dump();
  json typed = tiny_tokenizer(96);
  typed["model"]["merges"] = json::array({json::array({1, 2})});
  const std::string mistyped = model_copy(qwen3, json::object());
  std::ofstream(mistyped + "/tokenizer.json") << typed.dump();
  const std::string yarn = model_copy(test::golden_model("tiny-rope-yarn"), json::object());
  const std::string no_tok = model_copy(test::golden_model("tiny-llama"), json::object());
  const std::string big_vocab = model_copy(test::golden_model("tiny-llama"), json::object());
  test::run_command("cp " + kKjv + "/tokenizer.json " + big_vocab + "/");
  const std::string gelu = model_copy(kKjv, {{"hidden_act", "gelu"}});
  struct Case {
    std::string model, message;
  };
  const std::vector<Case> cases = {
      {test::golden_model("tiny-opt"), "model_type 'opt' has no llama.cpp model export"},
      {test::golden_model("tiny-gemma2"), "query_pre_attn_scalar 24: llama.cpp's gemma2 scales queries by 1/sqrt(16)"},
      {test::golden_model("tiny-qwen3-sliding"), "a sliding window of 4 tokens (use_sliding_window)"},
      {test::golden_model("tiny-rope-longrope"), "rope_scaling type 'longrope' is not exported"},
      {qwen3, "'model.layers.0.self_attn.o_proj.bias' has no place in llama.cpp's qwen3 model"},
      {wp, "model.type 'WordPiece'"},
      {pre, "is not a byte-level split that llama.cpp has a pre-tokenizer for"},
      {mistyped, "tokenizer.json (or tokenizer_config.json): a field of an unexpected type"},
      {yarn, "rope_scaling type 'yarn'"},
      {no_tok, "tokenizer.json: not found"},
      {big_vocab, "past config.json's vocab_size"},
      {gelu, "hidden_act 'gelu'"},
  };
  for (const auto & c : cases) {
    const std::string dir = test::temp_dir("gguf-model-bad");
    std::string log;
    EXPECT_EQ(test::run_cli("export --model " + c.model + " --format gguf --out " + dir + "/x.gguf", &log), 1)
        << c.model << ": " << log;
    EXPECT_NE(log.find(c.message), std::string::npos) << c.model << ": " << log;
    EXPECT_FALSE(exists(dir + "/x.gguf")) << c.model;
  }
}

TEST(GgufModelExport, UsageChecks) {
  std::string log;
  // never over the model's own files
  EXPECT_EQ(test::run_cli("export --model " + kKjv + " --format gguf --out " + kKjv + "/model.safetensors", &log), 1) << log;
  EXPECT_NE(log.find("--out"), std::string::npos) << log;
  // a quantized adapter file is not one llama.cpp reads
  EXPECT_EQ(test::run_cli("export --model " + kKjv + " --adapter " + test::golden_case("lora") +
                          "/adapter --format gguf --dtype q8_0 --out /tmp/x.gguf", &log), 2) << log;
  EXPECT_NE(log.find("f32 or f16"), std::string::npos) << log;
  EXPECT_EQ(test::run_cli("export --model " + kKjv + " --format gguf --dtype q5_k --out /tmp/x.gguf", &log), 2) << log;
}
