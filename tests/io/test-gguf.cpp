// peft export --format gguf: golden LoRA adapters written as llama.cpp LoRA adapter GGUF files, read back
// with the JavaScript reference parser (@huggingface/gguf, from the tokref npm fixture): the metadata
// llama.cpp's loader checks (general.type, adapter.type, adapter.lora.alpha as float32,
// general.architecture), every tensor's name, ggml-order shape and type, the data offsets' alignment,
// and the values read back from the file's bytes against the adapter's lora_A / lora_B (lora_B's rows
// permuted for Llama's q/k as llama.cpp's converter does, rsLoRA's scale folded, the embedding's A
// transposed). Then the adapters and models that cannot be exported give named errors and exit 1.
#include <cstring>
#include <set>

#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "support.h"

using namespace peft;
using peft::test::exists;
using peft::test::tokenizer_ref_dir;
using json = nlohmann::json;

namespace {

bool reference_available() { return exists(tokenizer_ref_dir() + "/node_modules/@huggingface/gguf/package.json"); }
#define REQUIRE_REFERENCE()                                                                                    \
  if (!reference_available()) GTEST_SKIP() << "@huggingface/gguf not installed (tokref fixture: npm offline?)"

std::string model(const std::string & m) { return test::golden_model(m); }
std::string adapter(const std::string & c) { return test::golden_case(c) + "/adapter"; }

// peft export into a fresh folder; returns the file
std::string export_gguf(const std::string & adapter_dir, const std::string & model_dir, const std::string & extra = "") {
  const std::string out = test::temp_dir("gguf") + "/adapter.gguf";
  std::string log;
  const int rc = test::run_cli("export --model " + model_dir + " --adapter " + adapter_dir + " --format gguf --out " +
                               out + " " + extra, &log);
  EXPECT_EQ(rc, 0) << log;
  return out;
}

json parse_reference(const std::string & file) {
  std::string out;
  const int rc = test::run_command("node " + std::string(PEFT_TEST_SOURCE) + "/io/read-gguf.js " + tokenizer_ref_dir() + " " + file, &out);
  json j = rc == 0 ? json::parse(out, nullptr, false) : json();
  if (rc != 0 || j.is_discarded()) ADD_FAILURE() << "read-gguf.js failed: " << out;
  return j;
}

// a tensor's values read from the file's bytes, at the offsets the parser reported, in PyTorch order
at::Tensor read_tensor(const json & info, const std::string & bytes, int64_t data_offset) {
  std::vector<int64_t> shape;
  for (const auto & d : info["shape"]) shape.insert(shape.begin(), d.get<int64_t>());  // ggml order reversed
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const auto type = info["dtype"].get<int>() == 1 ? at::kHalf : at::kFloat;
  const size_t size = n * (type == at::kHalf ? 2 : 4);
  const size_t begin = data_offset + info["offset"].get<int64_t>();
  EXPECT_LE(begin + size, bytes.size()) << info["name"];
  if (begin + size > bytes.size()) return at::Tensor();
  at::Tensor t = at::empty(shape, type);
  std::memcpy(t.data_ptr(), bytes.data() + begin, size);
  return t;
}

// convert_hf_to_gguf.py's LlamaModel.permute on rows: row h*hd + 2k + t of the result is row
// h*hd + t*hd/2 + k of the input (t in {0, 1}, k < hd/2), written out with plain loops
at::Tensor permute_rows(const at::Tensor & B, int64_t heads) {
  const int64_t rows = B.size(0), hd = rows / heads;
  at::Tensor out = at::empty_like(B);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t k = 0; k < hd / 2; ++k)
      for (int64_t t = 0; t < 2; ++t) out[h * hd + 2 * k + t] = B[h * hd + t * hd / 2 + k];
  return out;
}

struct Expect {
  at::Tensor a, b;  // PyTorch order, as the file should hold them
};

// What the file should hold for a golden adapter on tiny-llama (4 heads, 2 kv heads): name -> tensors
std::map<std::string, Expect> expected(const std::string & adapter_dir, double b_factor) {
  const std::map<std::string, std::string> names = {
      {"self_attn.q_proj", "attn_q"}, {"self_attn.k_proj", "attn_k"}, {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"mlp.gate_proj", "ffn_gate"}, {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  auto t = safetensors_load(adapter_dir + "/adapter_model.safetensors");
  std::map<std::string, Expect> out;
  const std::string pre = "base_model.model.";
  for (const auto & kv : t) {
    std::string k = kv.first.substr(pre.size());
    if (k.find(".lora_A.weight") == std::string::npos && k.find(".lora_embedding_A") == std::string::npos) continue;
    const bool emb = k.find("lora_embedding_A") != std::string::npos;
    const std::string module = k.substr(0, k.find(emb ? ".lora_embedding_A" : ".lora_A"));
    at::Tensor A = kv.second, B = t.at(pre + module + (emb ? ".lora_embedding_B" : ".lora_B.weight"));
    std::string name;
    if (module == "lm_head") {
      name = "output.weight";
    } else if (module == "model.embed_tokens") {
      name = "token_embd.weight";
      A = A.t().contiguous();
    } else {
      const std::string rest = module.substr(std::strlen("model.layers."));
      const std::string layer = rest.substr(0, rest.find('.'));
      const std::string kind = rest.substr(rest.find('.') + 1);
      name = "blk." + layer + "." + names.at(kind) + ".weight";
      if (kind == "self_attn.q_proj") B = permute_rows(B, 4);
      if (kind == "self_attn.k_proj") B = permute_rows(B, 2);
    }
    out[name] = {A, B * b_factor};
  }
  return out;
}

void check_file(const std::string & file, const std::string & adapter_dir, double alpha, double b_factor,
                int dtype, size_t pairs) {
  const json j = parse_reference(file);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["version"], 3);
  EXPECT_EQ(j["little_endian"], true);
  const json & m = j["metadata"];
  EXPECT_EQ(m["general.type"], "adapter");
  EXPECT_EQ(m["adapter.type"], "lora");
  EXPECT_EQ(m["general.architecture"], "llama");
  EXPECT_EQ(j["types"]["adapter.lora.alpha"], 6) << "adapter.lora.alpha must be a float32 (GGUF type 6)";
  EXPECT_FLOAT_EQ(m["adapter.lora.alpha"].get<double>(), alpha);
  EXPECT_EQ(m["general.file_type"], dtype);
  EXPECT_FALSE(m.contains("general.alignment"));  // the default, 32
  const int64_t data_offset = j["tensor_data_offset"].get<int64_t>();
  EXPECT_EQ(data_offset % 32, 0);
  const std::string bytes = read_file(file);
  auto want = expected(adapter_dir, b_factor);
  ASSERT_EQ(want.size(), pairs);
  std::set<std::string> seen;
  for (const auto & info : j["tensors"]) {
    const std::string name = info["name"];
    seen.insert(name);
    EXPECT_EQ(info["offset"].get<int64_t>() % 32, 0) << name;
    EXPECT_EQ(info["dtype"], dtype) << name;
    const bool is_a = name.size() > 7 && name.substr(name.size() - 7) == ".lora_a";
    const std::string base = name.substr(0, name.size() - 7);
    ASSERT_TRUE(want.count(base)) << "unexpected tensor " << name;
    const at::Tensor w = is_a ? want.at(base).a : want.at(base).b;
    // ggml order: the reverse of PyTorch's; llama.cpp's loader checks lora_a ne = [in, r], lora_b ne = [r, out]
    EXPECT_EQ(info["shape"], json({w.size(1), w.size(0)})) << name;
    at::Tensor got = read_tensor(info, bytes, data_offset);
    ASSERT_TRUE(got.defined());
    if (dtype == 0) {
      EXPECT_TRUE(at::equal(got, w.to(at::kFloat))) << name;
    } else {
      EXPECT_TRUE(at::equal(got, w.to(at::kFloat).to(at::kHalf))) << name;
    }
  }
  for (const auto & kv : want) {
    EXPECT_TRUE(seen.count(kv.first + ".lora_a")) << "missing " << kv.first << ".lora_a";
    EXPECT_TRUE(seen.count(kv.first + ".lora_b")) << "missing " << kv.first << ".lora_b";
  }
  EXPECT_EQ(j["tensors"].size(), 2 * pairs);
}

}  // namespace

TEST(GgufExport, FileHeader) {
  // independent of the parser: magic, version 3, counts, little endian
  const std::string file = export_gguf(adapter("lora"), model("tiny-llama"));
  const std::string b = read_file(file);
  ASSERT_GE(b.size(), 24u);
  EXPECT_EQ(b.substr(0, 4), "GGUF");
  uint32_t version;
  uint64_t n_tensors, n_kv;
  std::memcpy(&version, b.data() + 4, 4);
  std::memcpy(&n_tensors, b.data() + 8, 8);
  std::memcpy(&n_kv, b.data() + 16, 8);
  EXPECT_EQ(version, 3u);
  EXPECT_EQ(n_tensors, 8u);  // q and v of 2 layers, a and b each
  EXPECT_EQ(n_kv, 6u);
  EXPECT_EQ(b.size() % 32, 0u);
}

TEST(GgufExport, GoldenLoraF32) {
  REQUIRE_REFERENCE();
  // q_proj and v_proj of both layers, r 4, alpha 8: alpha / r is PEFT's scale, nothing folded
  check_file(export_gguf(adapter("lora"), model("tiny-llama")), adapter("lora"), 8, 1.0, 0, 4);
}

TEST(GgufExport, GoldenLoraF16) {
  REQUIRE_REFERENCE();
  check_file(export_gguf(adapter("lora"), model("tiny-llama"), "--dtype f16"), adapter("lora"), 8, 1.0, 1, 4);
}

TEST(GgufExport, EveryModuleKindAndRsLoraFolded) {
  REQUIRE_REFERENCE();
  // q/k/v/o, gate/up/down of both layers and lm_head; rsLoRA: PEFT's scale alpha / sqrt(r) = 16 / 2,
  // llama.cpp's alpha / r = 16 / 4: the factor 2 is folded into every lora_b
  check_file(export_gguf(adapter("lora_rslora_dropout"), model("tiny-llama")), adapter("lora_rslora_dropout"), 16, 2.0,
             0, 15);
}

TEST(GgufExport, Embedding) {
  REQUIRE_REFERENCE();
  // token_embd: lora_a holds lora_embedding_A transposed (llama.cpp's llm_build_inp_embd)
  check_file(export_gguf(adapter("lora_embedding"), model("tiny-llama")), adapter("lora_embedding"), 8, 1.0, 0, 1);
}

TEST(GgufExport, RefusedWithNamedErrors) {
  struct Case {
    std::string adapter, model, message;
  };
  const std::vector<Case> cases = {
      {adapter("ia3"), model("tiny-llama"), "peft_type 'IA3'"},
      {adapter("dora"), model("tiny-llama"), "'use_dora'"},
      {adapter("lora_modules_to_save"), model("tiny-llama"), "'modules_to_save'"},
      {adapter("lora_bias_opt"), model("tiny-opt"), "OPT is not an architecture llama.cpp runs"},
      {adapter("lora_rslora_dropout"), model("tiny-llama-tied"), "tie_word_embeddings"},
  };
  for (const auto & c : cases) {
    const std::string dir = test::temp_dir("gguf-bad");
    std::string log;
    const int rc = test::run_cli("export --model " + c.model + " --adapter " + c.adapter + " --format gguf --out " +
                                 dir + "/x.gguf", &log);
    EXPECT_EQ(rc, 1) << c.adapter << ": " << log;
    EXPECT_NE(log.find(c.message), std::string::npos) << c.adapter << ": " << log;
    EXPECT_FALSE(exists(dir + "/x.gguf")) << c.adapter;
  }
}

TEST(GgufExport, UsageChecks) {
  std::string log;
  // the output may not be an input
  EXPECT_EQ(test::run_cli("export --model " + model("tiny-llama") + " --adapter " + adapter("lora") +
                          " --format gguf --out " + adapter("lora") + "/adapter_model.safetensors", &log), 1) << log;
  EXPECT_NE(log.find("--out"), std::string::npos) << log;
  // an unknown format or dtype is a usage error
  EXPECT_EQ(test::run_cli("export --model " + model("tiny-llama") + " --adapter " + adapter("lora") +
                          " --format onnx --out /tmp/x.gguf", &log), 2) << log;
  EXPECT_EQ(test::run_cli("export --model " + model("tiny-llama") + " --adapter " + adapter("lora") +
                          " --format gguf --dtype bf16 --out /tmp/x.gguf", &log), 2) << log;
}
