// The parity interface: `peft forward` with adapter flags reproduces every golden tensor.
#include "golden-cases.h"
#include "peft/io/safetensors.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

struct FlagCase {
  const char * expected;
  const char * flags;
};
const FlagCase kFlags[] = {{"logits", ""},
                           {"logits_disabled", "--disable-adapters"},
                           {"logits_merged", "--merge"},
                           {"logits_unmerged", "--merge --unmerge"},
                           {"logits_merge_and_unload", "--merge-and-unload"}};

class CliGolden : public ::testing::TestWithParam<std::tuple<GoldenCase, bool>> {};

at::Tensor cli_forward(const std::string & model, const std::string & case_name, const std::string & flags) {
  std::string out = temp_dir("cli") + "/logits.safetensors", log;
  int rc = run_cli("forward --model " + golden_model(model) + " --input-ids " + golden_case(case_name) +
                       "/input_ids.json --out " + out + " " + flags,
                   &log);
  EXPECT_EQ(rc, 0) << log;
  return rc == 0 ? safetensors_load(out).at("logits") : at::Tensor();
}

at::Tensor cli_forward_dir(const std::string & model_dir, const std::string & case_name) {
  std::string out = temp_dir("cli") + "/logits.safetensors", log;
  int rc = run_cli("forward --model " + model_dir + " --input-ids " + golden_case(case_name) + "/input_ids.json --out " + out,
                   &log);
  EXPECT_EQ(rc, 0) << log;
  return rc == 0 ? safetensors_load(out).at("logits") : at::Tensor();
}

TEST_P(CliGolden, EveryExpectedTensor) {
  const GoldenCase & c = std::get<0>(GetParam());
  const std::string compile = std::get<1>(GetParam()) ? " --compile" : "";
  auto want = golden_expected(c.name);
  for (const auto & f : kFlags) {
    at::Tensor got = cli_forward(c.model, c.name,
                                 "--adapter " + golden_case(c.name) + "/adapter " + f.flags + compile + cli_init_seed(c));
    if (got.defined()) EXPECT_CLOSE(got, want.at(f.expected)) << f.flags << compile;
  }
}

INSTANTIATE_TEST_SUITE_P(Peft, CliGolden, ::testing::Combine(::testing::ValuesIn(single_adapter_cases()), ::testing::Bool()),
                         [](const auto & i) {
                           return std::get<0>(i.param).name + (std::get<1>(i.param) ? "_compiled" : "_eager");
                         });

TEST(CliMerge, MergedCheckpointGivesMergeAndUnloadLogits) {
  for (const auto & c : single_adapter_cases()) {
    const std::string dir = temp_dir("merge") + "/merged";
    std::string log;
    ASSERT_EQ(run_cli("merge --model " + golden_model(c.model) + " --adapter " + golden_case(c.name) + "/adapter --out " + dir +
                          cli_init_seed(c),
                      &log),
              0)
        << c.name << ": " << log;
    at::Tensor got = cli_forward_dir(dir, c.name);
    if (got.defined()) EXPECT_CLOSE(got, golden_expected(c.name).at("logits_merge_and_unload")) << c.name;
  }
}

// prompt learning through the CLI: upstream's folders, eager and compiled, and disabled
TEST(CliGolden, PromptLearningFolders) {
  for (const auto & c : std::vector<GoldenCase>{{"prompt_tuning", "tiny-llama"},   {"prefix_tuning_proj", "tiny-llama"},
                                                {"p_tuning_lstm", "tiny-llama"},   {"prefix_tuning_opt", "tiny-opt"},
                                                {"prompt_tuning_opt", "tiny-opt"}}) {
    auto want = golden_expected(c.name);
    const std::string a = "--adapter " + golden_case(c.name) + "/adapter";
    EXPECT_CLOSE(cli_forward(c.model, c.name, a), want.at("logits_loaded")) << c.name;
    EXPECT_CLOSE(cli_forward(c.model, c.name, a + " --compile"), want.at("logits_loaded")) << c.name;
    EXPECT_CLOSE(cli_forward(c.model, c.name, a + " --disable-adapters --compile"), want.at("logits_disabled")) << c.name;
  }
  std::string log;
  EXPECT_NE(run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case("prompt_tuning") +
                        "/input_ids.json --out /tmp/y.safetensors --adapter " + golden_case("prompt_tuning") + "/adapter --merge",
                    &log),
            0);
  EXPECT_NE(log.find("cannot be merged"), std::string::npos) << log;
}

// upstream's folders that peft.cpp refused (gen_config_cases.py): prompt learning with modules_to_save; an
// adapter file holding the base weight of an embedding layer another adapter adapted (ignored), or of its own
// (loaded into the base as upstream's load does, said on stderr); no --allow-base-weights needed
TEST(CliGolden, UpstreamFoldersPeftCppRefused) {
  for (const char * c : {"prompt_tuning_mts", "p_tuning_mts", "prefix_tuning_mts"}) {
    auto want = golden_expected(c);
    const std::string a = "--adapter " + golden_case(c) + "/adapter";
    EXPECT_CLOSE(cli_forward("tiny-llama", c, a), want.at("logits_loaded")) << c;
    EXPECT_CLOSE(cli_forward("tiny-llama", c, a + " --compile"), want.at("logits_loaded")) << c;
  }
  const std::string m = golden_case("multi_embed_head") + "/adapters/";
  auto multi = golden_expected("multi_embed_head");
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_embed_head", "--adapter " + m + "head"), multi.at("logits_head_alone"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_embed_head", "--adapter " + m + "emb=emb --adapter " + m +
                                                             "head=head --active head --compile"),
               multi.at("logits_head"));
  auto changed = golden_expected("lora_embed_base_changed");
  const std::string out = temp_dir("cli") + "/logits.safetensors";
  std::string log;
  ASSERT_EQ(run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case("lora_embed_base_changed") +
                        "/input_ids.json --out " + out + " --adapter " + golden_case("lora_embed_base_changed") + "/adapter",
                    &log),
            0)
      << log;
  EXPECT_CLOSE(safetensors_load(out).at("logits"), changed.at("logits_loaded"));
  EXPECT_NE(log.find("embed_tokens.base_layer.weight"), std::string::npos) << log;
}

TEST(CliGoldenMulti, AdaptersByNameAndActive) {
  auto want = golden_expected("multi_adapter");
  const std::string a = golden_case("multi_adapter") + "/adapters/";
  const std::string all = "--adapter " + a + "alpha=alpha --adapter " + a + "beta=beta --adapter " + a + "gamma=gamma";
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all), want.at("logits_alpha"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --active gamma"), want.at("logits_gamma"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --active beta"), want.at("logits_beta"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --disable-adapters"), want.at("logits_base"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --active gamma --compile"), want.at("logits_gamma"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --weighted w=ties:alpha*0.7,beta*0.3:density=0.5"),
               want.at("logits_w_ties"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --weighted w=svd:alpha*0.7,beta*0.3,gamma*0.5 --compile"),
               want.at("logits_w_svd"));
  // the other combination types with their options, against upstream (golden case weighted_more)
  auto more = golden_expected("weighted_more");
  EXPECT_CLOSE(cli_forward("tiny-llama", "weighted_more", all + " --weighted w=dare_ties:alpha*0.7,beta*0.3:density=0.6:seed=12"),
               more.at("logits_w_dare_ties"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "weighted_more",
                           all + " --weighted w=svd:alpha*0.6,gamma*0.9:svd_rank=3:svd_clamp=0.9:svd_full_matrices=false --compile"),
               more.at("logits_w_svd_options"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "weighted_more",
                           all + " --weighted w=dare_linear_svd:alpha*0.7,beta*0.3,gamma*0.5:density=0.5:seed=14 --compile"),
               more.at("logits_w_dare_linear_svd"));
  std::string log;
  EXPECT_NE(run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case("multi_adapter") +
                        "/input_ids.json --out /tmp/y.safetensors " + all + " --weighted w=dare_ties:alpha*1,beta*1:seed=x",
                    &log),
            0);
  EXPECT_NE(log.find("seed"), std::string::npos) << log;
  EXPECT_NE(run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + golden_case("multi_adapter") +
                        "/input_ids.json --out /tmp/y.safetensors " + all + " --weighted w=svd:alpha",
                    &log),
            0);
  EXPECT_NE(log.find("--weighted"), std::string::npos) << log;
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --adapter-names alpha,__base__,gamma"),
               want.at("logits_mixed_batch"));
  EXPECT_CLOSE(cli_forward("tiny-llama", "multi_adapter", all + " --adapter-names alpha,__base__,gamma --compile"),
               want.at("logits_mixed_batch"));
}

}  // namespace
