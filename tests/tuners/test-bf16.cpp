// bfloat16 base weights with float32 adapters (issue 23): upstream PEFT on the same bfloat16 base (gen_bf16.py's
// cases) within bfloat16's tolerance, eager and compiled; every tuner's adapter stays float32 and trains on a
// bfloat16 base; the CLI's --dtype (train, generate and serve with its adapter, info, merge; auto from config.json).
// float16 weights (the Linear weights only, computed in float32): equal to the float32 model of the same rounded
// weights, eager and compiled, adapters and their gradients too; every method trains on them.
#include <fstream>

#include "peft/compile/compile.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/nn/layers.h"
#include "peft/peft-model.h"
#include "peft/train/loss.h"
#include "peft/train/trainer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

// bfloat16 keeps 8 bits of mantissa: one rounding is 2^-9 relative. Logits of the tiny model (|x| ~ 1) go through
// about twenty bfloat16 roundings whose order differs between PyTorch's kernels and ours.
constexpr double kAtol = 3e-2, kRtol = 3e-2;

::testing::AssertionResult bf16_close(const at::Tensor & got, const at::Tensor & want, double atol = kAtol,
                                      double rtol = kRtol) {
  return all_close(got.to(at::kFloat), want.to(at::kFloat), atol, rtol);
}

std::shared_ptr<PeftModel> bf16_model(const std::string & c, bool trainable = false) {
  return PeftModel::from_pretrained(load_model(golden_model("tiny-llama"), at::kBFloat16), golden_case(c) + "/adapter",
                                    "default", trainable);
}

void expect_float32_adapter(const PeftModel & m) {
  for (const auto & kv : m.adapter_state_dict("default")) {
    EXPECT_EQ(kv.second.scalar_type(), at::kFloat) << kv.first;
  }
}

TEST(Bf16Golden, LoraForwardEagerAndCompiled) {
  for (const char * c : {"bf16_lora", "bf16_dora"}) {
    SCOPED_TRACE(c);
    auto want = golden_expected(c);
    at::Tensor ids = golden_ids(c);
    auto m = bf16_model(c);
    expect_float32_adapter(*m);
    auto cm = compile(*m);
    at::NoGradGuard g;
    const at::Tensor eager = m->forward({ids});
    EXPECT_EQ(eager.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(bf16_close(eager, want.at("logits")));
    const at::Tensor compiled = cm.forward({ids});
    EXPECT_EQ(compiled.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(bf16_close(compiled, want.at("logits")));
    EXPECT_TRUE(bf16_close(compiled, eager, 1e-2, 1e-2));  // compiled equals eager up to a rounding or two
    {
      auto d = m->disable_adapter();
      EXPECT_TRUE(bf16_close(m->forward({ids}), want.at("logits_disabled")));
    }
    m->merge_adapter();
    EXPECT_TRUE(bf16_close(m->forward({ids}), want.at("logits_merged")));
    m->unmerge_adapter();
    EXPECT_TRUE(bf16_close(m->forward({ids}), want.at("logits_unmerged")));
    auto plain = m->merge_and_unload();
    ForwardInput in;
    in.input_ids = ids;
    EXPECT_TRUE(bf16_close(plain->forward(in), want.at("logits_merge_and_unload")));
  }
}

TEST(Bf16Golden, LoraLossAndGradientsEagerAndCompiled) {
  const std::string c = "bf16_lora";
  auto want = golden_expected(c);
  at::Tensor ids = golden_ids(c);
  for (bool compiled : {false, true}) {
    SCOPED_TRACE(compiled ? "compiled" : "eager");
    auto m = bf16_model(c, /*trainable=*/true);
    m->train();
    auto cm = compile(*m);
    at::Tensor logits = compiled ? cm.forward({ids}) : m->forward({ids});
    at::Tensor loss = causal_lm_loss(logits, ids);
    EXPECT_EQ(loss.scalar_type(), at::kFloat);
    EXPECT_NEAR(loss.item<double>(), want.at("loss").item<double>(), 1e-2);
    loss.backward();
    int n = 0;
    for (const auto & kv : m->adapter_state_dict("default")) {
      const at::Tensor & g = kv.second.grad();
      ASSERT_TRUE(g.defined()) << kv.first;
      EXPECT_EQ(g.scalar_type(), at::kFloat) << kv.first;
      // gradients through bfloat16 activations: within 3x the distance of upstream's bfloat16 gradients to the
      // float32 ones (its gradients on the float32 base), from both (measured: at most 2.3x)
      const at::Tensor & w = want.at("grad." + kv.first);
      const at::Tensor & w32 = want.at("grad_f32." + kv.first);
      const double gap = (w - w32).abs().max().item<double>();
      EXPECT_LE((g - w).abs().max().item<double>(), 3 * gap + 1e-6) << kv.first;
      EXPECT_LE((g - w32).abs().max().item<double>(), 3 * gap + 1e-6) << kv.first;
      ++n;
    }
    EXPECT_EQ(n, 2 * 7 * 2);  // A and B of 7 modules in 2 layers
  }
}

TEST(Bf16Golden, LoraAdamWStepsEagerAndCompiled) {
  const std::string c = "bf16_lora";
  auto want = golden_expected(c);
  auto opt = nlohmann::json::parse(read_file(golden_case(c) + "/case.json"))["optimizer"];
  at::Tensor ids = golden_ids(c);
  for (bool compiled : {false, true}) {
    SCOPED_TRACE(compiled ? "compiled" : "eager");
    auto m = bf16_model(c, /*trainable=*/true);
    m->train();
    auto cm = compile(*m);
    TrainOptions o;
    o.batch_size = ids.size(0);
    o.steps = want.at("losses").numel();
    o.lr = opt["lr"].get<double>();
    o.beta1 = opt["betas"][0].get<double>();
    o.beta2 = opt["betas"][1].get<double>();
    o.eps = opt["eps"].get<double>();
    o.weight_decay = opt["weight_decay"].get<double>();
    o.shuffle = false;
    Trainer t([&](const ForwardInput & in) { return compiled ? cm.forward(in) : m->forward(in); },
              m->trainable_parameters(), o);
    for (int64_t s = 0; s < o.steps; ++s) {
      const double w = want.at("losses")[s].item<double>();
      EXPECT_NEAR(t.step(ids).loss, w, 1e-2) << "step " << s + 1;
    }
    expect_float32_adapter(*m);  // the optimizer kept them float32
  }
}

// ---- float16 weights ----

// the float32 model whose Linear weights went through float16 (what a float16 checkpoint holds), and the same
// model loaded with float16 Linear weights
std::shared_ptr<CausalLM> rounded_f32(const std::string & model) {
  auto m = load_model(model);
  at::NoGradGuard g;
  const at::Tensor embedding = m->input_embedding()->parameters(true).front();
  for (const auto & kv : named_modules(m)) {
    auto * l = dynamic_cast<Linear *>(kv.second.get());
    if (l && !l->weight.is_same(embedding)) l->weight.copy_(l->weight.to(at::kHalf).to(at::kFloat));  // (a tied head stays)
  }
  return m;
}

TEST(F16Weights, EqualTheFloat32ModelOfTheRoundedWeights) {
  for (const char * name : {"tiny-llama", "tiny-opt", "tiny-gemma2"}) {
    SCOPED_TRACE(name);
    auto half = load_model(golden_model(name), at::kHalf);
    auto ref = rounded_f32(golden_model(name));
    size_t n16 = 0;
    for (const auto & kv : named_modules(half)) {
      auto * l = dynamic_cast<Linear *>(kv.second.get());
      if (!l) continue;
      const bool tied = l->weight.is_same(half->input_embedding()->parameters(true).front());
      EXPECT_EQ(l->weight.scalar_type(), tied ? at::kFloat : at::kHalf) << kv.first;
      n16 += !tied;
    }
    EXPECT_GT(n16, 0u);
    EXPECT_EQ(half->options().dtype(), at::kFloat);  // activations, caches and norms: float32
    const at::Tensor ids = at::randint(half->config().vocab_size, {2, 9}, at::kLong);
    at::Tensor want;
    {
      at::NoGradGuard g;
      want = ref->forward({ids});
      const at::Tensor got = half->forward({ids});
      EXPECT_EQ(got.scalar_type(), at::kFloat);
      EXPECT_TRUE(all_close(got, want, 1e-5, 1e-4));
      auto c = compile(half);
      EXPECT_TRUE(all_close(c.forward({ids}), got, 1e-5, 1e-4));
    }
    // a LoRA on each trains as on the float32 one: the same loss and gradients, eager and compiled
    auto cfg = AdapterConfig::from_json(
        {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"init_lora_weights", false}, {"target_modules", "all-linear"}},
        "config");
    at::manual_seed(5);
    PeftModel a(ref, cfg);
    at::manual_seed(5);
    PeftModel b(half, cfg);
    a.train();
    b.train();
    causal_lm_loss(a.forward({ids}), ids).backward();
    auto cb = compile(b);
    for (bool compiled : {false, true}) {
      for (auto p : b.trainable_parameters()) p.mutable_grad() = at::Tensor();
      at::Tensor loss = causal_lm_loss(compiled ? cb.forward({ids}) : b.forward({ids}), ids);
      loss.backward();
      const auto pa = a.trainable_parameters(), pb = b.trainable_parameters();
      ASSERT_EQ(pa.size(), pb.size());
      for (size_t i = 0; i < pa.size(); ++i) {
        EXPECT_EQ(pb[i].scalar_type(), at::kFloat);
        ASSERT_TRUE(pb[i].grad().defined()) << i;
        EXPECT_TRUE(all_close(pb[i].grad(), pa[i].grad(), 1e-5, 1e-3)) << (compiled ? "compiled " : "eager ") << i;
      }
    }
    // merged into the float16 weights and unloaded: the float32 merge, rounded once more
    at::NoGradGuard g;
    b.train(false);
    a.train(false);
    const at::Tensor merged = b.merge_and_unload()->forward({ids});
    EXPECT_TRUE(all_close(merged, a.merge_and_unload()->forward({ids}), 2e-2, 2e-2));
  }
}

// Every method's adapter on a bfloat16 base and on float16 weights: float32 tensors, a forward close to its float32
// golden logits, and a training step whose gradients are float32 and finite.
TEST(Bf16Tuners, EveryMethodIsFloat32AndTrains) {
  for (const at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
  SCOPED_TRACE(c10::toString(dtype));
  for (const char * c : {"lora", "dora", "lora_embedding", "lora_modules_to_save", "adalora", "boft", "ia3", "ln_tuning",
                         "loha", "lokr", "oft", "vera", "hra", "fourierft", "miss", "delora", "randlora", "road", "trainable_tokens",
                         "shira", "vblora", "lora_tokens", "prompt_tuning", "prefix_tuning"}) {
    SCOPED_TRACE(c);
    if (!exists(golden_case(c) + "/adapter")) continue;
    std::string model = nlohmann::json::parse(read_file(golden_case(c) + "/case.json"))["model"];
    if (model != "models/tiny-llama" && model != "tiny-llama") continue;
    auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama"), dtype), golden_case(c) + "/adapter",
                                        "default", /*trainable=*/true);
    for (const auto & p : m->trainable_parameters()) EXPECT_EQ(p.scalar_type(), at::kFloat);
    at::Tensor ids = golden_ids(c);
    {
      at::NoGradGuard g;
      m->train(false);
      const at::Tensor got = m->forward({ids});
      EXPECT_TRUE(bf16_close(got, golden_expected(c).at("logits"), 1e-1, 1e-1));
    }
    m->train();
    at::Tensor loss = causal_lm_loss(m->forward({ids}), ids);
    loss.backward();
    for (const auto & p : m->trainable_parameters()) {
      if (!p.grad().defined()) continue;  // (a tensor this input does not reach)
      EXPECT_EQ(p.grad().scalar_type(), at::kFloat);
      EXPECT_TRUE(p.grad().isfinite().all().item<bool>());
    }
  }
  }
}

// ---- the CLI ----

std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }

std::string safetensors_dtypes(const std::string & path) {
  std::set<std::string> d;
  for (const auto & kv : safetensors_load(path)) d.insert(c10::toString(kv.second.scalar_type()));
  std::string s;
  for (const auto & x : d) s += (s.empty() ? "" : ",") + x;
  return s;
}

TEST(Bf16Cli, TrainSavesAFloat32AdapterThatGenerateUses) {
  const std::string dir = temp_dir("bf16-train");
  const std::string data = make_text(dir);
  std::string out;
  ASSERT_EQ(run_cli("train --model " + kjv() + " --dtype bf16 --method lora --r 4 --target-modules q_proj,v_proj " +
                        "--data " + data + " --max-length 32 --batch-size 2 --steps 3 --lr 1e-3 --no-plot --no-progress " +
                        "--threads 1 --log-file " + dir + "/log.jsonl --out " + dir + "/adapter",
                    &out),
            0)
      << out;
  EXPECT_EQ(safetensors_dtypes(dir + "/adapter/adapter_model.safetensors"), "Float");
  auto log = read_jsonl(dir + "/log.jsonl");
  ASSERT_GE(log.size(), 3u);
  for (const auto & l : log) {
    if (l.contains("loss")) EXPECT_TRUE(std::isfinite(l["loss"].get<double>())) << l.dump();
  }
  // the adapter works on the bfloat16 base, as generate loads it
  ASSERT_EQ(run_cli("generate --model " + kjv() + " --dtype bf16 --adapter " + dir + "/adapter --prompt 'In the' " +
                        "--max-new-tokens 4 --threads 1",
                    &out),
            0)
      << out;
  const std::string generated = out;
  // `peft serve --dtype bf16` with it answers a request with the text generate gave (greedy, the same prompt)
  const std::string req = nlohmann::json({{"model", "ft"}, {"prompt", "In the"}, {"max_tokens", 4}, {"temperature", 0}}).dump();
  const std::string serve_log = dir + "/serve.log";
  ASSERT_EQ(run_command("timeout 120 " + std::string(PEFT_CLI) + " serve --model " + kjv() + " --dtype bf16 --adapter " +
                            dir + "/adapter=ft --port 0 --threads 1 2>" + serve_log + " & pid=$!; port=; " +
                            "for i in $(seq 1 600); do port=$(sed -n 's/.*on http:\\/\\/127\\.0\\.0\\.1:\\([0-9]*\\).*/\\1/p' " +
                            serve_log + " | head -n 1); [ -n \"$port\" ] && break; sleep 0.1; done; " +
                            "curl -s -S --max-time 60 http://127.0.0.1:$port/v1/completions -H 'Content-Type: application/json' -d '" +
                            req + "'; rc=$?; kill $pid; wait $pid; exit $rc",
                        &out),
            0)
      << out << read_file(serve_log);
  auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  const std::string text = j["choices"][0]["text"];
  EXPECT_FALSE(text.empty());
  EXPECT_NE(generated.find("In the" + text), std::string::npos) << generated << " | served: " << text;
  // and it is the adapter the library computes with: the same logits through the API
  auto m = PeftModel::from_pretrained(load_model(kjv(), at::kBFloat16), dir + "/adapter");
  for (const auto & kv : m->adapter_state_dict("default")) EXPECT_EQ(kv.second.scalar_type(), at::kFloat) << kv.first;
}

TEST(Bf16Cli, DtypeChoices) {
  std::string out;
  // float16: the Linear weights as float16, the rest float32
  ASSERT_EQ(run_cli("info --model " + golden_model("tiny-llama") + " --dtype f16", &out), 0) << out;
  EXPECT_NE(out.find("loaded as float16"), std::string::npos) << out;
  EXPECT_NE(out.find("float16"), std::string::npos) << out;
  EXPECT_NE(run_cli("info --model " + golden_model("tiny-llama") + " --dtype float64", &out), 0);
  EXPECT_NE(out.find("--dtype must be"), std::string::npos) << out;
  // auto: config.json's torch_dtype (kjv-llama is saved bfloat16, tiny-llama float32)
  ASSERT_EQ(run_cli("info --model " + kjv() + " --dtype auto", &out), 0) << out;
  EXPECT_NE(out.find("loaded as bfloat16"), std::string::npos) << out;
  ASSERT_EQ(run_cli("info --model " + golden_model("tiny-llama") + " --dtype auto", &out), 0) << out;
  EXPECT_NE(out.find("loaded as float32"), std::string::npos) << out;
}

// merge --dtype f16: merged in float32, written float16 (what transformers reads as torch_dtype float16)
TEST(Bf16Cli, MergeWritesFloat16) {
  const std::string dir = temp_dir("bf16-merge");
  std::string out;
  ASSERT_EQ(run_cli("merge --model " + golden_model("tiny-llama") + " --adapter " + golden_case("lora") + "/adapter" +
                        " --dtype f16 --out " + dir + "/merged",
                    &out),
            0)
      << out;
  EXPECT_EQ(read_json_file(dir + "/merged/config.json")["torch_dtype"], "float16");
  EXPECT_EQ(safetensors_dtypes(dir + "/merged/model.safetensors"), "Half");
  // it loads (float32, and --dtype auto: float16 Linear weights) and matches the merged golden logits
  auto merged = load_model(dir + "/merged");
  at::NoGradGuard g;
  ForwardInput in;
  in.input_ids = golden_ids("lora");
  EXPECT_TRUE(all_close(merged->forward(in), golden_expected("lora").at("logits_merge_and_unload"), 1e-2, 1e-2));
  EXPECT_TRUE(all_close(load_model(dir + "/merged", at::kHalf)->forward(in), merged->forward(in), 1e-5, 1e-4));
  ASSERT_EQ(run_cli("info --model " + dir + "/merged --dtype auto", &out), 0) << out;
  EXPECT_NE(out.find("loaded as float16"), std::string::npos) << out;
}

}  // namespace
