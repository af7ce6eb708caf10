// Issue 23: a tied model quantized with `--quantize-skip ""` keeps ONE quantized matrix for the input embedding
// (rows dequantized on the gather) and the output projection. Its logits equal the same model's with the
// weights replaced by their dequantized values (eager and compiled), the looked-up rows equal the dequantized
// rows bit for bit, the float table is gone (the parameters' bytes fall), LoRA on top trains (lm_head) or is
// refused by name (the embedding), and saving is refused with the way out.
#include <optional>

#include "peft/compile/compile.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/peft-model.h"
#include "peft/quant/quantized-embedding.h"
#include "support.h"

using namespace peft;
using namespace peft::test;
using namespace peft::quant;

namespace {

struct TiedCase {
  Format format;
  int64_t blocksize;
  bool double_quant;
  std::string name;
};

QuantOptions options(const TiedCase & c, std::vector<std::string> skip = {}) {
  QuantOptions o;
  o.format = c.format;
  o.blocksize = c.blocksize;
  o.double_quant = c.double_quant;
  o.skip = std::move(skip);
  return o;
}

std::shared_ptr<CausalLM> load(const std::string & model, const QuantOptions & q, at::ScalarType dtype = at::kFloat) {
  LoadOptions o;
  o.quantize = q;
  o.dtype = dtype;
  return load_model(golden_model(model), o);
}

at::Tensor ids() {
  // two rows: tokens 0-59 in order, 91 down to 32
  at::Tensor t = at::cat({at::arange(96), at::arange(96).flip(0)}).remainder(96);
  return at::stack({t.slice(0, 0, 60), t.slice(0, 100, 160)}).to(at::kLong);
}

class TiedQuantized : public ::testing::TestWithParam<TiedCase> {
 protected:
  QuantOptions opts() const { return options(GetParam()); }
};

TEST_P(TiedQuantized, OneMatrixForLookupAndHead) {
  auto q = load("tiny-llama-tied", opts());
  auto head = std::dynamic_pointer_cast<QuantizedLinear>(q->output_layer());
  auto emb = std::dynamic_pointer_cast<QuantizedEmbedding>(q->input_embedding());
  ASSERT_TRUE(head && emb);
  EXPECT_EQ(head->format(), GetParam().format);
  EXPECT_EQ(emb->table(), head) << "the embedding reads the head's own codes";
  // no float (V, D) table left anywhere
  for (const auto & p : named_parameters(*q)) EXPECT_LT(p.second.numel(), 96 * 32) << p.first;
  // the rows looked up are the dequantized weight's rows, bit for bit
  at::NoGradGuard g;
  const at::Tensor dense = head->dense_weight();
  const at::Tensor t = ids();
  const at::Tensor rows = emb->forward(t);
  EXPECT_EQ(rows.sizes(), (std::vector<int64_t>{2, 60, 32}));
  EXPECT_TRUE(at::equal(rows, dense.index_select(0, t.reshape({-1})).view({2, 60, 32})));
}

TEST_P(TiedQuantized, LogitsEqualTheDequantizedModelEagerAndCompiled) {
  auto q = load("tiny-llama-tied", opts());
  // the same model with every quantized weight replaced by its dequantized values: tied again, in float
  auto d = load("tiny-llama-tied", opts());
  EXPECT_EQ(dequantize_modules(d), 16);  // 14 Linear layers, lm_head and the embedding
  auto dh = std::dynamic_pointer_cast<Linear>(d->output_layer());
  auto de = std::dynamic_pointer_cast<Embedding>(d->input_embedding());
  ASSERT_TRUE(dh && de);
  EXPECT_TRUE(dh->weight.is_same(de->weight)) << "dequantized: one float matrix, tied";
  // and the float model whose embedding (and so its tied head) holds the dequantized values, the rest as loaded
  auto f = load("tiny-llama-tied", options(GetParam(), {"lm_head"}));
  ASSERT_TRUE(std::dynamic_pointer_cast<Embedding>(f->input_embedding()));
  {
    at::NoGradGuard g;
    std::dynamic_pointer_cast<Embedding>(f->input_embedding())->weight.copy_(de->weight);
  }
  at::NoGradGuard g;
  const at::Tensor t = ids();
  const at::Tensor want = d->forward({t});
  const at::Tensor got = q->forward({t});
  EXPECT_TRUE(all_close(got, want, 1e-5, 1e-4));
  EXPECT_TRUE(all_close(got, f->forward({t}), 1e-5, 1e-4));
  auto c = compile(q);
  EXPECT_TRUE(all_close(c.forward({t}), got, 1e-5, 1e-4)) << "compiled";
  // a decode step through the cache as well
  KVCache cache = KVCache::allocate(q->config(), 2, 64, q->options());
  ForwardInput in;
  in.input_ids = t.slice(1, 0, 1);
  in.cache = &cache;
  in.cache_position = at::zeros({1}, at::kLong);
  EXPECT_TRUE(all_close(c.forward(in), want.slice(1, 0, 1), 1e-5, 1e-4)) << "compiled, cached";
}

TEST_P(TiedQuantized, ParameterBytesFall) {
  auto q = load("tiny-llama-tied", opts());
  auto kept = load("tiny-llama-tied", options(GetParam(), {"lm_head"}));
  const WeightFootprint a = weight_footprint(q), b = weight_footprint(kept);
  EXPECT_EQ(a.params, b.params) << "the tied matrix counts once";
  const int64_t table = 96 * 32;
  const int64_t qbytes = std::dynamic_pointer_cast<QuantizedLinear>(q->output_layer())->weight_bytes();
  EXPECT_EQ(a.bytes, b.bytes - table * 4 + qbytes);
  EXPECT_LT(a.bytes, b.bytes);
}

TEST_P(TiedQuantized, QuantizingInMemoryTiesToo) {
  auto m = load_model(golden_model("tiny-llama-tied"));
  quantize_modules(m, opts());
  auto head = std::dynamic_pointer_cast<QuantizedLinear>(m->output_layer());
  auto emb = std::dynamic_pointer_cast<QuantizedEmbedding>(m->input_embedding());
  ASSERT_TRUE(head && emb);
  EXPECT_EQ(emb->table(), head);
  at::NoGradGuard g;
  EXPECT_TRUE(at::equal(m->forward({ids()}), load("tiny-llama-tied", opts())->forward({ids()})));
}

TEST_P(TiedQuantized, LoraOnTheHeadTrainsAndMergesIntoTheSharedMatrix) {
  auto q = load("tiny-llama-tied", opts());
  auto emb = std::dynamic_pointer_cast<QuantizedEmbedding>(q->input_embedding());
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8},
                                       {"target_modules", {"q_proj", "v_proj", "lm_head"}}, {"init_lora_weights", "gaussian"}},
                                      "cfg");
  auto m = std::make_shared<PeftModel>(q, cfg);
  m->train();
  const at::Tensor t = ids();
  for (bool compiled : {false, true}) {
    std::optional<CompiledModel> c;
    if (compiled) c = compile(*m);
    for (auto & p : m->trainable_parameters()) p.mutable_grad() = at::Tensor();
    ForwardInput in;
    in.input_ids = t;
    const at::Tensor logits = compiled ? c->forward(in) : m->forward(in);
    const at::Tensor loss = at::cross_entropy_loss(logits.slice(1, 0, -1).reshape({-1, 96}), t.slice(1, 1).reshape({-1}));
    loss.backward();
    int with_grad = 0;
    for (const auto & p : m->trainable_parameters()) {
      ASSERT_TRUE(p.grad().defined()) << (compiled ? "compiled" : "eager");
      EXPECT_TRUE(at::isfinite(p.grad()).all().item<bool>());
      with_grad += p.grad().abs().sum().item<double>() > 0;
    }
    EXPECT_GT(with_grad, 0);
    // one SGD step on B (A's gradient is zero while B is)
    at::NoGradGuard g;
    for (auto & p : m->trainable_parameters()) p.sub_(p.grad() * 0.5);
  }
  m->train(false);
  at::NoGradGuard g;
  auto c = compile(*m);
  const at::Tensor before = m->forward({t});
  EXPECT_TRUE(all_close(c.forward({t}), before, 1e-5, 1e-4)) << "compiled, trained adapter";
  m->merge_adapter();
  // the merge rewrote the head's codes in place: the embedding reads the merged matrix (a tied weight's merge)
  auto head = std::dynamic_pointer_cast<QuantizedLinear>(q->output_layer()->base());
  ASSERT_TRUE(head);
  EXPECT_EQ(emb->table(), head);
  EXPECT_TRUE(at::equal(emb->forward(t.reshape({-1})), head->dense_weight().index_select(0, t.reshape({-1}))));
  const at::Tensor merged = m->forward({t});
  EXPECT_TRUE(at::isfinite(merged).all().item<bool>());
  EXPECT_TRUE(all_close(c.forward({t}), merged, 1e-5, 1e-4)) << "merged: the compiled graph reads the new codes";
  EXPECT_FALSE(at::equal(merged, before)) << "the merge moved the shared matrix";
}

TEST_P(TiedQuantized, AdaptersOnTheEmbeddingAreRefusedByName) {
  auto q = load("tiny-llama-tied", opts());
  for (const nlohmann::json & extra : {nlohmann::json{{"target_modules", nlohmann::json::array({"embed_tokens"})}},
                                       nlohmann::json{{"target_modules", nlohmann::json::array({"q_proj"})}, {"modules_to_save", nlohmann::json::array({"embed_tokens"})}},
                                       nlohmann::json{{"target_modules", nlohmann::json::array({"q_proj"})}, {"trainable_token_indices", {1, 2}}}}) {
    nlohmann::json j = {{"peft_type", "LORA"}, {"r", 4}};
    j.update(extra);
    const std::string e = error_of([&] { std::make_shared<PeftModel>(q, AdapterConfig::from_json(j, "cfg")); });
    EXPECT_NE(e.find("'model.embed_tokens': it is a quantized embedding"), std::string::npos) << extra.dump() << ": " << e;
    EXPECT_NE(e.find("--quantize-skip lm_head"), std::string::npos) << e;
  }
  // and the model is as it was: usable, the embedding still the head's
  EXPECT_TRUE(std::dynamic_pointer_cast<QuantizedEmbedding>(q->input_embedding()));
}

TEST_P(TiedQuantized, PromptTuningStartsFromTheDequantizedRows) {
  auto q = load("tiny-llama-tied", opts());
  auto cfg = AdapterConfig::from_json(
      {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 6}, {"prompt_tuning_init", "SAMPLE_VOCAB"}}, "cfg");
  auto m = std::make_shared<PeftModel>(q, cfg);
  const std::string dir = temp_dir("tied-prompt");
  m->save_pretrained(dir);
  const at::Tensor p = safetensors_load(dir + "/adapter_model.safetensors").at("prompt_embeddings");
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{6, 32}));
  const at::Tensor dense = std::dynamic_pointer_cast<QuantizedLinear>(q->output_layer())->dense_weight();
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ((dense - p[i]).abs().sum(1).min().item<double>(), 0.0) << "virtual token " << i << " is a dequantized row";
  }
  at::NoGradGuard g;
  EXPECT_TRUE(at::isfinite(m->forward({ids()})).all().item<bool>());
}

TEST_P(TiedQuantized, SavingIsRefusedWithTheWayOut) {
  auto q = load("tiny-llama-tied", opts());
  const std::string dir = temp_dir("tied-save");
  const std::string e = error_of([&] { save_model(*q, dir + "/out", nlohmann::json::object()); });
  EXPECT_NE(e.find("'model.embed_tokens' is a quantized embedding"), std::string::npos) << e;
  EXPECT_NE(e.find("transformers + bitsandbytes cannot load a quantized embedding"), std::string::npos) << e;
  EXPECT_NE(e.find("--quantize-skip lm_head"), std::string::npos) << e;
  EXPECT_FALSE(exists(dir + "/out/model.safetensors"));
}

TEST_P(TiedQuantized, Bfloat16Model) {
  auto q = load("tiny-llama-tied", opts(), at::kBFloat16);
  auto emb = std::dynamic_pointer_cast<QuantizedEmbedding>(q->input_embedding());
  ASSERT_TRUE(emb);
  at::NoGradGuard g;
  const at::Tensor rows = emb->forward(ids());
  EXPECT_EQ(rows.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(rows, emb->dense_weight().index_select(0, ids().reshape({-1})).view({2, 60, 32}).to(at::kBFloat16)));
  EXPECT_TRUE(at::isfinite(q->forward({ids()})).all().item<bool>());
}

INSTANTIATE_TEST_SUITE_P(Formats, TiedQuantized,
                         ::testing::Values(TiedCase{Format::nf4, 64, false, "nf4"}, TiedCase{Format::fp4, 32, true, "fp4_dq"},
                                           TiedCase{Format::int8, 64, false, "int8"}),
                         [](const auto & i) { return i.param.name; });

// the other tied architectures: Gemma 2 / 3 (scaled lookup, softcapped logits), OPT (decoder.embed_tokens)
TEST(TiedQuantizedArchitectures, LogitsEqualTheDequantizedModel) {
  for (const std::string model : {"tiny-gemma2", "tiny-gemma3", "tiny-opt"}) {
    QuantOptions o;
    o.format = Format::nf4;
    o.skip.clear();
    auto q = load(model, o);
    auto emb = std::dynamic_pointer_cast<QuantizedEmbedding>(q->input_embedding());
    ASSERT_TRUE(emb) << model;
    EXPECT_EQ(emb->table(), std::dynamic_pointer_cast<QuantizedLinear>(q->output_layer())) << model;
    auto d = load(model, o);
    EXPECT_GT(dequantize_modules(d), 0);
    const int64_t V = q->config().vocab_size;
    at::NoGradGuard g;
    const at::Tensor t = at::arange(40, at::kLong).remainder(V).view({2, 20});
    const at::Tensor got = q->forward({t});
    EXPECT_TRUE(all_close(got, d->forward({t}), 1e-5, 1e-4)) << model;
    EXPECT_TRUE(all_close(compile(q).forward({t}), got, 1e-5, 1e-4)) << model << ", compiled";
  }
}

TEST(TiedQuantizedCli, QuantizeRefusesAndUntiedModelsKeepTheirEmbedding) {
  const std::string dir = temp_dir("tied-cli");
  std::string out;
  EXPECT_NE(run_cli("quantize --model " + golden_model("tiny-llama-tied") + " --out " + dir + "/q --method nf4 --quantize-skip \"\"",
                    &out),
            0);
  EXPECT_NE(out.find("'model.embed_tokens' is a quantized embedding"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/q"));
  // the default skip list writes a checkpoint as before
  ASSERT_EQ(run_cli("quantize --model " + golden_model("tiny-llama-tied") + " --out " + dir + "/k --method nf4", &out), 0) << out;
  auto k = load_model(dir + "/k");
  EXPECT_TRUE(std::dynamic_pointer_cast<Embedding>(k->input_embedding()));
  // an untied model: --quantize-skip "" quantizes lm_head, the embedding stays float (as transformers + bitsandbytes)
  QuantOptions o;
  o.format = Format::nf4;
  o.skip = {""};
  auto u = load("tiny-llama", o);
  EXPECT_TRUE(std::dynamic_pointer_cast<QuantizedLinear>(u->output_layer()));
  EXPECT_TRUE(std::dynamic_pointer_cast<Embedding>(u->input_embedding()));
}

}  // namespace
