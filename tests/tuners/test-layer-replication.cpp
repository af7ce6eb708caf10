// LoRA's layer_replication (PEFT's replicate_layers): upstream's golden logits eager and compiled, the files,
// shared base weights, one KV-cache slot per position, per-layer kinds following the copied layer, and the
// refusals (merging into shared weights, architectures PEFT cannot replicate, replicating twice).
#include "golden-cases.h"
#include <filesystem>

#include "peft/compile/compile.h"
#include "peft/io/safetensors.h"
#include "peft/model/replicate.h"
#include "peft/nn/layers.h"
#include "peft/peft-model.h"
#include "peft/serve/engine.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

const char * kCase = "lora_layer_replication";

std::shared_ptr<PeftModel> load() {
  return PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case(kCase) + "/adapter");
}

at::Tensor base_weight(PeftModel & m, const std::string & path) {
  auto l = std::dynamic_pointer_cast<Layer>(get_submodule(m.model_ptr(), path));
  return std::dynamic_pointer_cast<Linear>(l->base())->weight;
}

TEST(LayerReplication, UpstreamLogitsEagerAndCompiled) {
  auto m = load();
  auto want = golden_expected(kCase);
  const at::Tensor ids = golden_ids(kCase);
  at::NoGradGuard g;
  EXPECT_EQ(m->base_model().config().num_layers, 3);
  EXPECT_CLOSE(m->forward({ids}), want.at("logits"));
  {
    auto off = m->disable_adapter();
    EXPECT_CLOSE(m->forward({ids}), want.at("logits_disabled"));
  }
  auto c = compile(*m);
  EXPECT_CLOSE(c.forward({ids}), want.at("logits"));
  {
    auto off = m->disable_adapter();
    EXPECT_CLOSE(c.forward({ids}), want.at("logits_disabled"));
  }
  EXPECT_EQ(c.stats().graph_breaks, 0u);
}

TEST(LayerReplication, CopiesShareBaseWeightsAndOwnTheirAdapters) {
  auto base = load_model(golden_model("tiny-llama"));
  auto before = [&] { at::NoGradGuard g; return base->forward({golden_ids(kCase)}); }();
  auto m = PeftModel::from_pretrained(base, golden_case(kCase) + "/adapter");
  const std::string l1 = "model.layers.1.self_attn.q_proj", l2 = "model.layers.2.self_attn.q_proj";
  EXPECT_TRUE(base_weight(*m, l1).is_same(base_weight(*m, l2)));
  EXPECT_TRUE(base_weight(*m, l1).is_same(std::dynamic_pointer_cast<Linear>(get_submodule(base, l1))->weight));
  auto t1 = std::dynamic_pointer_cast<TunerLayer>(get_submodule(m->model_ptr(), l1));
  auto t2 = std::dynamic_pointer_cast<TunerLayer>(get_submodule(m->model_ptr(), l2));
  ASSERT_TRUE(t1 && t2);
  EXPECT_FALSE(t1->adapter_parameters("default").at(0).second.is_same(t2->adapter_parameters("default").at(0).second));
  // the model given stays as it was: two layers, the same logits
  EXPECT_EQ(base->config().num_layers, 2);
  at::NoGradGuard g;
  EXPECT_TRUE(at::equal(base->forward({golden_ids(kCase)}), before));
}

TEST(LayerReplication, SavedFolderEqualsUpstreamsAndCreatesTheSameModel) {
  auto m = load();
  const std::string dir = temp_dir("replication") + "/adapter";
  m->save_pretrained(dir);
  auto upstream = safetensors_load(golden_case(kCase) + "/adapter/adapter_model.safetensors");
  auto ours = safetensors_load(dir + "/adapter_model.safetensors");
  ASSERT_EQ(ours.size(), upstream.size());
  for (const auto & kv : upstream) {
    ASSERT_TRUE(ours.count(kv.first)) << kv.first;
    EXPECT_TRUE(at::equal(ours.at(kv.first), kv.second)) << kv.first;
  }
  auto cfg = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  EXPECT_EQ(cfg["layer_replication"], nlohmann::json::parse("[[0, 2], [1, 2]]"));
  // get_peft_model from the config: the same stack, 3 x 3 adapted layers
  auto fresh = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")),
                                           AdapterConfig::load(golden_case(kCase) + "/adapter"));
  EXPECT_EQ(fresh->tuner_layers().size(), 9u);
  EXPECT_EQ(fresh->base_model().config().num_layers, 3);
}

TEST(LayerReplication, OneCacheSlotPerPosition) {
  auto m = load();
  const at::Tensor ids = golden_ids(kCase);
  at::NoGradGuard g;
  const at::Tensor full = m->forward({ids});
  KVCache cache = KVCache::allocate(m->base_model().config(), ids.size(0), ids.size(1), m->base_model().options());
  EXPECT_EQ(cache.k.size(), 3u);
  for (int64_t t = 0; t < ids.size(1); ++t) {
    ForwardInput in;
    in.input_ids = ids.narrow(1, t, 1);
    in.cache_position = at::full({1}, t, at::kLong);
    in.attention_mask = at::cat({at::ones({ids.size(0), t + 1}, at::kLong), at::zeros({ids.size(0), ids.size(1) - t - 1}, at::kLong)}, 1);
    in.cache = &cache;
    EXPECT_TRUE(all_close(m->forward(in).select(1, 0), full.select(1, t), 1e-5, 1e-4)) << "token " << t;
  }
}

TEST(LayerReplication, MergingIntoSharedWeightsIsRefused) {
  auto m = load();
  auto want = golden_expected(kCase);
  EXPECT_NE(error_of([&] { m->merge_adapter(); }).find("replicated"), std::string::npos);
  EXPECT_NE(error_of([&] { m->merge_and_unload(); }).find("replicated"), std::string::npos);
  at::NoGradGuard g;
  EXPECT_CLOSE(m->forward({golden_ids(kCase)}), want.at("logits"));  // nothing was changed
  // unload keeps the replicated stack (as PEFT)
  auto plain = m->unload();
  EXPECT_EQ(plain->config().num_layers, 3);
  EXPECT_CLOSE(plain->forward({golden_ids(kCase)}), want.at("logits_disabled"));
}

TEST(LayerReplication, RefusalsAndRollback) {
  auto cfg = AdapterConfig::load(golden_case(kCase) + "/adapter");
  // OPT keeps its layers at model.decoder.layers: PEFT cannot replicate them (its error: case.json)
  const std::string e = error_of([&] { PeftModel(load_model(golden_model("tiny-opt")), cfg); });
  EXPECT_NE(e.find("could not locate the layers"), std::string::npos) << e;
  const std::string up = nlohmann::json::parse(read_file(golden_case(kCase) + "/case.json"))["opt_error"];
  EXPECT_NE(up.find("Could not locate the layers attribute"), std::string::npos);
  // a range outside the model
  auto with_map = [&](const char * map) {
    return error_of([&] {
      auto bad = cfg;
      bad.set_field("layer_replication", nlohmann::json::parse(map));
      PeftModel(load_model(golden_model("tiny-llama")), bad);
    });
  };
  EXPECT_NE(with_map("[[0, 3]]").find("not within"), std::string::npos);
  EXPECT_NE(with_map("[[1, 1]]").find("not within"), std::string::npos);
  EXPECT_NE(with_map("[[1]]").find("[start, end] pairs"), std::string::npos);
  EXPECT_NE(with_map("{\"a\": 1}").find("[start, end] pairs"), std::string::npos);
  // a second replication, or a replication after another adapter
  auto m = load();
  EXPECT_NE(error_of([&] { m->add_adapter("again", cfg); }).find("replicated already"), std::string::npos);
  auto plain_cfg = cfg;
  plain_cfg.set_field("layer_replication", nullptr);
  m->add_adapter("more", plain_cfg);  // without replication: adapts the replicated stack
  EXPECT_TRUE(std::dynamic_pointer_cast<TunerLayer>(get_submodule(m->model_ptr(), "model.layers.2.mlp.down_proj"))->has_adapter("more"));
  PeftModel other(load_model(golden_model("tiny-llama")), plain_cfg, "first");
  EXPECT_NE(error_of([&] { other.add_adapter("second", cfg); }).find("first adapter"), std::string::npos);
  // a failed load puts the model as it was given back
  const std::string dir = temp_dir("replication-bad") + "/adapter";
  std::filesystem::create_directories(dir);
  write_file_atomic(dir + "/adapter_config.json", read_file(golden_case(kCase) + "/adapter/adapter_config.json"));
  auto tensors = safetensors_load(golden_case(kCase) + "/adapter/adapter_model.safetensors");
  tensors.erase(tensors.begin());
  safetensors_save(dir + "/adapter_model.safetensors", tensors);
  PeftModel pm(load_model(golden_model("tiny-llama")));
  EXPECT_NE(error_of([&] { pm.load_adapter(dir, "default"); }).find("missing adapter tensors"), std::string::npos);
  EXPECT_EQ(pm.base_model().config().num_layers, 2);
  pm.load_adapter(golden_case(kCase) + "/adapter", "default");  // and can replicate then
  EXPECT_EQ(pm.base_model().config().num_layers, 3);
}

TEST(LayerReplication, CopiesKeepTheirLayersKind) {
  // Gemma 2: layer 0 slides (window 4), layer 1 attends globally. [[0, 2], [1, 2]] gives 0 1 1: the copy
  // of layer 1 at position 2 attends globally (transformers' copied layer keeps its attention type). The
  // same model written out layer by layer, with those layer_types, computes the same logits.
  auto base = load_model(golden_model("tiny-gemma2"));
  auto rep = replicate_layers(base, {{0, 2}, {1, 2}});
  ASSERT_EQ(rep->config().num_layers, 3);
  std::map<std::string, at::Tensor> sd;
  for (const auto & p : rep->named_parameters(true)) sd[p.key()] = p.value().detach().clone();
  sd.erase("lm_head.weight");  // tied
  auto cfg = nlohmann::json::parse(read_file(golden_model("tiny-gemma2") + "/config.json"));
  cfg["num_hidden_layers"] = 3;
  auto write = [&](const nlohmann::json & layer_types) {
    const std::string dir = temp_dir("gemma-unrolled");
    auto c = cfg;
    c["layer_types"] = layer_types;
    write_file_atomic(dir + "/config.json", c.dump());
    safetensors_save(dir + "/model.safetensors", sd);
    return load_model(dir);
  };
  const at::Tensor ids = golden_ids("arch_gemma2");
  ASSERT_GT(ids.size(1), 4);
  at::NoGradGuard g;
  const at::Tensor got = rep->forward({ids});
  EXPECT_TRUE(at::allclose(got, write({"sliding_attention", "full_attention", "full_attention"})->forward({ids}), 1e-5, 1e-5));
  // by position, the third layer would slide: another model, so the test can tell
  EXPECT_FALSE(at::allclose(got, write({"sliding_attention", "full_attention", "sliding_attention"})->forward({ids}), 1e-3, 1e-3));
}

TEST(LayerReplication, TrainsEachPositionApart) {
  auto cfg = AdapterConfig::load(golden_case(kCase) + "/adapter");
  cfg.set_field("inference_mode", false);
  PeftModel m(load_model(golden_model("tiny-llama")), cfg);
  const at::Tensor ids = golden_ids(kCase);
  at::Tensor logits = m.forward({ids});
  at::Tensor loss = at::cross_entropy_loss(logits.narrow(1, 0, ids.size(1) - 1).reshape({-1, logits.size(-1)}),
                                           ids.narrow(1, 1, ids.size(1) - 1).reshape({-1}));
  loss.backward();
  auto grad_of = [&](const std::string & path) {
    auto t = std::dynamic_pointer_cast<TunerLayer>(get_submodule(m.model_ptr(), path));
    for (const auto & p : t->adapter_parameters("default")) {
      if (p.first.find("lora_B") != std::string::npos) return p.second.grad();
    }
    return at::Tensor();
  };
  const at::Tensor g1 = grad_of("model.layers.1.self_attn.v_proj"), g2 = grad_of("model.layers.2.self_attn.v_proj");
  ASSERT_TRUE(g1.defined() && g2.defined());
  EXPECT_GT(g1.abs().max().item<double>(), 0);
  EXPECT_FALSE(at::allclose(g1, g2));  // the same base weight, different positions: different gradients
}

TEST(LayerReplication, Cli) {
  auto want = golden_expected(kCase);
  const std::string out = temp_dir("cli-rep") + "/logits.safetensors";
  const std::string base = "forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case(kCase) +
                           "/input_ids.json --out " + out + " --adapter " + golden_case(kCase) + "/adapter";
  for (const char * flags : {"", " --compile"}) {
    std::string log;
    ASSERT_EQ(run_cli(base + flags, &log), 0) << log;
    EXPECT_CLOSE(safetensors_load(out).at("logits"), want.at("logits")) << flags;
  }
  std::string log;
  EXPECT_NE(run_cli("merge --model " + golden_model("tiny-llama") + " --adapter " + golden_case(kCase) + "/adapter --out " +
                        temp_dir("cli-rep-merge") + "/m",
                    &log),
            0);
  EXPECT_NE(log.find("replicated"), std::string::npos) << log;
}

TEST(LayerReplication, GenerateCliAndServe) {
  // the bundled kjv-llama (4 layers) replicated to 6: peft generate's KV cache follows the replicated model
  // (compiled with the cache = without it); peft serve refuses the folder (it would change every row's base)
  const std::string kjv = std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama";
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"q_proj", "v_proj"}},
                                       {"init_lora_weights", false}, {"layer_replication", {{0, 3}, {1, 4}}}},
                                      "cfg");
  const std::string dir = temp_dir("rep-kjv") + "/adapter";
  PeftModel(load_model(kjv), cfg).save_pretrained(dir);
  std::string texts[2];
  const char * flags[2] = {" --compile", " --no-cache"};
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(run_cli("generate --model " + kjv + " --prompt 'And God said' --prompt 'In the' --max-new-tokens 10 --adapter " +
                          dir + flags[i],
                      &texts[i]),
              0)
        << texts[i];
  }
  EXPECT_EQ(texts[0], texts[1]);
  const std::string e = error_of([&] { serve::Engine::check_servable(dir); });
  EXPECT_NE(e.find("layer_replication"), std::string::npos) << e;
  EXPECT_EQ(error_of([&] { serve::Engine::check_servable(golden_case("lora") + "/adapter"); }), "");
}

}  // namespace
