// Every method's golden adapter on an NF4 and an int8 base, eager and compiled, against the same adapter
// on the dequantized base (the two differ only in how the base product is summed: float32 rounding);
// QLoRA training reproduces upstream PEFT's 8-step AdamW run on bitsandbytes' NF4 base; merging into a
// quantized base quantizes again (PEFT's way) and reports the rounding; --dtype float32 writes it dequantized.
#include <cmath>
#include <optional>

#include "../tuners/golden-cases.h"
#include "peft/compile/compile.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/quant/quantized-linear.h"
#include "peft/ops/adapter-math.h"
#include "support.h"

using namespace peft;
using namespace peft::test;
using namespace peft::quant;

namespace {

struct QuantCase {
  GoldenCase golden;
  Format format;
};
std::string case_name(const ::testing::TestParamInfo<QuantCase> & i) {
  return i.param.golden.name + "_" + format_name(i.param.format);
}

// Adapters whose initialisation rewrites the base weight (PiSSA, OLoRA: the base keeps a residual) are left
// out of the comparison with the dequantized base: on a quantized base the residual is quantized again, as
// PEFT does, so the two bases differ by that rounding. They have their own test below.
bool rewrites_base(const GoldenCase & c) {
  return c.name == "lora_pissa" || c.name == "lora_olora" || c.name == "lora_pissa_niter";
}

std::vector<QuantCase> quant_cases() {
  std::vector<QuantCase> v;
  for (Format f : {Format::nf4, Format::int8}) {
    for (const auto & c : single_adapter_cases())
      if (!rewrites_base(c)) v.push_back({c, f});
  }
  return v;
}

std::shared_ptr<CausalLM> quantized_base(const std::string & model, Format f) {
  LoadOptions o;
  o.quantize.format = f;
  return load_model(golden_model(model), o);
}

// the same base with its quantized layers replaced by float Linears holding the dequantized weights
std::shared_ptr<CausalLM> dequantized_base(const std::string & model, Format f) {
  auto m = quantized_base(model, f);
  EXPECT_GT(dequantize_modules(m), 0);
  return m;
}

int count_quantized(const std::shared_ptr<torch::nn::Module> & root) {
  int n = 0;
  for (const auto & m : named_modules(root)) n += std::dynamic_pointer_cast<QuantizedLinear>(m.second) != nullptr;
  return n;
}

// float32 rounding of products over 32-48 terms, compounded through two layers
constexpr double kAtol = 2e-5, kRtol = 1e-4;

class OnQuantizedBase : public ::testing::TestWithParam<QuantCase> {
 protected:
  const GoldenCase & gc() const { return GetParam().golden; }
  std::shared_ptr<PeftModel> with_adapter(std::shared_ptr<CausalLM> base) {
    return PeftModel::from_pretrained(base, golden_case(gc().name) + "/adapter");
  }
  at::Tensor ids = golden_ids(GetParam().golden.name);
};

TEST_P(OnQuantizedBase, EqualsDequantizedBaseEagerAndCompiled) {
  auto q = with_adapter(quantized_base(gc().model, GetParam().format));
  auto d = with_adapter(dequantized_base(gc().model, GetParam().format));
  ASSERT_GT(count_quantized(q->base_model().shared_from_this()), 0);
  at::NoGradGuard g;
  at::Tensor want = d->forward({ids});
  EXPECT_TRUE(all_close(q->forward({ids}), want, kAtol, kRtol)) << "eager";
  auto c = compile(*q);
  EXPECT_TRUE(all_close(c.forward({ids}), want, kAtol, kRtol)) << "compiled";
  {
    auto off_q = q->disable_adapter();
    auto off_d = d->disable_adapter();
    at::Tensor base = d->forward({ids});
    EXPECT_TRUE(all_close(q->forward({ids}), base, kAtol, kRtol)) << "disabled, eager";
    EXPECT_TRUE(all_close(c.forward({ids}), base, kAtol, kRtol)) << "disabled, compiled";
  }
  EXPECT_TRUE(all_close(c.forward({ids}), want, kAtol, kRtol)) << "enabled again, compiled";
}

// the dequantized weights of every quantized layer, by path
std::map<std::string, at::Tensor> dense_weights(PeftModel & m) {
  std::map<std::string, at::Tensor> w;
  for (const auto & l : named_modules(m.base_model().shared_from_this())) {
    if (auto q = std::dynamic_pointer_cast<QuantizedLinear>(l.second)) w[l.first] = q->dense_weight();
  }
  return w;
}

TEST_P(OnQuantizedBase, MergeQuantizesAgainAndUnmergeComesBack) {
  auto q = with_adapter(quantized_base(gc().model, GetParam().format));
  auto d = with_adapter(dequantized_base(gc().model, GetParam().format));
  at::NoGradGuard g;
  auto c = compile(*q);
  c.forward({ids});
  const auto before = dense_weights(*q);
  q->merge_adapter();
  d->merge_adapter();
  const auto merge_err = requantization_error(q->base_model().shared_from_this());
  // PEFT's merge into a quantized base: the exact merge (as on the dequantized base) quantized again
  const auto merged = dense_weights(*q);
  for (const auto & l : named_modules(d->base_model().shared_from_this())) {
    auto it = merged.find(l.first);
    auto lin = std::dynamic_pointer_cast<Linear>(l.second);
    if (it == merged.end() || !lin) continue;
    at::Tensor requantized = GetParam().format == Format::int8
                                 ? dequantize_int8(quantize_int8(lin->weight))
                                 : dequantize_4bit(quantize_4bit(lin->weight, GetParam().format, 64, false));
    EXPECT_TRUE(at::equal(it->second, requantized)) << l.first;
  }
  EXPECT_TRUE(all_close(c.forward({ids}), q->forward({ids}), 1e-5, 1e-4)) << "merged: the compiled graph reads the new codes";
  q->unmerge_adapter();
  // unmerging undoes the merge and quantizes again: an additive delta comes back within the two roundings
  // that were reported; a multiplicative one (IA3's scale, DoRA's rescale, OFT's rotation) carries the first
  // rounding through its inverse, which can magnify it (by 1/|l| for IA3; a rotation, OFT's or HRA's, moves
  // a row's rounding into its other entries): a looser bound for those
  const auto unmerge_err = requantization_error(q->base_model().shared_from_this());
  const std::string n = gc().name;
  const bool additive = n.find("ia3") == std::string::npos && n.find("dora") == std::string::npos &&
                        n.find("oft") == std::string::npos && n.find("hra") == std::string::npos;
  const double bound = (merge_err.max_abs + unmerge_err.max_abs) * (additive ? 1.0 : 8.0) + 1e-6;
  // IA3 divides by its scale, and the golden adapters' small |l| magnify the rounding past any fixed
  // factor: its unmerge is checked to be exactly that division of the merged weight, quantized again.
  // RoAd likewise multiplies by R^-1, whose scales (alpha ~ N(1, 0.5) in the golden adapters) can be near 0:
  // its unmerge is checked to be exactly R^-1 times the merged weight, quantized again
  const bool ia3 = n.find("ia3") != std::string::npos;
  const bool road = n.rfind("road", 0) == 0;
  nlohmann::json road_cfg;
  if (road) road_cfg = nlohmann::json::parse(read_file(golden_case(n) + "/adapter/adapter_config.json"));
  std::map<std::string, at::Tensor> params;
  for (const auto & p : named_parameters(q->base_model())) params.emplace(p.first, p.second);
  auto requantize = [&](const at::Tensor & w) {
    return GetParam().format == Format::int8 ? dequantize_int8(quantize_int8(w))
                                             : dequantize_4bit(quantize_4bit(w, GetParam().format, 64, false));
  };
  int ia3_layers = 0, road_layers = 0;
  for (const auto & kv : dense_weights(*q)) {
    double diff = (kv.second - before.at(kv.first)).abs().max().item<double>();
    EXPECT_TRUE(std::isfinite(diff)) << kv.first;
    if (!ia3 && !road) {
      EXPECT_LE(diff, bound) << kv.first;
      continue;
    }
    const std::string suffix = ".base_layer";
    const std::string layer = kv.first.size() > suffix.size() && kv.first.compare(kv.first.size() - suffix.size(), suffix.size(), suffix) == 0
                                  ? kv.first.substr(0, kv.first.size() - suffix.size())
                                  : kv.first;
    if (road) {
      auto theta = params.find(layer + ".road_theta.default"), alpha = params.find(layer + ".road_alpha.default");
      if (theta == params.end()) {
        EXPECT_TRUE(at::equal(kv.second, before.at(kv.first))) << kv.first << ": not adapted, yet changed";
        continue;
      }
      ++road_layers;
      const std::string v = road_cfg["variant"].get<std::string>();
      const int64_t group = road_cfg["group_size"].get<int64_t>();
      const auto cols = math::road_cols(theta->second.detach().to(at::kFloat), alpha->second.detach().to(at::kFloat),
                                        std::stoll(v.substr(5)), group);
      const at::Tensor inv = at::linalg_inv(math::road_matrix(cols.first, cols.second, group));
      const at::Tensor want = requantize(at::mm(inv, merged.at(kv.first).to(at::kFloat)));
      EXPECT_TRUE(at::equal(kv.second, want)) << kv.first << ": max diff "
                                              << (kv.second - want).abs().max().item<double>();
      continue;
    }
    auto l = params.find(layer + ".ia3_l.default");
    if (l == params.end()) {
      EXPECT_TRUE(at::equal(kv.second, before.at(kv.first))) << kv.first << ": not adapted, yet changed";
      continue;
    }
    ++ia3_layers;
    const at::Tensor want = requantize(merged.at(kv.first).to(at::kFloat) / (l->second.detach() + 1e-8));
    EXPECT_TRUE(at::equal(kv.second, want)) << kv.first << ": max diff "
                                            << (kv.second - want).abs().max().item<double>();
  }
  if (ia3) EXPECT_GT(ia3_layers, 0);
  if (road) EXPECT_GT(road_layers, 0);
}

INSTANTIATE_TEST_SUITE_P(Methods, OnQuantizedBase, ::testing::ValuesIn(quant_cases()), case_name);

// PiSSA needs a float base (PEFT: initialise PiSSA unquantized, then quantize the residual); OLoRA works on a
// quantized base by dequantizing, subtracting its QR factors and quantizing the residual again (PEFT's
// olora_init on bitsandbytes' layers)
TEST(QuantizedBaseInit, PissaRefusedOloraRequantizesTheResidual) {
  for (Format f : {Format::nf4, Format::int8}) {
    SCOPED_TRACE(f == Format::nf4 ? "nf4" : "int8");
    auto pissa = std::make_shared<PeftModel>(quantized_base("tiny-llama", f));
    const std::string e = error_of([&] { pissa->load_adapter(golden_case("lora_pissa") + "/adapter", "default"); });
    EXPECT_NE(e.find("pissa"), std::string::npos) << e;
    auto olora = std::make_shared<PeftModel>(quantized_base("tiny-llama", f));
    const auto before = dense_weights(*olora);
    olora->load_adapter(golden_case("lora_olora") + "/adapter", "default");
    olora->set_adapter("default");
    const auto after = dense_weights(*olora);
    int rewritten = 0;
    for (const auto & kv : before) {
      // an adapted layer is the base_layer of its wrapper now
      const auto it = after.count(kv.first) ? after.find(kv.first) : after.find(kv.first + ".base_layer");
      ASSERT_NE(it, after.end()) << kv.first;
      if (at::equal(kv.second, it->second)) continue;
      ++rewritten;
      // scaling lora_alpha / r = 2, r = 4 (the case's config)
      const auto [A0, B0] = math::olora_factors(kv.second.to(at::kFloat), 4);
      const at::Tensor residual = kv.second - 2.0 * at::mm(B0, A0);
      const at::Tensor want = f == Format::int8 ? dequantize_int8(quantize_int8(residual))
                                                : dequantize_4bit(quantize_4bit(residual, f, 64, false));
      EXPECT_TRUE(all_close(it->second, want, 1e-6, 1e-5)) << kv.first;
    }
    EXPECT_EQ(rewritten, 6);  // q_proj, v_proj, down_proj of both layers
    at::NoGradGuard g;
    EXPECT_TRUE(at::isfinite(olora->forward({golden_ids("lora_olora")})).all().item<bool>());
  }
}

// ---- QLoRA: upstream PEFT's training run on bitsandbytes' NF4 base ----

void qlora_golden(bool compiled) {
  const std::string c = data_path("quant/qlora_train");
  auto base = load_model(data_path("quant/tiny-llama-nf4"));
  auto m = PeftModel::from_pretrained(base, c + "/adapter_init", "default", true);
  m->train();
  std::optional<CompiledModel> cm;
  if (compiled) cm = compile(*m);
  LogitsFn fwd = compiled ? LogitsFn([&](const ForwardInput & in) { return cm->forward(in); })
                          : LogitsFn([&](const ForwardInput & in) { return m->forward(in); });
  Trainer t(fwd, m->trainable_parameters(), golden_train_options());
  auto want = safetensors_load(c + "/expected.safetensors");
  at::Tensor ids = golden_ids("train_lora_adamw");
  // the same tolerance as the float32 golden run: both sides multiply by the same dequantized weights
  for (int64_t s = 0; s < 8; ++s) {
    double w = want.at("losses")[s].item<double>();
    EXPECT_NEAR(t.step(ids).loss, w, 1e-4 + 1e-3 * std::abs(w)) << "step " << s + 1;
  }
  for (const auto & p : base->named_parameters(true)) {
    if (p.key().find("lora_") == std::string::npos) EXPECT_FALSE(p.value().grad().defined()) << p.key();
  }
  m->train(false);
  at::NoGradGuard g;
  EXPECT_TRUE(all_close(compiled ? cm->forward({ids}) : m->forward({ids}), want.at("logits_final"), 1e-4, 1e-3));
  // and the trained tensors equal what upstream PEFT saved
  const std::string dir = temp_dir("qlora");
  m->save_pretrained(dir);
  auto ours = safetensors_load(dir + "/adapter_model.safetensors");
  auto upstream = safetensors_load(c + "/adapter_final/adapter_model.safetensors");
  ASSERT_EQ(ours.size(), upstream.size());
  for (const auto & kv : upstream) EXPECT_TRUE(all_close(ours.at(kv.first), kv.second, 1e-5, 1e-3)) << kv.first;
}

TEST(QLoRA, GoldenAdamWEager) { qlora_golden(false); }
TEST(QLoRA, GoldenAdamWCompiled) { qlora_golden(true); }

TEST(QLoRA, CliTrainsOnAQuantizedBase) {
  const std::string c = golden_case("train_lora_adamw"), dir = temp_dir("qlora-cli");
  std::string out;
  ASSERT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --quantize nf4 --compile --adapter-init " + c +
                        "/adapter_init --data " + c + "/input_ids.json --batch-size 3 --steps 8 --optimizer adamw --lr 1e-2"
                        " --weight-decay 0.01 --betas 0.9,0.999 --eps 1e-8 --no-shuffle --log-file " + dir +
                        "/log.jsonl --out " + dir + "/adapter",
                    &out),
            0)
      << out;
  auto want = safetensors_load(data_path("quant/qlora_train/expected.safetensors"));
  auto log = read_jsonl(dir + "/log.jsonl");
  ASSERT_GE(log.size(), 8u);
  for (int64_t s = 0; s < 8; ++s) {
    double w = want.at("losses")[s].item<double>();
    EXPECT_NEAR(log[s]["loss"].get<double>(), w, 1e-4 + 1e-3 * std::abs(w)) << "step " << s + 1;
  }
}

// ---- merging through the CLI ----

TEST(QuantMerge, CliWritesQuantizedOrDequantized) {
  const std::string adapter = golden_case("lora") + "/adapter", dir = temp_dir("qmerge");
  std::string out;
  // quantized again, with quantization_config, and the rounding reported
  ASSERT_EQ(run_cli("merge --model " + data_path("quant/tiny-llama-nf4") + " --adapter " + adapter + " --out " + dir + "/q", &out), 0)
      << out;
  EXPECT_NE(out.find("quantized again: weights moved by up to"), std::string::npos) << out;
  EXPECT_TRUE(nlohmann::json::parse(read_file(dir + "/q/config.json")).contains("quantization_config"));
  EXPECT_EQ(count_quantized(load_model(dir + "/q")), 14);
  // dequantized: a float checkpoint equal to the adapter merged into the dequantized base
  ASSERT_EQ(run_cli("merge --model " + data_path("quant/tiny-llama-nf4") + " --adapter " + adapter + " --dtype float32 --out " +
                        dir + "/f",
                    &out),
            0)
      << out;
  EXPECT_FALSE(nlohmann::json::parse(read_file(dir + "/f/config.json")).contains("quantization_config"));
  auto f = load_model(dir + "/f");
  EXPECT_EQ(count_quantized(f), 0);
  auto d = load_model(data_path("quant/tiny-llama-nf4"));
  dequantize_modules(d);
  auto pm = PeftModel::from_pretrained(d, adapter);
  at::NoGradGuard g;
  EXPECT_TRUE(all_close(f->forward({golden_ids("lora")}), pm->forward({golden_ids("lora")}), 1e-5, 1e-4));
}

TEST(QuantCli, FlagsThatDoNotApplyAreUsageErrors) {
  std::string out;
  EXPECT_EQ(run_cli("info --model " + golden_model("tiny-llama") + " --quantize int8 --double-quant", &out), 2) << out;
  EXPECT_EQ(run_cli("info --model " + golden_model("tiny-llama") + " --quantize nf4 --blocksize 48", &out), 2) << out;
  EXPECT_EQ(run_cli("info --model " + golden_model("tiny-llama") + " --quantize nf5", &out), 1) << out;
  EXPECT_NE(out.find("nf5"), std::string::npos) << out;
  EXPECT_EQ(run_cli("info --model " + data_path("quant/tiny-llama-nf4") + " --quantize int8", &out), 1) << out;
  EXPECT_NE(out.find("saved quantized as nf4"), std::string::npos) << out;
}

}  // namespace
