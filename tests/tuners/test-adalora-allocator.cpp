// AdaLoRA's rank allocator reproduces upstream PEFT's run step for step (golden case adalora_allocator:
// 14 AdamW steps through warmup, the budget schedule with masks every deltaT steps, the final mask and
// the fixed-mask phase), eager and through the compiled model; what it saves is what upstream saved, and
// both folders load back to the trained model.
#include <torch/optim/adamw.h>

#include <cstdio>
#include <optional>

#include "peft/compile/compile.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "peft/tuners/adalora.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

const char * kCase = "adalora_allocator";

// Tolerances. Both runs are float32 on CPU and differ by rounding only: measured over the 14 steps (the
// test prints it), loss <= 1e-6 (of ~5), E <= 5e-7 (of ~0.1), scores <= 2e-6 relative, eager and
// compiled alike. The bounds leave a 10-50x margin for other BLAS builds and thread counts, and stay far
// below what a wrong step would give (one AdamW step moves an entry by ~lr = 1e-2; a wrong mask zeroes
// an entry of ~0.05).
constexpr double kLossAtol = 1e-5, kLossRtol = 1e-5;
constexpr double kEAtol = 1e-5, kERtol = 1e-3;
// Scores are products of EMAs of |p * grad| (2e-9..6e-6 here): compared relatively. The masks must agree
// exactly; case.json's threshold_margins (>= 0.86% relative) say how far apart the scores around each
// threshold are, thousands of times what rounding moves them.
constexpr double kScoreRtol = 1e-3;

struct Golden {
  nlohmann::json c = nlohmann::json::parse(read_file(golden_case(kCase) + "/case.json"));
  std::map<std::string, at::Tensor> want = golden_expected(kCase);
  at::Tensor ids = golden_ids(kCase);
};

std::shared_ptr<PeftModel> load_trainable(const std::string & folder) {
  return PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case(kCase) + "/" + folder, "default",
                                    true);
}

double max_abs_diff(const at::Tensor & a, const at::Tensor & b) {
  return (a.detach().to(at::kDouble) - b.detach().to(at::kDouble)).abs().max().item<double>();
}

/// Upstream's loop on the model, eager or compiled; checks every step and returns the worst differences.
struct Diffs {
  double loss = 0, task_loss = 0, e = 0, score_rel = 0;
};

Diffs run_golden_loop(PeftModel & m, AdaLoraAllocator & alloc, bool compiled, const Golden & g) {
  const auto & o = g.c["optimizer"];
  torch::optim::AdamW opt(m.trainable_parameters(),
                          torch::optim::AdamWOptions(o["lr"].get<double>())
                              .betas({o["betas"][0].get<double>(), o["betas"][1].get<double>()})
                              .eps(o["eps"].get<double>())
                              .weight_decay(o["weight_decay"].get<double>()));
  std::optional<CompiledModel> c;
  if (compiled) c = compile(m);
  const auto layers = g.c["layers"].get<std::vector<std::string>>();
  std::map<std::string, at::Tensor> E;
  for (const auto & l : m.tuner_layers()) E[l.first] = std::dynamic_pointer_cast<AdaLoraLinear>(l.second)->lora_E("default");
  const at::Tensor mask_steps = g.want.at("mask_steps");
  int64_t mask_index = 0;
  Diffs d;
  m.train();
  for (int64_t step = 0; step < g.c["steps"].get<int64_t>(); ++step) {
    SCOPED_TRACE(str("step ", step, " (", g.c["actions"][step].get<std::string>(), ")"));
    at::Tensor logits = compiled ? c->forward({g.ids}) : m.forward({g.ids});
    at::Tensor task = causal_lm_loss(logits, g.ids);
    at::Tensor loss = task + alloc.orthogonal_regularization();
    const double want_loss = g.want.at("losses")[step].item<double>(), want_task = g.want.at("task_losses")[step].item<double>();
    EXPECT_NEAR(loss.item<double>(), want_loss, kLossAtol + kLossRtol * std::abs(want_loss));
    EXPECT_NEAR(task.item<double>(), want_task, kLossAtol + kLossRtol * std::abs(want_task));
    d.loss = std::max(d.loss, std::abs(loss.item<double>() - want_loss));
    d.task_loss = std::max(d.task_loss, std::abs(task.item<double>() - want_task));
    loss.backward();
    opt.step();
    if (compiled) {
      // fold the stepped, not yet masked adapters into the no-grad graph's weight copies, so that the
      // check after the allocation below sees whether masking E in place alone makes them stale
      at::NoGradGuard ng;
      c->forward({g.ids});
    }
    alloc.update_and_allocate(step);
    EXPECT_EQ(alloc.budget(), g.want.at("budgets")[step].item<int64_t>());
    for (const auto & l : layers) {
      const at::Tensor want_e = g.want.at("E." + l)[step];
      const at::Tensor got_e = E.at(l).detach().view(-1);
      EXPECT_TRUE(at::equal(got_e == 0, want_e == 0)) << l << ": masked entries " << (got_e == 0) << " vs " << (want_e == 0);
      EXPECT_TRUE(all_close(got_e, want_e, kEAtol, kERtol)) << l;
      d.e = std::max(d.e, max_abs_diff(got_e, want_e));
    }
    if (mask_index < mask_steps.size(0) && mask_steps[mask_index].item<int64_t>() == step) {
      const double want_thr = g.want.at("thresholds")[mask_index].item<double>();
      EXPECT_NEAR(alloc.threshold(), want_thr, kScoreRtol * want_thr);
      for (const auto & l : layers) {
        const at::Tensor want_s = g.want.at("score." + l)[mask_index];
        EXPECT_TRUE(all_close(alloc.scores().at(l), want_s, 0, kScoreRtol)) << l;
        if (want_s.numel() > 0) {
          d.score_rel = std::max(d.score_rel, ((alloc.scores().at(l).to(at::kDouble) - want_s) / want_s).abs().max().item<double>());
        }
      }
      ++mask_index;
    }
    if (compiled) {
      // a no-grad call folds the adapters into copies of the base weights: it must see E masked in place
      // (nothing else changed since the call above)
      at::NoGradGuard ng;
      EXPECT_TRUE(all_close(c->forward({g.ids}), m.forward({g.ids}), 1e-5, 1e-5));
    }
    opt.zero_grad();
  }
  EXPECT_EQ(mask_index, mask_steps.size(0));
  if (compiled) {
    // one graph with autograd, one without; masking and optimizer steps are read live (no recompiles)
    EXPECT_EQ(c->stats().compiles, 2u) << c->explain();
  }
  return d;
}

std::map<std::string, std::vector<bool>> rank_pattern_of(const nlohmann::json & j) {
  std::map<std::string, std::vector<bool>> out;
  for (auto it = j.begin(); it != j.end(); ++it) out[it.key()] = it.value().get<std::vector<bool>>();
  return out;
}

class AdaLoraAllocatorGolden : public ::testing::TestWithParam<bool> {};

TEST_P(AdaLoraAllocatorGolden, MatchesUpstreamStepForStepAndSavesItsRankPattern) {
  const bool compiled = GetParam();
  Golden g;
  auto m = load_trainable("adapter_init");
  AdaLoraAllocator alloc(*m);
  EXPECT_EQ(alloc.initial_budget(), g.c["initial_budget"].get<int64_t>());
  EXPECT_EQ(alloc.target_budget(), g.c["target_budget"].get<int64_t>());
  Diffs d = run_golden_loop(*m, alloc, compiled, g);
  std::printf("[adalora_allocator %s] max |diff|: loss %.3g, task loss %.3g, E %.3g; scores max rel diff %.3g\n",
              compiled ? "compiled" : "eager", d.loss, d.task_loss, d.e, d.score_rel);

  // the final mask, as upstream stores it: in the allocator and in the config that save_pretrained writes
  const auto want_pattern = rank_pattern_of(g.c["rank_pattern_saved"]);
  EXPECT_EQ(alloc.rank_pattern(), want_pattern);
  EXPECT_EQ(rank_pattern_of(m->adapter_config("default").field("rank_pattern")), want_pattern);
  m->train(false);
  {
    at::NoGradGuard ng;
    EXPECT_CLOSE(m->forward({g.ids}), g.want.at("logits_final"));
  }

  // saved: the config's rank_pattern and the kept rows only, equal to upstream's folder
  const std::string dir = temp_dir("adalora-alloc");
  m->save_pretrained(dir);
  auto saved_cfg = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  EXPECT_EQ(saved_cfg["rank_pattern"], g.c["rank_pattern_saved"]);
  // the base as loaded here (upstream's was built in memory: null there)
  EXPECT_TRUE(saved_cfg["base_model_name_or_path"].is_string());
  saved_cfg["base_model_name_or_path"] = nullptr;
  // every other field as upstream wrote it too (the run started from upstream's adapter_init config)
  EXPECT_EQ(saved_cfg, nlohmann::json::parse(read_file(golden_case(kCase) + "/adapter_final/adapter_config.json")));
  auto ours = safetensors_load(dir + "/adapter_model.safetensors");
  auto upstream = safetensors_load(golden_case(kCase) + "/adapter_final/adapter_model.safetensors");
  ASSERT_EQ(ours.size(), upstream.size());
  for (const auto & kv : upstream) {
    ASSERT_TRUE(ours.count(kv.first)) << kv.first;
    EXPECT_TRUE(all_close(ours.at(kv.first), kv.second, kEAtol, kERtol)) << kv.first;  // shapes included
  }
  // both folders load back (truncated ranks, one module of rank 0) to the trained model
  for (const std::string & folder : {dir, golden_case(kCase) + "/adapter_final"}) {
    auto back = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), folder);
    at::NoGradGuard ng;
    EXPECT_CLOSE(back->forward({g.ids}), g.want.at("logits_final")) << folder;
    EXPECT_CLOSE(back->forward({g.ids}), g.want.at("logits_reloaded")) << folder;
  }
}

INSTANTIATE_TEST_SUITE_P(EagerAndCompiled, AdaLoraAllocatorGolden, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool> & i) { return i.param ? "Compiled" : "Eager"; });

TEST(AdaLoraAllocator, ScheduleIsUpstreams) {
  Golden g;
  auto m = load_trainable("adapter_init");
  AdaLoraAllocator alloc(*m);
  for (int64_t s = 0; s < g.c["steps"].get<int64_t>(); ++s) {
    const auto b = alloc.budget_schedule(s);
    EXPECT_EQ(b.first, g.want.at("budgets")[s].item<int64_t>()) << s;
    const std::string action = g.c["actions"][s];
    if (action == "warmup" || action == "update") EXPECT_FALSE(b.second) << s;
    if (action == "mask") EXPECT_TRUE(b.second) << s;
  }
}

TEST(AdaLoraAllocator, RegularisationIsUpstreamsAndDifferentiable) {
  Golden g;
  auto m = load_trainable("adapter_init");
  AdaLoraAllocator alloc(*m);
  at::Tensor r = alloc.orthogonal_regularization();
  const double want = g.want.at("losses")[0].item<double>() - g.want.at("task_losses")[0].item<double>();
  EXPECT_NEAR(r.item<double>(), want, 1e-5);
  r.backward();
  for (const auto & p : m->trainable_parameters()) {
    if (p.size(1) == 1) {
      EXPECT_FALSE(p.grad().defined());  // E does not enter the regularisation
    } else {
      ASSERT_TRUE(p.grad().defined());  // A and B do
      EXPECT_GT(p.grad().abs().sum().item<double>(), 0);
    }
  }
}

TEST(AdaLoraAllocator, RefusesMisuseByName) {
  auto frozen = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case(kCase) + "/adapter_init");
  EXPECT_NE(error_of([&] { AdaLoraAllocator a(*frozen); }).find("not trainable"), std::string::npos);
  auto lora = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("lora") + "/adapter", "default", true);
  EXPECT_NE(error_of([&] { AdaLoraAllocator a(*lora); }).find("not ADALORA"), std::string::npos);
  auto m = load_trainable("adapter_init");
  AdaLoraAllocator a(*m);
  // no backward yet: no gradients to read
  EXPECT_NE(error_of([&] { a.update_and_allocate(0); }).find("no gradient"), std::string::npos);
  // a step after the final mask, without any mask taken
  EXPECT_NE(error_of([&] { a.update_and_allocate(13); }).find("no mask"), std::string::npos);
  // target_r must leave something to prune
  auto cfg = m->adapter_config("default").fields;
  cfg["target_r"] = cfg["init_r"];
  cfg["inference_mode"] = false;
  auto same = std::make_shared<PeftModel>(load_model(golden_model("tiny-llama")), AdapterConfig::from_json(cfg, "cfg"));
  EXPECT_NE(error_of([&] { AdaLoraAllocator b(*same); }).find("target_r must be < init_r"), std::string::npos);
}

}  // namespace
