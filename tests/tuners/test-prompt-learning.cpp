// Prompt learning (PROMPT_TUNING, P_TUNING, PREFIX_TUNING) against upstream PEFT (gen_prompt.py): logits with
// the virtual tokens eager and compiled, padding, disabled, the saved folder and its config byte for byte in
// content, upstream's folder loaded, 4 AdamW steps, generation with the KV cache equal to without, and the
// refusals PEFT's model implies.
#include <set>

#include "peft/compile/compile.h"
#include "peft/generate/generate.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "peft/tuners/prompt-learning.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

const std::vector<std::string> kCases = {"prompt_tuning",     "prompt_tuning_text", "prompt_tuning_opt",
                                         "prefix_tuning",     "prefix_tuning_proj", "prefix_tuning_opt",
                                         "p_tuning_mlp",      "p_tuning_lstm"};

at::Tensor tensor_from_json(const nlohmann::json & rows) {
  std::vector<int64_t> v;
  for (const auto & r : rows) {
    for (const auto & x : r) v.push_back(x.get<int64_t>());
  }
  return at::tensor(v, at::kLong).view({static_cast<int64_t>(rows.size()), -1});
}

nlohmann::json case_json(const std::string & c) { return nlohmann::json::parse(read_file(golden_case(c) + "/case.json")); }

AdapterConfig config_of(const std::string & c) {
  nlohmann::json j = case_json(c)["config"];
  if (j.contains("prompt_tuning_init") && j["prompt_tuning_init"] == "TEXT") {
    j["tokenizer_name_or_path"] = golden_case(c) + "/tokenizer";
  }
  return AdapterConfig::from_json(j, c);
}

// A trainable adapter as upstream made it: the case's config, then upstream's encoder weights (PEFT's names).
std::shared_ptr<PeftModel> upstream_model(const std::string & c) {
  auto base = load_model(golden_model(case_json(c)["model"].get<std::string>()));
  auto m = std::make_shared<PeftModel>(base, config_of(c));
  auto enc = m->prompt_encoder("default");
  auto want = safetensors_load(golden_case(c) + "/encoder.safetensors");
  std::set<std::string> names;
  at::NoGradGuard g;
  for (const auto & p : enc->named_parameters(true)) {
    names.insert(p.key());
    auto it = want.find(p.key());
    if (it == want.end()) continue;  // (checked below)
    EXPECT_EQ(it->second.sizes(), p.value().sizes()) << p.key();
    p.value().copy_(it->second);
  }
  std::set<std::string> upstream;
  for (const auto & kv : want) upstream.insert(kv.first);
  EXPECT_EQ(names, upstream) << c << ": the encoder's parameters are named as PEFT's";
  m->train(false);
  return m;
}

// positions where the padded batch's mask is 1 (right padding), after the virtual tokens when the logits have them
void expect_padded(const at::Tensor & got, const at::Tensor & want, const nlohmann::json & mask, const std::string & what) {
  const int64_t extra = got.size(1) - static_cast<int64_t>(mask[0].size());
  for (size_t b = 0; b < mask.size(); ++b) {
    for (size_t s = 0; s < mask[b].size(); ++s) {
      if (mask[b][s] != 1) continue;
      const int64_t t = extra + static_cast<int64_t>(s);
      EXPECT_TRUE(all_close(got[b][t], want[b][t])) << what << " row " << b << " position " << t;
    }
  }
}

ForwardInput padded_input(const std::string & c) {
  ForwardInput in;
  in.input_ids = tensor_from_json(nlohmann::json::parse(read_file(golden_case(c) + "/input_ids_padded.json")));
  in.attention_mask = tensor_from_json(case_json(c)["padded_mask"]);
  return in;
}

}  // namespace

TEST(PromptLearning, GoldenLogitsEagerAndCompiled) {
  for (const auto & c : kCases) {
    SCOPED_TRACE(c);
    auto m = upstream_model(c);
    auto want = golden_expected(c);
    const at::Tensor ids = golden_ids(c);
    const auto mask = case_json(c)["padded_mask"];
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits"));
    expect_padded(m->forward(padded_input(c)), want.at("logits_padded"), mask, "eager padded");
    auto cm = compile(*m);
    EXPECT_CLOSE(cm.forward({ids}), want.at("logits"));
    expect_padded(cm.forward(padded_input(c)), want.at("logits_padded"), mask, "compiled padded");
    {
      auto off = m->disable_adapter();
      EXPECT_EQ(m->num_virtual_tokens(), 0);
      EXPECT_CLOSE(m->forward({ids}), want.at("logits_disabled"));
      EXPECT_CLOSE(cm.forward({ids}), want.at("logits_disabled"));
    }
    // the graph holds the encoder: its tensors are graph inputs, not constants
    EXPECT_CLOSE(cm.forward({ids}), want.at("logits"));
  }
}

TEST(PromptLearning, TextInitIsUpstreams) {
  // not perturbed: the table is PEFT's init from the text's tokens, repeated and cut
  auto base = load_model(golden_model("tiny-llama"));
  PeftModel m(base, config_of("prompt_tuning_text"));
  auto want = safetensors_load(golden_case("prompt_tuning_text") + "/encoder.safetensors");
  EXPECT_CLOSE(m.prompt_encoder("default")->table, want.at("embedding.weight"));
  nlohmann::json j = case_json("prompt_tuning_text")["config"];
  j["tokenizer_name_or_path"] = "/nonexistent/tokenizer";
  EXPECT_NE(error_of([&] { PeftModel(load_model(golden_model("tiny-llama")), AdapterConfig::from_json(j, "cfg")); })
                .find("tokenizer_name_or_path"),
            std::string::npos);
}

TEST(PromptLearning, SavedFolderIsUpstreams) {
  for (const auto & c : kCases) {
    SCOPED_TRACE(c);
    auto m = upstream_model(c);
    const std::string dir = temp_dir("prompt-save") + "/a";
    m->save_pretrained(dir);
    auto ours = safetensors_load(dir + "/adapter_model.safetensors");
    auto theirs = safetensors_load(golden_case(c) + "/adapter/adapter_model.safetensors");
    ASSERT_EQ(ours.size(), 1u);
    EXPECT_CLOSE(ours.at("prompt_embeddings"), theirs.at("prompt_embeddings"));
    auto oj = read_json_file(dir + "/adapter_config.json"), tj = read_json_file(golden_case(c) + "/adapter/adapter_config.json");
    oj.erase("peft_version");
    tj.erase("peft_version");
    // upstream wrote null (its reference model was built in memory); ours names the folder it loaded
    EXPECT_EQ(oj["base_model_name_or_path"], golden_model(case_json(c)["model"].get<std::string>()));
    oj.erase("base_model_name_or_path");
    tj.erase("base_model_name_or_path");
    if (tj.contains("tokenizer_name_or_path") && tj["tokenizer_name_or_path"].is_string()) {
      tj.erase("tokenizer_name_or_path");  // (the test gave an absolute path)
      oj.erase("tokenizer_name_or_path");
    }
    EXPECT_EQ(oj, tj);
  }
}

TEST(PromptLearning, UpstreamFolderLoadsEagerAndCompiled) {
  for (const auto & c : kCases) {
    SCOPED_TRACE(c);
    auto base = load_model(golden_model(case_json(c)["model"].get<std::string>()));
    auto m = PeftModel::from_pretrained(base, golden_case(c) + "/adapter");
    auto want = golden_expected(c);
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({golden_ids(c)}), want.at("logits_loaded"));
    auto cm = compile(*m);
    EXPECT_CLOSE(cm.forward({golden_ids(c)}), want.at("logits_loaded"));
    EXPECT_TRUE(m->trainable_parameters().empty());
  }
}

TEST(PromptLearning, GoldenTrainingEagerAndCompiled) {
  for (const auto & c : kCases) {
    for (bool compiled : {false, true}) {
      SCOPED_TRACE(c + (compiled ? " compiled" : " eager"));
      auto m = upstream_model(c);
      m->train();
      auto want = golden_expected(c);
      TrainOptions o;
      o.batch_size = 3;
      o.steps = 4;
      o.lr = 1e-2;
      o.weight_decay = 0.01;
      o.shuffle = false;
      o.virtual_tokens = m->virtual_token_logits() > 0;
      auto cm = compile(*m);
      Trainer t([&](const ForwardInput & in) { return compiled ? cm.forward(in) : m->forward(in); },
                m->trainable_parameters(), o);
      for (int64_t s = 0; s < 4; ++s) {
        const double w = want.at("losses")[s].item<double>();
        EXPECT_NEAR(t.step(golden_ids(c)).loss, w, 1e-4 + 1e-3 * std::abs(w)) << "step " << s + 1;
      }
      m->train(false);
      at::NoGradGuard g;
      EXPECT_CLOSE(m->forward({golden_ids(c)}), want.at("logits_final"));
    }
  }
}

// the virtual tokens in the cache's first slots (fill_virtual_tokens) give what a forward over the whole
// sequence gives: the same greedy tokens with and without the cache, eager and compiled, batched with padding
TEST(PromptLearning, GenerateWithCacheEqualsWithout) {
  for (const std::string c : {"prompt_tuning", "prefix_tuning", "p_tuning_lstm", "prefix_tuning_opt"}) {
    SCOPED_TRACE(c);
    auto m = upstream_model(c);
    const ModelConfig & cfg = m->base_model().config();
    const std::vector<std::vector<int64_t>> prompts = {{5, 17, 42, 9, 33}, {7, 8}, {60, 61, 62}};
    GenerationConfig gen;
    gen.max_new_tokens = 6;
    gen.virtual_tokens = m->num_virtual_tokens();
    gen.fill_virtual_tokens = [&](KVCache & k) { m->fill_virtual_tokens(k); };
    gen.use_cache = false;
    auto eager = [&](const ForwardInput & in) { return m->forward(in); };
    const auto want = generate(eager, cfg, m->base_model().options(), prompts, gen);
    gen.use_cache = true;
    EXPECT_EQ(generate(eager, cfg, m->base_model().options(), prompts, gen), want);
    auto cm = compile(*m);
    EXPECT_EQ(generate([&](const ForwardInput & in) { return cm.forward(in); }, cfg, m->base_model().options(), prompts, gen),
              want);
    // and the cached forward's logits are the full forward's
    KVCache cache = KVCache::allocate(cfg, 1, gen.virtual_tokens + 8, m->base_model().options());
    m->fill_virtual_tokens(cache);
    ForwardInput in;
    in.input_ids = at::tensor(std::vector<int64_t>{5, 17, 42}, at::kLong).unsqueeze(0);
    in.cache = &cache;
    in.cache_position = at::arange(gen.virtual_tokens, gen.virtual_tokens + 3, at::kLong);
    at::NoGradGuard g;
    at::Tensor full = m->forward({in.input_ids});
    EXPECT_CLOSE(m->forward(in), full.narrow(1, full.size(1) - 3, 3));
  }
}

TEST(PromptLearning, RefusalsNameTheProblem) {
  auto base = load_model(golden_model("tiny-llama"));
  // a folder whose file holds an encoder's output cannot resume training (PEFT: a new random encoder, or a shape error)
  EXPECT_NE(error_of([&] { PeftModel::from_pretrained(base, golden_case("p_tuning_mlp") + "/adapter", "default", true); })
                .find("cannot be loaded trainable"),
            std::string::npos);
  EXPECT_TRUE(base->named_parameters(true).find("prompt_encoder.default.embedding.weight") == nullptr)
      << "a refused load leaves the model plain";
  auto m = PeftModel::from_pretrained(base, golden_case("prompt_tuning") + "/adapter");
  EXPECT_NE(error_of([&] { m->merge_adapter(); }).find("cannot be merged"), std::string::npos);
  PeftInput in;
  in.input_ids = golden_ids("prompt_tuning");
  in.position_ids = at::arange(in.input_ids.size(1), at::kLong).unsqueeze(0).expand_as(in.input_ids);
  EXPECT_NE(error_of([&] { m->forward(in); }).find("position_ids"), std::string::npos);
  in.position_ids = at::Tensor();
  in.adapter_names = {"default", "__base__", "default"};
  EXPECT_NE(error_of([&] { m->forward(in); }).find("prompt-learning"), std::string::npos);
  // a cache without the virtual tokens
  KVCache cache = KVCache::allocate(base->config(), 3, 20, base->options());
  ForwardInput ci;
  ci.input_ids = golden_ids("prompt_tuning");
  ci.cache = &cache;
  ci.cache_position = at::arange(6, 15, at::kLong);
  EXPECT_NE(error_of([&] { m->forward(ci); }).find("fill_virtual_tokens"), std::string::npos);
  // a cache whose prefix holds the virtual tokens: an input may not write into the prefix (the model's check)
  cache.prefix_length = m->num_virtual_tokens();
  ASSERT_GT(cache.prefix_length, 0);
  ci.cache_position = at::arange(cache.prefix_length - 1, cache.prefix_length + 8, at::kLong);
  EXPECT_NE(error_of([&] { m->forward(ci); }).find("must be past the"), std::string::npos);
  EXPECT_NE(error_of([&] { base->forward(ci); }).find("must be past the"), std::string::npos);
  m->load_adapter(golden_case("prompt_tuning") + "/adapter", "other");
  EXPECT_NE(error_of([&] { m->set_adapter(std::vector<std::string>{"default", "other"}); }).find("one at a time"),
            std::string::npos);
  EXPECT_NE(error_of([&] { m->add_adapter("l", AdapterConfig::from_json({{"peft_type", "LORA"}, {"target_modules", {"q_proj"}}}, "c")); })
                .find("one method"),
            std::string::npos);
  // config fields PEFT's causal-LM prompt learning does not have
  auto bad = [](nlohmann::json j) { return error_of([&] { AdapterConfig::from_json(j, "cfg.json"); }); };
  EXPECT_NE(bad({{"peft_type", "PROMPT_TUNING"}}).find("num_virtual_tokens"), std::string::npos);
  EXPECT_NE(bad({{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 4}, {"num_transformer_submodules", 2}})
                .find("num_transformer_submodules"),
            std::string::npos);
  EXPECT_NE(bad({{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 4}, {"encoder_reparameterization_type", "GRU"}})
                .find("encoder_reparameterization_type"),
            std::string::npos);
  EXPECT_NE(bad({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 4}, {"prompt_tuning_init", "TEXT"}})
                .find("prompt_tuning_init_text"),
            std::string::npos);
  // an adapter for another model
  auto j = read_json_file(golden_case("prefix_tuning") + "/adapter/adapter_config.json");
  j["num_layers"] = 5;
  EXPECT_NE(error_of([&] { PeftModel(load_model(golden_model("tiny-llama")), AdapterConfig::from_json(j, "cfg")); })
                .find("num_layers"),
            std::string::npos);
}

TEST(PromptLearning, DeleteAndUnloadLeaveThePlainModel) {
  auto base = load_model(golden_model("tiny-llama"));
  const size_t n = base->parameters(true).size();
  auto m = PeftModel::from_pretrained(base, golden_case("p_tuning_lstm") + "/adapter");
  EXPECT_EQ(base->parameters(true).size(), n + 1);
  at::NoGradGuard g;
  const at::Tensor before = m->forward({golden_ids("lora")});
  m->load_adapter(golden_case("p_tuning_mlp") + "/adapter", "second");
  EXPECT_NE(error_of([&] { m->load_adapter(golden_case("prefix_tuning") + "/adapter", "p"); }), "")
      << "one method per model";
  m->set_adapter("second");
  EXPECT_CLOSE(m->forward({golden_ids("lora")}), golden_expected("p_tuning_mlp").at("logits"));
  m->set_adapter("default");
  m->delete_adapter("second");
  EXPECT_CLOSE(m->forward({golden_ids("lora")}), before);
  auto plain = m->unload();
  EXPECT_EQ(plain->parameters(true).size(), n);
  EXPECT_CLOSE(plain->forward({golden_ids("lora")}), golden_expected("p_tuning_lstm").at("logits_disabled"));
}

namespace {

// modules_to_save with prompt learning (gen_config_cases.py): copies of the modules trained beside the encoder,
// as upstream does. Prompt tuning and P-tuning embed the input with the original embedding (PEFT's
// word_embeddings), so prompt_tuning_mts's copy of embed_tokens takes no part there; upstream's disable scope
// keeps the copies in place.
const std::vector<std::string> kMtsCases = {"prompt_tuning_mts", "p_tuning_mts", "prefix_tuning_mts"};

// upstream_model plus the copies as upstream had them (copies.safetensors: "<module>.<tensor>")
std::shared_ptr<PeftModel> upstream_mts_model(const std::string & c) {
  auto m = upstream_model(c);
  auto want = safetensors_load(golden_case(c) + "/copies.safetensors");
  std::set<std::string> got;
  at::NoGradGuard g;
  const std::string mid = "modules_to_save.default.";
  for (const auto & l : m->tuner_layers()) {
    for (const auto & p : l.second->adapter_parameters("default")) {
      const std::string key = l.first + "." + p.first.substr(p.first.find(mid) + mid.size());
      got.insert(key);
      auto it = want.find(key);
      if (it != want.end()) p.second.copy_(it->second);
    }
  }
  std::set<std::string> upstream;
  for (const auto & kv : want) upstream.insert(kv.first);
  EXPECT_EQ(got, upstream) << c << ": the modules upstream wrapped";
  return m;
}

TEST(PromptLearning, ModulesToSaveGoldenEagerAndCompiled) {
  for (const auto & c : kMtsCases) {
    SCOPED_TRACE(c);
    auto m = upstream_mts_model(c);
    auto want = golden_expected(c);
    const at::Tensor ids = golden_ids(c);
    EXPECT_EQ(m->trainable_parameters().size(), case_json(c)["trainable"].size());
    at::NoGradGuard g;
    EXPECT_CLOSE(m->forward({ids}), want.at("logits"));
    auto cm = compile(*m);
    EXPECT_CLOSE(cm.forward({ids}), want.at("logits"));
    ASSERT_TRUE(case_json(c)["copies_active_when_disabled"].get<bool>());
    {
      auto off = m->disable_adapter();
      EXPECT_CLOSE(m->forward({ids}), want.at("logits_disabled"));
      EXPECT_CLOSE(cm.forward({ids}), want.at("logits_disabled"));
    }
    EXPECT_CLOSE(cm.forward({ids}), want.at("logits"));
  }
}

TEST(PromptLearning, ModulesToSaveFoldersAreUpstreams) {
  for (const auto & c : kMtsCases) {
    SCOPED_TRACE(c);
    // saved: upstream's keys ("base_model.<module>.<tensor>") and values
    auto m = upstream_mts_model(c);
    const std::string dir = temp_dir("prompt-mts") + "/a";
    m->save_pretrained(dir);
    auto ours = safetensors_load(dir + "/adapter_model.safetensors");
    auto theirs = safetensors_load(golden_case(c) + "/adapter/adapter_model.safetensors");
    std::vector<std::string> keys;
    for (const auto & kv : ours) keys.push_back(kv.first);
    EXPECT_EQ(nlohmann::json(keys), case_json(c)["adapter_keys"]);
    for (const auto & kv : theirs) {
      if (ours.count(kv.first)) EXPECT_CLOSE(ours.at(kv.first), kv.second) << kv.first;
    }
    // upstream's folder loaded, eager and compiled; ours loads back to the same
    for (const std::string & folder : {golden_case(c) + "/adapter", dir}) {
      auto l = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), folder);
      at::NoGradGuard g;
      EXPECT_CLOSE(l->forward({golden_ids(c)}), golden_expected(c).at("logits_loaded")) << folder;
      auto cm = compile(*l);
      EXPECT_CLOSE(cm.forward({golden_ids(c)}), golden_expected(c).at("logits_loaded")) << folder;
      EXPECT_TRUE(l->trainable_parameters().empty());
    }
    // a file without a copy's tensor is refused, and the model is left plain
    auto t = safetensors_load(dir + "/adapter_model.safetensors");
    t.erase(std::prev(t.end())->first == "prompt_embeddings" ? t.begin()->first : std::prev(t.end())->first);
    safetensors_save(dir + "/adapter_model.safetensors", t);
    auto base = load_model(golden_model("tiny-llama"));
    const size_t n = base->parameters(true).size();
    EXPECT_NE(error_of([&] { PeftModel::from_pretrained(base, dir); }).find("missing tensor"), std::string::npos);
    EXPECT_EQ(base->parameters(true).size(), n);
  }
}

TEST(PromptLearning, ModulesToSaveTrainingEagerAndCompiled) {
  for (const auto & c : kMtsCases) {
    for (bool compiled : {false, true}) {
      SCOPED_TRACE(c + (compiled ? " compiled" : " eager"));
      auto m = upstream_mts_model(c);
      m->train();
      auto want = golden_expected(c);
      TrainOptions o;
      o.batch_size = 3;
      o.steps = 4;
      o.lr = 1e-2;
      o.weight_decay = 0.01;
      o.shuffle = false;
      o.virtual_tokens = m->virtual_token_logits() > 0;
      auto cm = compile(*m);
      Trainer t([&](const ForwardInput & in) { return compiled ? cm.forward(in) : m->forward(in); },
                m->trainable_parameters(), o);
      for (int64_t s = 0; s < 4; ++s) {
        const double w = want.at("losses")[s].item<double>();
        EXPECT_NEAR(t.step(golden_ids(c)).loss, w, 1e-4 + 1e-3 * std::abs(w)) << "step " << s + 1;
      }
      m->train(false);
      at::NoGradGuard g;
      EXPECT_CLOSE(m->forward({golden_ids(c)}), want.at("logits_final"));
    }
  }
}

}  // namespace
