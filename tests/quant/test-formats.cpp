// bitsandbytes' formats bit for bit against bitsandbytes' own code (tests/data/quant/bnb_reference.safetensors,
// made by gen_bnb_reference.py from its pure-PyTorch backend), and checkpoints in its key layout both ways:
// the folders bitsandbytes wrote load here with its logits, and `peft quantize` writes the same bytes.
#include <sys/stat.h>

#include "peft/compile/compile.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/model/causal-lm.h"
#include "peft/peft-model.h"
#include "peft/quant/formats.h"
#include "peft/quant/quantized-linear.h"
#include "support.h"

using namespace peft;
using namespace peft::test;
using namespace peft::quant;

namespace {

const std::map<std::string, at::Tensor> & reference() {
  static const auto r = safetensors_load(data_path("quant/bnb_reference.safetensors"));
  return r;
}
const std::map<std::string, at::Tensor> & expected() {
  static const auto r = safetensors_load(data_path("quant/expected.safetensors"));
  return r;
}

std::string blob_text(const at::Tensor & t) {
  at::Tensor c = t.contiguous();
  return std::string(reinterpret_cast<const char *>(c.data_ptr<uint8_t>()), c.numel());
}

TEST(BnbFormats, CodeTablesAndDynamicMap) {
  const auto & r = reference();
  EXPECT_TRUE(at::equal(code_4bit(Format::nf4), r.at("code/nf4")));
  EXPECT_TRUE(at::equal(code_4bit(Format::fp4), r.at("code/fp4")));
  EXPECT_TRUE(at::equal(dynamic_map(), r.at("code/dynamic")));
}

TEST(BnbFormats, FourBitEveryCaseBitExact) {
  int checked = 0;
  for (const auto & kv : reference()) {
    const std::string & k = kv.first;
    if (k.size() < 7 || k.compare(k.size() - 7, 7, "/packed") != 0) continue;
    // <qt>/b<bs>/<plain|nested>/<t>/packed
    const std::string base = k.substr(0, k.size() - 7);
    std::vector<std::string> part;
    std::stringstream ss(base);
    for (std::string s; std::getline(ss, s, '/');) part.push_back(s);
    ASSERT_EQ(part.size(), 4u) << k;
    const Format f = parse_format(part[0], "case");
    const int64_t bs = std::stoll(part[1].substr(1));
    const bool nested = part[2] == "nested";
    const at::Tensor input = reference().at("input/" + part[3]);
    SCOPED_TRACE(base);
    Quant4 q = quantize_4bit(input, f, bs, nested);
    const auto & r = reference();
    EXPECT_TRUE(at::equal(q.packed, kv.second));
    EXPECT_TRUE(at::equal(q.absmax, r.at(base + "/absmax")));
    EXPECT_TRUE(at::equal(q.code, r.at(base + "/quant_map")));
    EXPECT_TRUE(at::equal(dequantize_4bit(q), r.at(base + "/dequant")));
    if (nested) {
      EXPECT_TRUE(at::equal(q.nested_absmax, r.at(base + "/nested_absmax")));
      EXPECT_TRUE(at::equal(q.nested_code, r.at(base + "/nested_quant_map")));
      EXPECT_TRUE(at::equal(q.offset.reshape({1}), r.at(base + "/offset")));
      EXPECT_TRUE(at::equal(q.absmax_float(), r.at(base + "/absmax_dequant")));
    }
    // the JSON bytes of the quant state, as a Linear4bit of this weight writes them
    if (input.dim() == 2) {
      Linear4bit layer(q, at::Tensor());
      std::map<std::string, at::Tensor> out;
      layer.export_tensors("m.", out);
      EXPECT_EQ(blob_text(out.at("m.weight.quant_state.bitsandbytes__" + part[0])), blob_text(r.at(base + "/quant_state_blob")));
    }
    ++checked;
  }
  EXPECT_GE(checked, 20);  // every case of cases.json: nf4 and fp4, plain and nested, four blocksizes
}

TEST(BnbFormats, Int8EveryCaseBitExact) {
  int checked = 0;
  for (const auto & kv : reference()) {
    const std::string & k = kv.first;
    if (k.rfind("int8/", 0) != 0 || k.size() < 3 || k.compare(k.size() - 3, 3, "/CB") != 0) continue;
    const std::string base = k.substr(0, k.size() - 3), t = base.substr(5);
    SCOPED_TRACE(base);
    Quant8 q = quantize_int8(reference().at("input/" + t));
    EXPECT_TRUE(at::equal(q.CB, kv.second));
    EXPECT_TRUE(at::equal(q.SCB, reference().at(base + "/SCB")));
    EXPECT_TRUE(at::equal(dequantize_int8(q), reference().at(base + "/dequant_matmul8bitfp")));
    ++checked;
  }
  EXPECT_GE(checked, 4);
}

TEST(BnbFormats, NibbleOrderAndBlocksizeChecks) {
  // element 0 in the high nibble: a weight [absmax, 0] packs NF4 codes 15 and 7 as 0xF7
  Quant4 q = quantize_4bit(at::tensor({2.0f, 0.0f}).reshape({1, 2}), Format::nf4, 64, false);
  EXPECT_EQ(q.packed.flatten()[0].item<int64_t>(), 0xF7);
  EXPECT_NE(error_of([] { quantize_4bit(at::ones({4, 4}), Format::nf4, 48, false); }).find("blocksize 48"), std::string::npos);
}

// ---- checkpoints in bitsandbytes' layout ----

struct Saved {
  std::string folder, logits;
};
const std::vector<Saved> kSaved = {{"tiny-llama-nf4", "logits_nf4"}, {"tiny-llama-nf4-dq", "logits_nf4_dq"},
                                   {"tiny-llama-int8", "logits_int8"}};

TEST(BnbCheckpoint, LoadsWithBitsandbytesLogitsEagerAndCompiled) {
  at::Tensor ids = golden_ids("lora");
  for (const auto & s : kSaved) {
    SCOPED_TRACE(s.folder);
    auto model = load_model(data_path("quant/" + s.folder));
    int quantized = 0;
    for (const auto & m : named_modules(model)) quantized += std::dynamic_pointer_cast<QuantizedLinear>(m.second) != nullptr;
    EXPECT_EQ(quantized, 14);  // every decoder Linear, not lm_head
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(model->forward({ids}), expected().at(s.logits), 1e-5, 1e-4));
    auto pm = std::make_shared<PeftModel>(model);
    auto c = compile(*pm);
    EXPECT_TRUE(all_close(c.forward({ids}), expected().at(s.logits), 1e-5, 1e-4));
  }
}

TEST(BnbCheckpoint, QuantizeCliWritesBitsandbytesBytes) {
  struct Run {
    std::string folder, flags;
  };
  for (const Run & r : {Run{"tiny-llama-nf4", "--method nf4"}, Run{"tiny-llama-nf4-dq", "--method nf4 --double-quant"},
                        Run{"tiny-llama-int8", "--method int8"}}) {
    SCOPED_TRACE(r.folder);
    const std::string out = temp_dir("quantize") + "/q";
    std::string log;
    ASSERT_EQ(run_cli("quantize --model " + golden_model("tiny-llama") + " --out " + out + " " + r.flags, &log), 0) << log;
    auto ours = safetensors_load(out + "/model.safetensors");
    auto theirs = safetensors_load(data_path("quant/" + r.folder + "/model.safetensors"));
    for (const auto & kv : theirs) {
      if (kv.first.size() > 14 && kv.first.compare(kv.first.size() - 14, 14, ".weight_format") == 0) continue;
      ASSERT_TRUE(ours.count(kv.first)) << "missing " << kv.first;
      EXPECT_EQ(ours.at(kv.first).scalar_type(), kv.second.scalar_type()) << kv.first;
      EXPECT_TRUE(at::equal(ours.at(kv.first), kv.second)) << kv.first;
    }
    for (const auto & kv : ours) EXPECT_TRUE(theirs.count(kv.first)) << "extra " << kv.first;
    auto cfg = nlohmann::json::parse(read_file(out + "/config.json"));
    auto want = nlohmann::json::parse(read_file(data_path("quant/" + r.folder + "/config.json")));
    EXPECT_EQ(cfg["quantization_config"], want["quantization_config"]);
    // and it loads back with the same logits
    at::NoGradGuard g;
    EXPECT_TRUE(all_close(load_model(out)->forward({golden_ids("lora")}),
                          load_model(data_path("quant/" + r.folder))->forward({golden_ids("lora")}), 0, 0));
  }
}

TEST(BnbCheckpoint, QuantizeAtLoadEqualsTheSavedCheckpoint) {
  LoadOptions o;
  o.quantize.format = Format::nf4;
  o.quantize.double_quant = true;
  auto a = load_model(golden_model("tiny-llama"), o);
  auto b = load_model(data_path("quant/tiny-llama-nf4-dq"));
  at::NoGradGuard g;
  EXPECT_TRUE(at::equal(a->forward({golden_ids("lora")}), b->forward({golden_ids("lora")})));
  auto fp = weight_footprint(a);
  EXPECT_EQ(fp.quantized_params, 2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 48 * 32));
}

// A copy of a saved folder with its model.safetensors changed by `edit` (and config.json by `cfg`).
std::string broken_copy(const std::string & folder, const std::function<void(std::map<std::string, at::Tensor> &)> & edit,
                        const std::function<void(nlohmann::json &)> & cfg = nullptr) {
  const std::string dir = temp_dir("broken") + "/m";
  ::mkdir(dir.c_str(), 0755);
  auto t = safetensors_load(data_path("quant/" + folder + "/model.safetensors"));
  edit(t);
  safetensors_save(dir + "/model.safetensors", t);
  auto c = nlohmann::json::parse(read_file(data_path("quant/" + folder + "/config.json")));
  if (cfg) cfg(c);
  write_file_atomic(dir + "/config.json", c.dump(2));
  return dir;
}

TEST(BnbCheckpoint, BadQuantStateIsANamedError) {
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  auto err = [](const std::string & dir) { return error_of([&] { load_model(dir); }); };
  EXPECT_NE(err(broken_copy("tiny-llama-nf4", [&](auto & t) { t.erase(q + ".quant_map"); })).find(q + ".quant_map"),
            std::string::npos);
  EXPECT_NE(err(broken_copy("tiny-llama-nf4", [&](auto & t) { t.erase(q + ".quant_state.bitsandbytes__nf4"); }))
                .find(q + ".quant_state.bitsandbytes__nf4"),
            std::string::npos);
  EXPECT_NE(err(broken_copy("tiny-llama-nf4", [&](auto & t) { t[q + ".absmax"] = t[q + ".absmax"].slice(0, 0, 3); }))
                .find(q + ".absmax' must hold 16"),
            std::string::npos);
  EXPECT_NE(err(broken_copy("tiny-llama-nf4-dq", [&](auto & t) { t.erase(q + ".nested_absmax"); })).find(q + ".nested_absmax"),
            std::string::npos);
  // the JSON says another shape, another blocksize, or is no JSON at all
  auto blob = [&](const std::string & text) {
    return broken_copy("tiny-llama-nf4", [&](auto & t) {
      t[q + ".quant_state.bitsandbytes__nf4"] = at::from_blob((void *)text.data(), {(int64_t)text.size()}, at::kByte).clone();
    });
  };
  EXPECT_NE(err(blob(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [32, 16]})")).find("shape [32, 16]"),
            std::string::npos);
  EXPECT_NE(err(blob(R"({"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [32, 32]})")).find("absmax' must hold 22"),
            std::string::npos);
  EXPECT_NE(err(blob("not json")).find("does not hold a JSON object"), std::string::npos);
  EXPECT_NE(err(broken_copy("tiny-llama-int8", [&](auto & t) { t.erase("model.layers.1.mlp.up_proj.SCB"); }))
                .find("model.layers.1.mlp.up_proj.weight' is Char"),
            std::string::npos);
  // unsupported quantization_config
  EXPECT_NE(err(broken_copy("tiny-llama-nf4", [](auto &) {}, [](auto & c) { c["quantization_config"]["quant_method"] = "gptq"; }))
                .find("quant_method is 'gptq'"),
            std::string::npos);
  EXPECT_NE(err(broken_copy("tiny-llama-nf4", [](auto &) {},
                            [](auto & c) { c["quantization_config"]["bnb_4bit_quant_storage"] = "bfloat16"; }))
                .find("bnb_4bit_quant_storage"),
            std::string::npos);
  // and through the CLI: a message, exit 1
  std::string out;
  EXPECT_EQ(run_cli("info --model " + broken_copy("tiny-llama-nf4", [&](auto & t) { t.erase(q + ".absmax"); }), &out), 1) << out;
  EXPECT_NE(out.find(q), std::string::npos) << out;
}

}  // namespace
