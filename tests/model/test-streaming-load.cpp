// Streaming loads (issue 23): load_model maps the checkpoint and converts or quantizes it tensor by tensor.
// Checked here: the model equals what the earlier whole-checkpoint load gave (parameters, buffers, logits; f32,
// bf16, nf4, fp4 + double quantization, int8; single file and shards; tied and untied; bitsandbytes' saved
// checkpoints); quantize_4bit/quantize_int8 in chunks on the kernel threads equal the whole-tensor ATen ops they
// replaced; a load's memory stays near the model's own size; bad checkpoints still name the file or tensor.
#include <gtest/gtest.h>
#include <malloc.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "kernels/kernels.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/quant/quantized-embedding.h"
#include "peft/model/causal-lm.h"
#include "peft/model/config.h"
#include "peft/quant/quantize.h"
#include "peft/quant/quantized-linear.h"
#include "peft/util/runtime.h"
#include "support.h"

namespace peft::test {
namespace {

// ---- helpers ----

nlohmann::json llama_config(int64_t hidden, int64_t layers, int64_t inter, int64_t vocab, bool tied) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", vocab},
          {"hidden_size", hidden},
          {"intermediate_size", inter},
          {"num_hidden_layers", layers},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"max_position_embeddings", 64},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", tied},
          {"torch_dtype", "float32"}};
}

// A random model saved as transformers saves one: in `dtype`, one file or two shards with an index
std::string write_model(const std::string & tag, const nlohmann::json & config, at::ScalarType dtype, bool sharded) {
  const std::string dir = temp_dir(tag);
  write_file_atomic(dir + "/config.json", config.dump(2));
  auto model = build_model(ModelConfig::load(dir));
  init_random(*model, 7, 0.05);
  {
    at::NoGradGuard g;  // (norms not all ones: a norm loaded wrong shows)
    for (auto & p : model->named_parameters(true)) {
      if (p.value().dim() == 1) p.value().uniform_(0.5, 1.5);
    }
  }
  model->to(dtype);
  save_model(*model, dir, config);
  if (sharded) {
    auto all = safetensors_load(dir + "/model.safetensors");
    std::map<std::string, at::Tensor> a, b;
    nlohmann::json map = nlohmann::json::object();
    size_t i = 0;
    for (const auto & kv : all) {
      const bool first = i++ < all.size() / 2;
      (first ? a : b)[kv.first] = kv.second;
      map[kv.first] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    }
    safetensors_save(dir + "/model-00001-of-00002.safetensors", a);
    safetensors_save(dir + "/model-00002-of-00002.safetensors", b);
    write_file_atomic(dir + "/model.safetensors.index.json", nlohmann::json{{"weight_map", map}}.dump(2));
    std::remove((dir + "/model.safetensors").c_str());
  }
  return dir;
}

// The load as it was before streaming: every checkpoint tensor copied out, the float32 model converted to
// `dtype`, then the quantized layers and the parameters filled from the copies
std::shared_ptr<CausalLM> load_whole(const std::string & dir, const LoadOptions & o) {
  auto model = build_model(ModelConfig::load(dir));
  quant::QuantOptions q = o.quantize;
  const nlohmann::json j = read_json_file(dir + "/config.json");
  if (j.contains("quantization_config")) {
    q = quant::options_from_config(j["quantization_config"], dir);
    q.format = quant::Format::none;
  }
  std::string source;
  auto tensors = checkpoint_load(dir, &source);
  model->to(o.dtype);
  quant::load_tied_quantized(*model, tensors, q, source);  // (a tied head quantized: the embedding reads it)
  quant::load_quantized(model, tensors, q, source);
  load_parameters(*model, tensors, source);
  model->eval();
  return model;
}

std::map<std::string, at::Tensor> state_of(const std::shared_ptr<CausalLM> & m) {
  std::map<std::string, at::Tensor> out;
  for (const auto & p : m->named_parameters(true)) out["p:" + p.key()] = p.value();
  for (const auto & b : m->named_buffers(true)) out["b:" + b.key()] = b.value();
  return out;
}

void expect_same_model(const std::shared_ptr<CausalLM> & got, const std::shared_ptr<CausalLM> & want) {
  auto g = state_of(got), w = state_of(want);
  ASSERT_EQ(g.size(), w.size());
  for (const auto & kv : w) {
    ASSERT_TRUE(g.count(kv.first)) << kv.first;
    const at::Tensor & a = g.at(kv.first);
    EXPECT_EQ(a.scalar_type(), kv.second.scalar_type()) << kv.first;
    EXPECT_TRUE(a.sizes() == kv.second.sizes() && at::equal(a, kv.second)) << kv.first << " differs";
  }
  at::NoGradGuard ng;
  ForwardInput in;
  in.input_ids = at::tensor(std::vector<int64_t>{1, 5, 9, 2, 77, 3}, at::kLong).reshape({1, 6});
  EXPECT_TRUE(at::equal(got->forward(in), want->forward(in))) << "logits differ";
}

int64_t weight_bytes(const std::shared_ptr<CausalLM> & m) {
  int64_t b = 0;
  for (const auto & t : state_of(m)) b += t.second.nbytes();
  return b;
}

// ---- the same model as before ----

struct Case {
  const char * name;
  at::ScalarType saved, dtype;
  bool sharded, tied;
  quant::Format format;
  bool double_quant;
  std::vector<std::string> skip;
};

class StreamingLoad : public ::testing::TestWithParam<Case> {};

TEST_P(StreamingLoad, EqualsTheWholeCheckpointLoad) {
  const Case & c = GetParam();
  // hidden 48 x vocab 131: lm_head's 6288 weights end in a partial 4-bit block when it is quantized
  const std::string dir = write_model(std::string("stream-") + c.name, llama_config(48, 2, 96, 131, c.tied), c.saved, c.sharded);
  LoadOptions o;
  o.dtype = c.dtype;
  o.quantize.format = c.format;
  o.quantize.double_quant = c.double_quant;
  o.quantize.skip = c.skip;
  expect_same_model(load_model(dir, o), load_whole(dir, o));
}

const std::vector<std::string> kLmHead = {"lm_head"};
INSTANTIATE_TEST_SUITE_P(
    Cases, StreamingLoad,
    ::testing::Values(Case{"f32", at::kFloat, at::kFloat, false, false, quant::Format::none, false, kLmHead},
                      Case{"f32_tied_sharded", at::kFloat, at::kFloat, true, true, quant::Format::none, false, kLmHead},
                      Case{"bf16_from_f32", at::kFloat, at::kBFloat16, false, true, quant::Format::none, false, kLmHead},
                      Case{"bf16_sharded", at::kBFloat16, at::kBFloat16, true, false, quant::Format::none, false, kLmHead},
                      Case{"f32_from_bf16", at::kBFloat16, at::kFloat, false, false, quant::Format::none, false, kLmHead},
                      Case{"nf4", at::kFloat, at::kFloat, false, false, quant::Format::nf4, false, kLmHead},
                      Case{"nf4_bf16_sharded_head", at::kBFloat16, at::kBFloat16, true, false, quant::Format::nf4, false, {}},
                      Case{"nf4_tied", at::kFloat, at::kBFloat16, false, true, quant::Format::nf4, false, kLmHead},
                      Case{"fp4_dq_head", at::kFloat, at::kFloat, true, false, quant::Format::fp4, true, {}},
                      Case{"int8", at::kBFloat16, at::kFloat, false, false, quant::Format::int8, false, kLmHead},
                      Case{"int8_sharded_head", at::kFloat, at::kBFloat16, true, true, quant::Format::int8, false, {}}),
    [](const ::testing::TestParamInfo<Case> & i) { return std::string(i.param.name); });

TEST(StreamingLoad, SavedQuantizedCheckpointsLoadAsBefore) {
  // bitsandbytes' own checkpoints (tests/data/quant), and one peft.cpp saved
  for (const char * name : {"tiny-llama-nf4", "tiny-llama-nf4-dq", "tiny-llama-int8"}) {
    SCOPED_TRACE(name);
    expect_same_model(load_model(data_path(std::string("quant/") + name)), load_whole(data_path(std::string("quant/") + name), {}));
  }
  const std::string dir = write_model("stream-saved", llama_config(48, 2, 96, 131, false), at::kFloat, false);
  LoadOptions o;
  o.quantize.format = quant::Format::nf4;
  o.quantize.double_quant = true;
  auto q = load_model(dir, o);
  nlohmann::json config = read_json_file(dir + "/config.json");
  config["quantization_config"] = quant::quantization_config(o.quantize);
  const std::string saved = temp_dir("stream-saved-q");
  save_model(*q, saved, config);
  expect_same_model(load_model(saved), load_whole(saved, {}));
}

// ---- the chunked quantizers equal the whole-tensor ATen ops ----

void check_chunked_quantizers();

// quantize_4bit as it was written before chunking (bitsandbytes' default backend, op for op)
quant::Quant4 reference_4bit(const at::Tensor & W, quant::Format f, int64_t blocksize) {
  quant::Quant4 q;
  q.code = quant::code_4bit(f);
  at::Tensor order = f == quant::Format::nf4
                         ? at::arange(16, at::kLong)
                         : at::tensor(std::vector<int64_t>{11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3});
  at::Tensor sorted = q.code.index({order});
  at::Tensor bounds = (sorted.slice(0, 0, -1) + sorted.slice(0, 1)) / 2;
  at::Tensor flat = W.reshape(-1).to(at::kFloat);
  const int64_t n = flat.numel(), rem = n % blocksize, full = n - rem, blocks = full / blocksize;
  at::Tensor com = flat.slice(0, 0, full).reshape({blocks, blocksize});
  at::Tensor absmax = std::get<0>(com.abs().max(-1));
  at::Tensor scaled = at::clamp(com * at::reciprocal(absmax.clamp_min(1e-38)).view({-1, 1}), -1, 1).reshape(-1);
  if (rem) {
    at::Tensor tail = flat.slice(0, full);
    at::Tensor am = tail.abs().max().clamp_min(1e-38);
    absmax = at::cat({absmax, am.unsqueeze(0)});
    scaled = at::cat({scaled, at::clamp(tail / am, -1, 1)});
  }
  if (scaled.numel() % 2) scaled = at::constant_pad_nd(scaled, {0, 1});
  at::Tensor idx = at::bucketize(scaled, bounds, /*out_int32=*/true);
  if (f != quant::Format::nf4) idx = order.index({idx.to(at::kLong)});
  at::Tensor q8 = idx.to(at::kByte);
  q.packed = at::bitwise_or(at::bitwise_left_shift(q8.slice(0, 0, at::indexing::None, 2), 4),
                            q8.slice(0, 1, at::indexing::None, 2)).unsqueeze(1).contiguous();
  q.absmax = absmax;
  return q;
}

TEST(StreamingLoad, ChunkedQuantizersEqualTheWholeTensorOps) {
  for (const char * isa : {"portable", "avx2", "avx512"}) {
    if (!error_of([&] { kernels::force_isa(isa); }).empty()) continue;  // (this CPU lacks it)
    SCOPED_TRACE(isa);
    check_chunked_quantizers();
  }
  kernels::force_isa(nullptr);
}

void check_chunked_quantizers() {
  auto gen = at::detail::createCPUGenerator(3);
  // sizes around the chunk (65536) and block boundaries, odd counts, a zero block, a huge and a tiny block
  for (const auto & shape : std::vector<std::vector<int64_t>>{{7, 9}, {64, 64}, {300, 257}, {1, 65536 + 65}, {513, 1023}}) {
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
      at::Tensor W = at::normal(0, 0.05, shape, gen).to(dt);
      W.view(-1).slice(0, 0, std::min<int64_t>(64, W.numel())).zero_();
      if (W.numel() > 200) W.view(-1)[130] = 40.0;
      if (W.numel() > 300) W.view(-1)[260] = 1e-30;
      for (quant::Format f : {quant::Format::nf4, quant::Format::fp4}) {
        for (int64_t bs : {32, 64, 4096}) {
          SCOPED_TRACE(::testing::Message() << W.sizes() << " " << dt << " " << quant::format_name(f) << " bs " << bs);
          quant::Quant4 got = quant::quantize_4bit(W, f, bs, false), want = reference_4bit(W, f, bs);
          EXPECT_TRUE(at::equal(got.packed, want.packed));
          EXPECT_TRUE(at::equal(got.absmax, want.absmax));
          EXPECT_EQ(got.packed.sizes(), want.packed.sizes());
        }
      }
      if (W.dim() == 2) {
        // Int8Params: int8_vectorwise_quant of the float16 copy, all rows at once
        at::Tensor A = W.to(at::kHalf);
        at::Tensor stats = std::get<0>(at::max(A.abs(), 1)).to(at::kFloat);
        at::Tensor CB = at::round(A * (at::reciprocal(stats.unsqueeze(-1)) * 127.0)).to(at::kChar);
        quant::Quant8 q = quant::quantize_int8(W);
        EXPECT_TRUE(at::equal(q.CB, CB)) << W.sizes() << " " << dt;
        EXPECT_TRUE(at::equal(q.SCB, stats)) << W.sizes() << " " << dt;
      }
    }
  }
}

// ---- memory and time ----

// The largest RssAnon seen while `fn` runs (sampled every millisecond) minus RssAnon before, in bytes
int64_t anon_growth_during(const std::function<void()> & fn) {
  ::malloc_trim(0);
  const int64_t before = process_status_kb("RssAnon");
  std::atomic<bool> done{false};
  std::atomic<int64_t> peak{before};
  std::thread sampler([&] {
    while (!done.load()) {
      const int64_t now = process_status_kb("RssAnon");
      if (now > peak.load()) peak.store(now);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  try {
    fn();
  } catch (...) {
    done = true;
    sampler.join();
    throw;
  }
  done = true;
  sampler.join();
  return (std::max(peak.load(), process_status_kb("RssAnon")) - before) * 1024;
}

TEST(StreamingLoad, PeakMemoryIsTheModelPlusOneTensor) {
  // ~185 MB in float32: the whole-checkpoint load held the model and a copy of the checkpoint (twice this)
  const std::string dir = write_model("stream-peak", llama_config(512, 4, 1536, 32000, false), at::kFloat, false);
  const int64_t largest = 32000 * 512 * 4, slack = 48 << 20;
  struct Run {
    const char * name;
    at::ScalarType dtype;
    quant::Format format;
  };
  for (const Run & r : {Run{"f32", at::kFloat, quant::Format::none}, Run{"bf16", at::kBFloat16, quant::Format::none},
                        Run{"nf4", at::kBFloat16, quant::Format::nf4}}) {
    SCOPED_TRACE(r.name);
    LoadOptions o;
    o.dtype = r.dtype;
    o.quantize.format = r.format;
    std::shared_ptr<CausalLM> model;
    ::malloc_trim(0);
    const int64_t rss_before = process_status_kb("VmRSS");
    ASSERT_TRUE(reset_peak_rss());
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t growth = anon_growth_during([&] { model = load_model(dir, o); });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t hwm_growth = (process_status_kb("VmHWM") - rss_before) * 1024, size = weight_bytes(model);
    EXPECT_LE(growth, size + largest + slack) << "anonymous memory grew by " << (growth >> 20) << " MB for a model of "
                                              << (size >> 20) << " MB";
    // the mapped file's pages are handed back as tensors are used: the peak of all resident memory is bounded too
    EXPECT_LE(hwm_growth, size + 2 * largest + slack) << "VmHWM grew by " << (hwm_growth >> 20) << " MB for a model of "
                                                      << (size >> 20) << " MB";
    EXPECT_LT(seconds, 30.0);
    // (the embedding and lm_head, 65 MB each, are copied in slices on the kernel threads: the same model)
    expect_same_model(model, load_whole(dir, o));
    model.reset();
  }
}

TEST(StreamingLoad, InfoShowsTheResidentSizePerDtype) {
  const std::string dir = write_model("stream-info", llama_config(48, 2, 96, 131, false), at::kFloat, false);
  std::string out;
  ASSERT_EQ(run_cli("info --model " + dir + " --dtype bfloat16 --quantize nf4", &out), 0) << out;
  EXPECT_NE(out.find("(loaded as bfloat16)"), std::string::npos) << out;
  EXPECT_NE(out.find("resident:     bfloat16 "), std::string::npos) << out;
  EXPECT_NE(out.find(", nf4 "), std::string::npos) << out;
  EXPECT_NE(out.find("of anonymous memory (process peak "), std::string::npos) << out;
  // float16: the Linear weights float16, the rest (embedding, norms) float32
  ASSERT_EQ(run_cli("info --model " + dir + " --dtype float16", &out), 0) << out;
  EXPECT_NE(out.find("(loaded as float16)"), std::string::npos) << out;
  EXPECT_NE(out.find("float16 "), std::string::npos) << out;
  EXPECT_NE(out.find("float32 "), std::string::npos) << out;
  EXPECT_NE(run_cli("info --model " + dir + " --dtype float64", &out), 0) << out;
}

// ---- bad checkpoints: errors name the file or the tensor ----

TEST(StreamingLoad, BadCheckpointsNameTheFileOrTensor) {
  const std::string dir = write_model("stream-bad", llama_config(48, 2, 96, 131, false), at::kFloat, true);
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  const std::string bytes = read_file(shard);
  {  // a truncated shard
    write_file_atomic(shard, bytes.substr(0, bytes.size() - 100));
    const std::string e = error_of([&] { load_model(dir); });
    EXPECT_NE(e.find("model-00002-of-00002.safetensors"), std::string::npos) << e;
    EXPECT_NE(e.find("truncated"), std::string::npos) << e;
    write_file_atomic(shard, bytes);
  }
  auto tensors = safetensors_load(shard);
  const std::string victim = tensors.begin()->first;
  {  // a missing tensor
    auto fewer = tensors;
    fewer.erase(victim);
    nlohmann::json index = read_json_file(dir + "/model.safetensors.index.json");
    index["weight_map"].erase(victim);
    const std::string index_text = read_file(dir + "/model.safetensors.index.json");
    write_file_atomic(dir + "/model.safetensors.index.json", index.dump());
    safetensors_save(shard, fewer);
    const std::string e = error_of([&] { load_model(dir); });
    EXPECT_NE(e.find("missing keys: " + victim), std::string::npos) << e;
    write_file_atomic(dir + "/model.safetensors.index.json", index_text);
  }
  {  // a tensor listed in the index, absent from its shard
    auto fewer = tensors;
    fewer.erase(victim);
    safetensors_save(shard, fewer);
    const std::string e = error_of([&] { load_model(dir); });
    EXPECT_NE(e.find("key '" + victim + "' is mapped to 'model-00002-of-00002.safetensors' which lacks it"), std::string::npos) << e;
  }
  {  // a norm weight stored as integers
    auto wrong = tensors;
    std::string norm;
    for (const auto & kv : tensors) {
      if (kv.second.dim() == 1) norm = kv.first;
    }
    ASSERT_FALSE(norm.empty());
    wrong[norm] = tensors.at(norm).to(at::kInt);
    safetensors_save(shard, wrong);
    const std::string e = error_of([&] { load_model(dir); });
    EXPECT_NE(e.find("tensor '" + norm + "' is Int, the model expects floating point"), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace peft::test
