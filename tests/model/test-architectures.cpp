// The Llama-family variants, GPT-2 and GPT-NeoX against a reference written from transformers' modeling code
// (tests/data/golden/gen_arch.py): Qwen3's per-head q/k norms, Mistral's sliding window, Phi-3's fused
// projections and partial rotary embedding, GPT-2's Conv1D layers (LoRA and IA3 with fan_in_fan_out),
// GPT-NeoX (per-head fused query_key_value, rotary_pct, parallel / sequential residual), and the rotary
// scalings (linear, dynamic, yarn, llama3), each without and with a LoRA adapter from upstream PEFT, eager,
// compiled and through the CLI; and a KV-cache decode equal to the full forward under the sliding window.
#include <set>

#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/model/causal-lm.h"
#include "peft/nn/layers.h"
#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

struct ArchCase {
  const char * name;   // cases/arch_<name>
  const char * model;  // models/<model>
};

class Arch : public ::testing::TestWithParam<ArchCase> {
 protected:
  std::string case_dir() const { return golden_case(std::string("arch_") + GetParam().name); }
  at::Tensor ids() const { return golden_ids(std::string("arch_") + GetParam().name); }
  std::map<std::string, at::Tensor> want() const { return golden_expected(std::string("arch_") + GetParam().name); }
};

TEST_P(Arch, BaseAndLoraMatchTheReferenceEagerAndCompiled) {
  auto base = load_model(golden_model(GetParam().model));
  at::NoGradGuard g;
  EXPECT_CLOSE(base->forward({ids()}), want().at("logits"));
  EXPECT_CLOSE(compile(base).forward({ids()}), want().at("logits"));
  auto m = PeftModel::from_pretrained(base, case_dir() + "/adapter");
  EXPECT_CLOSE(m->forward({ids()}), want().at("logits_lora"));
  EXPECT_CLOSE(compile(*m).forward({ids()}), want().at("logits_lora"));
  m->merge_adapter();
  EXPECT_CLOSE(m->forward({ids()}), want().at("logits_lora"));
}

TEST_P(Arch, CliForwardWithTheAdapter) {
  const std::string out = temp_dir("arch") + "/logits.safetensors";
  std::string log;
  ASSERT_EQ(run_cli("forward --compile --model " + golden_model(GetParam().model) + " --adapter " + case_dir() +
                        "/adapter --input-ids " + case_dir() + "/input_ids.json --out " + out,
                    &log),
            0)
      << log;
  EXPECT_CLOSE(safetensors_load(out).at("logits"), want().at("logits_lora"));
}

INSTANTIATE_TEST_SUITE_P(Golden, Arch,
                         ::testing::Values(ArchCase{"qwen3", "tiny-qwen3"}, ArchCase{"mistral", "tiny-mistral"},
                                           ArchCase{"phi3", "tiny-phi3"},
                                           ArchCase{"rope_linear", "tiny-rope-linear"},
                                           ArchCase{"rope_dynamic", "tiny-rope-dynamic"},
                                           ArchCase{"rope_yarn", "tiny-rope-yarn"},
                                           ArchCase{"rope_llama3", "tiny-rope-llama3"},
                                           ArchCase{"gpt2", "tiny-gpt2"}, ArchCase{"gpt2_ia3", "tiny-gpt2-ia3"},
                                           ArchCase{"phi3_partial", "tiny-phi3-partial"},
                                           ArchCase{"gpt_neox", "tiny-gpt-neox"},
                                           ArchCase{"gpt_neox_seq", "tiny-gpt-neox-seq"},
                                           ArchCase{"gemma2", "tiny-gemma2"}, ArchCase{"gemma3", "tiny-gemma3"},
                                           ArchCase{"qwen3_sliding", "tiny-qwen3-sliding"},
                                           ArchCase{"rope_longrope", "tiny-rope-longrope"},
                                           ArchCase{"rope_longrope_short", "tiny-rope-longrope-short"}),
                         [](const auto & i) { return std::string(i.param.name); });

// One token at a time through the KV cache gives the full forward's logits: the window slides over cache
// slots as it does over the sequence
TEST(ArchCache, SlidingWindowDecodeEqualsTheFullForward) {
  auto m = load_model(golden_model("tiny-mistral"));
  at::NoGradGuard g;
  const at::Tensor ids = golden_ids("arch_mistral").narrow(0, 0, 1);
  const int64_t T = ids.size(1);
  const at::Tensor full = m->forward({ids});
  KVCache cache = KVCache::allocate(m->config(), 1, T, at::TensorOptions().dtype(at::kFloat));
  for (int64_t t = 0; t < T; ++t) {
    ForwardInput in;
    in.input_ids = ids.narrow(1, t, 1);
    in.cache = &cache;
    in.cache_position = at::tensor({t});
    EXPECT_TRUE(all_close(m->forward(in).select(1, 0), full.select(1, t))) << "token " << t;
  }
}

// PEFT's default target modules are per model type: Qwen's IA3 and LN-tuning rows are not Llama's
TEST(ArchConfig, QwenDefaultTargetsArePeftsRow) {
  auto wrapped = [](const char * peft_type) {
    auto m = std::make_shared<PeftModel>(load_model(golden_model("tiny-qwen3")),
                                         AdapterConfig::from_json({{"peft_type", peft_type}}, "config"));
    std::set<std::string> kinds;
    for (const auto & mod : named_modules(m->model_ptr())) {
      if (std::dynamic_pointer_cast<TunerLayer>(mod.second)) kinds.insert(mod.first.substr(mod.first.rfind('.') + 1));
    }
    return kinds;
  };
  EXPECT_EQ(wrapped("IA3"), (std::set<std::string>{"q_proj", "v_proj", "down_proj"}));
  EXPECT_EQ(wrapped("LN_TUNING"), (std::set<std::string>{"post_attention_layernorm"}));
  EXPECT_EQ(wrapped("LORA"), (std::set<std::string>{"q_proj", "v_proj"}));
}

TEST(ArchConfig, UnsupportedRopeScalingAndSlidingLayersAreNamed) {
  const nlohmann::json base = {{"model_type", "llama"}, {"vocab_size", 8}, {"hidden_size", 8}, {"intermediate_size", 8},
                               {"num_hidden_layers", 1}, {"num_attention_heads", 2}};
  auto err = [&](nlohmann::json extra) {
    nlohmann::json j = base;
    j.update(extra);
    return error_of([&] { ModelConfig::from_json(j, "cfg.json"); });
  };
  EXPECT_NE(err({{"rope_scaling", {{"rope_type", "longrope"}, {"short_factor", {1, 1}}}}}).find("long_factor"), std::string::npos);
  EXPECT_NE(err({{"rope_scaling", {{"rope_type", "longrope"}, {"short_factor", {1}}, {"long_factor", {1, 2}}}}}).find("short_factor"),
            std::string::npos);
  EXPECT_NE(err({{"rope_scaling", {{"rope_type", "su"}}}}).find("'su'"), std::string::npos);
  EXPECT_NE(err({{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}, {"mscale", 0.7}}}}).find("'mscale'"),
            std::string::npos);
  EXPECT_NE(err({{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}}).find("low_freq_factor"), std::string::npos);
  EXPECT_NE(err({{"rope_scaling", {{"rope_type", "linear"}}}}).find("'factor'"), std::string::npos);
  EXPECT_NE(err({{"model_type", "qwen3"}, {"use_sliding_window", true}}).find("sliding_window"), std::string::npos);
  EXPECT_NE(err({{"model_type", "gemma2"}, {"layer_types", {"sliding_attention"}}, {"num_hidden_layers", 2}}).find("layer_types"),
            std::string::npos);
  // a partial rotary embedding: Phi-3's and GPT-NeoX's, not Llama's
  EXPECT_NE(err({{"partial_rotary_factor", 0.5}}).find("partial_rotary_factor"), std::string::npos);
  EXPECT_NE(err({{"model_type", "phi3"}, {"partial_rotary_factor", 0.1}}).find("rotated features"), std::string::npos);
}


// GPT-2 (learned positions), GPT-NeoX and Phi-3 (partial rotary embeddings): one token at a time through
// the KV cache, compiled, with the adapter, gives the full forward's logits
TEST(ArchCache, DecodeEqualsTheFullForward) {
  for (const auto & [name, model] : std::vector<std::pair<std::string, std::string>>{
           {"gpt2", "tiny-gpt2"}, {"gpt_neox", "tiny-gpt-neox"}, {"phi3_partial", "tiny-phi3-partial"},
           {"gemma2", "tiny-gemma2"}, {"gemma3", "tiny-gemma3"}, {"qwen3_sliding", "tiny-qwen3-sliding"}}) {
    SCOPED_TRACE(name);
    auto m = PeftModel::from_pretrained(load_model(golden_model(model)), golden_case("arch_" + name) + "/adapter");
    at::NoGradGuard g;
    const at::Tensor ids = golden_ids("arch_" + name).narrow(0, 0, 1);
    const int64_t T = ids.size(1);
    const at::Tensor full = m->forward({ids});
    auto c = compile(*m);
    KVCache cache = KVCache::allocate(m->base_model().config(), 1, T, at::TensorOptions().dtype(at::kFloat));
    for (int64_t t = 0; t < T; ++t) {
      ForwardInput in;
      in.input_ids = ids.narrow(1, t, 1);
      in.cache = &cache;
      in.cache_position = at::tensor({t});
      EXPECT_TRUE(all_close(c.forward(in).select(1, 0), full.select(1, t))) << "token " << t;
    }
  }
}

// GPT-2: PEFT's default targets (Conv1D layers), a checkpoint as the hub's gpt2 holds it (no "transformer."
// prefix, the old causal-mask buffers), and what is not supported on Conv1D layers yet, by name
TEST(ArchConfig, Gpt2TargetsHubLayoutAndRefusals) {
  auto kinds = [](const char * peft_type) {
    auto m = std::make_shared<PeftModel>(load_model(golden_model("tiny-gpt2")),
                                         AdapterConfig::from_json({{"peft_type", peft_type}}, "config"));
    std::set<std::string> k;
    for (const auto & mod : named_modules(m->model_ptr())) {
      if (std::dynamic_pointer_cast<TunerLayer>(mod.second)) k.insert(mod.first.substr(mod.first.find(".h.") + 5));
    }
    return k;
  };
  EXPECT_EQ(kinds("LORA"), (std::set<std::string>{"attn.c_attn"}));
  EXPECT_EQ(kinds("IA3"), (std::set<std::string>{"attn.c_attn", "mlp.c_proj"}));

  const std::string dir = temp_dir("gpt2-hub");
  std::system(("cp " + golden_model("tiny-gpt2") + "/config.json " + dir).c_str());
  auto t = safetensors_load(golden_model("tiny-gpt2") + "/model.safetensors");
  std::map<std::string, at::Tensor> hub;
  for (const auto & kv : t) hub[kv.first.substr(std::string("transformer.").size())] = kv.second;
  hub["h.0.attn.bias"] = at::ones({1, 1, 64, 64});
  hub["h.1.attn.masked_bias"] = at::tensor(-1e4);
  safetensors_save(dir + "/model.safetensors", hub);
  at::NoGradGuard g;
  EXPECT_TRUE(at::equal(load_model(dir)->forward({golden_ids("arch_gpt2")}),
                        load_model(golden_model("tiny-gpt2"))->forward({golden_ids("arch_gpt2")})));

  auto e = error_of([] {
    PeftModel m(load_model(golden_model("tiny-gpt2")),
                AdapterConfig::from_json({{"peft_type", "LOHA"}, {"target_modules", {"c_attn"}}}, "config"));
  });
  EXPECT_NE(e.find("Conv1D"), std::string::npos) << e;
  LoadOptions o;
  o.quantize.format = quant::Format::nf4;
  e = error_of([&] { load_model(golden_model("tiny-gpt2"), o); });
  EXPECT_NE(e.find("Conv1D layers (GPT-2's 'transformer.h.0.attn.c_attn')"), std::string::npos) << e;
}

// peft info --modules (issue 25): every layer by name, with its type and weight shape, as the loaded model has
// them -- the names target_modules picks from. Float, GPT-2's Conv1D and quantized layers.
TEST(Info, ModulesListsEveryLayerWithItsTypeAndShape) {
  for (const char * name : {"tiny-llama", "tiny-gpt2"}) {
    const std::string model = golden_model(name);
    std::string out;
    ASSERT_EQ(run_cli("info --modules --model " + model, &out), 0) << out;
    auto m = load_model(model);
    int64_t listed = 0;
    for (const auto & nm : named_modules(m)) {
      auto layer = std::dynamic_pointer_cast<Layer>(nm.second);
      if (nm.first.empty() || !layer) continue;
      ++listed;
      std::string type, shape;
      auto dims = [](const at::Tensor & w) {
        std::string s = "[";
        for (int64_t i = 0; i < w.dim(); ++i) s += (i ? ", " : "") + std::to_string(w.size(i));
        return s + "]";
      };
      if (auto l = std::dynamic_pointer_cast<Linear>(layer)) {
        type = "Linear", shape = dims(l->weight);
      } else if (auto c = std::dynamic_pointer_cast<Conv1D>(layer)) {
        type = "Conv1D", shape = dims(c->weight);
      } else if (auto e = std::dynamic_pointer_cast<Embedding>(layer)) {
        type = "Embedding", shape = dims(e->weight);
      } else if (auto n = std::dynamic_pointer_cast<RMSNorm>(layer)) {
        type = "RMSNorm", shape = dims(n->weight);
      } else if (auto ln = std::dynamic_pointer_cast<LayerNorm>(layer)) {
        type = "LayerNorm", shape = dims(ln->weight);
      }
      // the line of this module: its full name first, then the type, then the shape
      const size_t at = out.find("\n" + nm.first + " ");
      ASSERT_NE(at, std::string::npos) << nm.first << " not listed:\n" << out;
      const std::string line = out.substr(at + 1, out.find('\n', at + 1) - at - 1);
      if (type.empty()) continue;
      EXPECT_NE(line.find(" " + type + " "), std::string::npos) << line;
      EXPECT_NE(line.find(shape), std::string::npos) << line;
    }
    EXPECT_GT(listed, 4);
    EXPECT_NE(out.find(str("modules:      ", listed, " ")), std::string::npos) << out;
  }
  // quantized at load: the Linear layers show their kind and logical (out, in) shape; lm_head stays float
  std::string out;
  ASSERT_EQ(run_cli("info --modules --quantize nf4 --model " + golden_model("tiny-llama"), &out), 0) << out;
  auto m = load_model(golden_model("tiny-llama"));
  auto q = std::dynamic_pointer_cast<LinearBase>(get_submodule(m, "model.layers.0.self_attn.q_proj"));
  ASSERT_NE(q, nullptr);
  const size_t at = out.find("\nmodel.layers.0.self_attn.q_proj ");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string line = out.substr(at + 1, out.find('\n', at + 1) - at - 1);
  EXPECT_NE(line.find("Linear4bit (nf4)"), std::string::npos) << line;
  EXPECT_NE(line.find(str("[", q->out_features(), ", ", q->in_features(), "]")), std::string::npos) << line;
  // without --modules: the summary only
  ASSERT_EQ(run_cli("info --model " + golden_model("tiny-llama"), &out), 0) << out;
  EXPECT_EQ(out.find("model.layers.0.self_attn.q_proj"), std::string::npos) << out;
}

}  // namespace
