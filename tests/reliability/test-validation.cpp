// Never lose a user's work or files: each defect found by a careless-user review, reproduced.
// Commands check their arguments, paths and data before any work; non-finite values stop training and
// are never saved silently; files that are malformed or hostile give named errors, never a crash.
#include <sys/stat.h>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "peft/model/config.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

const std::string kIds = golden_case("train_lora_adamw") + "/input_ids.json";

std::string train(const std::string & extra, const std::string & out, const std::string & log) {
  return "train --model " + golden_model("tiny-llama") + " --method lora --r 4 --target-modules q_proj,v_proj --data " +
         kIds + " --batch-size 3 --steps 3 --lr 1e-2 --log-file " + log + " --out " + out + " " + extra;
}

std::string nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// ---- validated before work ----

TEST(Validation, OutputPathsAreCheckedBeforeTheFirstStep) {
  const std::string dir = temp_dir("val-out");
  std::string out;
  // an empty --out, a missing parent, a file where the folder would go: exit 1 at once, nothing trained
  EXPECT_EQ(run_cli(train("", "\"\"", dir + "/log.jsonl"), &out), 1);
  EXPECT_NE(out.find("--out: an empty path"), std::string::npos) << out;
  EXPECT_EQ(run_cli(train("", dir + "/missing/adapter", dir + "/log.jsonl"), &out), 1);
  EXPECT_NE(out.find("does not exist"), std::string::npos) << out;
  write_file_atomic(dir + "/afile", "x");
  EXPECT_EQ(run_cli(train("", dir + "/afile", dir + "/log.jsonl"), &out), 1);
  EXPECT_NE(out.find("is a file, not a folder"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/log.jsonl")) << "work started before the checks";
}

TEST(Validation, InputsAreNeverOverwritten) {
  const std::string dir = temp_dir("val-in");
  std::string out;
  // --log-file equal to --data
  const std::string data = dir + "/ids.json";
  write_file_atomic(data, read_file(kIds));
  std::string cmd = train("", dir + "/adapter", data);
  cmd.replace(cmd.find(kIds), kIds.size(), data);
  EXPECT_EQ(run_cli(cmd, &out), 1);
  EXPECT_NE(out.find("is an input of this command"), std::string::npos) << out;
  EXPECT_EQ(read_file(data), read_file(kIds));
  // merge --out at the --model folder
  const std::string model = dir + "/model";
  ASSERT_EQ(run_command("cp -r " + golden_model("tiny-llama") + " " + model), 0);
  const std::string before = read_file(model + "/model.safetensors");
  EXPECT_EQ(run_cli("merge --model " + model + " --adapter " + golden_case("lora") + "/adapter --out " + model, &out), 1);
  EXPECT_NE(out.find("is an input of this command"), std::string::npos) << out;
  EXPECT_EQ(read_file(model + "/model.safetensors"), before);
  // nor a folder that contains an input
  EXPECT_EQ(run_cli("merge --model " + model + " --adapter " + golden_case("lora") + "/adapter --out " + dir, &out), 1);
  EXPECT_NE(out.find("contains an input"), std::string::npos) << out;
}

TEST(Validation, BadDataIsFoundBeforeTraining) {
  const std::string dir = temp_dir("val-data");
  write_file_atomic(dir + "/ids.json", "[[1, 2, 3], [4, 5, 96000]]");
  std::string out, cmd = train("", dir + "/adapter", dir + "/log.jsonl");
  cmd.replace(cmd.find(kIds), kIds.size(), dir + "/ids.json");
  EXPECT_EQ(run_cli(cmd, &out), 1);
  EXPECT_NE(out.find("row 1, position 2: token id 96000"), std::string::npos) << out;
  // longer than the model's positions (64)
  std::string longrow = "[[";
  for (int i = 0; i < 80; ++i) longrow += (i ? "," : "") + std::to_string(i % 90);
  write_file_atomic(dir + "/ids.json", longrow + "]]");
  EXPECT_EQ(run_cli(cmd, &out), 1);
  EXPECT_NE(out.find("80 tokens, more than the model's 64 positions"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/log.jsonl"));
}

TEST(Validation, UsageErrorsExit2AndFlagsThatDoNotApplyAreErrors) {
  const std::string dir = temp_dir("val-usage");
  std::string out;
  EXPECT_EQ(run_cli("train --no-such-flag", &out), 2) << out;
  EXPECT_EQ(run_cli("bench --reps -3", &out), 2) << out;
  EXPECT_EQ(run_cli(train("--betas 0.9,0.999,5", dir + "/a", dir + "/l.jsonl"), &out), 2) << out;
  EXPECT_NE(out.find("--betas"), std::string::npos) << out;
  std::string cmd = "train --model " + golden_model("tiny-llama") + " --adapter-init " + golden_case("lora") +
                    "/adapter --r 4 --data " + kIds + " --batch-size 3 --steps 1 --lr 1e-2 --log-file " + dir +
                    "/l.jsonl --out " + dir + "/a";
  EXPECT_EQ(run_cli(cmd, &out), 2) << out;
  EXPECT_NE(out.find("--r does not apply with --adapter-init"), std::string::npos) << out;
  EXPECT_EQ(run_cli("generate --model " + golden_model("tiny-llama") + " --prompt hi --max-new-tokens 9223372036854775807",
                    &out),
            2)
      << out;
  EXPECT_EQ(run_cli("--help", &out), 0);
}

// ---- fail fast, show what happened (issue 25) ----

// Text needs the model's tokenizer.json: without one every command that tokenizes text fails at once naming
// the file (it used to fall back to bytes: garbage out, exit 0); --byte-tokenizer asks for the byte tokenizer;
// token ids need no tokenizer.
TEST(Validation, AModelWithoutATokenizerIsAnErrorForText) {
  const std::string dir = temp_dir("val-tok");
  const std::string model = golden_model("tiny-llama"), want = model + "/tokenizer.json";
  ASSERT_FALSE(exists(want));
  std::string out;
  EXPECT_EQ(run_cli("generate --model " + model + " --prompt hi --max-new-tokens 2", &out), 1) << out;
  EXPECT_NE(out.find(want), std::string::npos) << out;
  EXPECT_EQ(run_cli("generate --model " + model + " --prompt hi --max-new-tokens 2 --byte-tokenizer", &out), 0) << out;
  // train on text: refused before any work (no log, no adapter); with --byte-tokenizer it trains
  const std::string data = make_text(dir);
  std::string cmd = train("", dir + "/a", dir + "/l.jsonl");
  cmd.replace(cmd.find(kIds), kIds.size(), data);
  cmd.replace(cmd.find("--steps 3"), 9, "--steps 1");
  EXPECT_EQ(run_cli(cmd, &out), 1) << out;
  EXPECT_NE(out.find(want), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/l.jsonl")) << "work started before the check";
  EXPECT_FALSE(exists(dir + "/a/adapter_model.safetensors"));
  EXPECT_EQ(run_cli(cmd + " --byte-tokenizer", &out), 0) << out;
  EXPECT_TRUE(exists(dir + "/a/adapter_model.safetensors"));
  // eval on text and serve: the same error (serve before it loads the model or listens)
  EXPECT_EQ(run_cli("eval --model " + model + " --data " + data, &out), 1) << out;
  EXPECT_NE(out.find(want), std::string::npos) << out;
  EXPECT_EQ(run_command("timeout 60 " + std::string(PEFT_CLI) + " serve --port 0 --model " + model, &out), 1) << out;
  EXPECT_NE(out.find(want), std::string::npos) << out;
  // token ids: training on .json rows, eval of .json rows and forward --input-ids work without a tokenizer
  EXPECT_EQ(run_cli(train("", dir + "/b", dir + "/l2.jsonl"), &out), 0) << out;
  EXPECT_EQ(run_cli("eval --model " + model + " --data " + kIds, &out), 0) << out;
  EXPECT_EQ(run_cli("forward --model " + model + " --input-ids " + kIds + " --out " + dir + "/f.safetensors", &out), 0) << out;
}

// --steps 0 and --epochs 0 used to run a whole epoch: usage errors now, before any work.
TEST(Validation, ZeroStepsOrEpochsAreUsageErrors) {
  const std::string dir = temp_dir("val-zero");
  std::string out;
  for (const std::string & flag : {std::string("--steps 0"), std::string("--epochs 0"), std::string("--steps -2")}) {
    std::string cmd = train("", dir + "/a", dir + "/l.jsonl");
    cmd.replace(cmd.find("--steps 3"), 9, flag);
    EXPECT_EQ(run_cli(cmd, &out), 2) << flag << ": " << out;
    EXPECT_NE(out.find(flag.substr(0, flag.find(' '))), std::string::npos) << out;
    EXPECT_FALSE(exists(dir + "/l.jsonl")) << flag << ": work started";
  }
  std::string cmd = train("", dir + "/a", dir + "/l.jsonl");
  cmd.replace(cmd.find("--steps 3"), 9, "--epochs 1");
  EXPECT_EQ(run_cli(cmd, &out), 0) << out;
}

TEST(Validation, SequencesLongerThanThePositionsAreRefused) {
  auto m = load_model(golden_model("tiny-opt"));
  at::Tensor ids = at::zeros({1, m->config().max_position_embeddings + 1}, at::kLong);
  const std::string e = error_of([&] { m->forward({ids}); });
  EXPECT_NE(e.find("exceeds the model's"), std::string::npos) << e;
}

TEST(Validation, HugeRankIsRefusedBeforeAllocating) {
  auto cfg = AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 100000000}, {"target_modules", {"q_proj"}}}, "cfg");
  const std::string e = error_of([&] { PeftModel m(load_model(golden_model("tiny-llama")), cfg); });
  EXPECT_NE(e.find("GB available"), std::string::npos) << e;
}

// ---- non-finite values ----

TEST(NonFinite, TrainingStopsAndKeepsTheLastGoodAdapter) {
  const std::string dir = temp_dir("nonfinite");
  std::string out, cmd = train("", dir + "/adapter", dir + "/log.jsonl");
  cmd.replace(cmd.find("--steps 3"), 9, "--steps 20");
  cmd.replace(cmd.find("--lr 1e-2"), 9, "--lr 1e6");
  EXPECT_EQ(run_cli(cmd, &out), 1) << out;
  EXPECT_NE(out.find("training stopped before this step's update"), std::string::npos) << out;
  ASSERT_NE(out.find("was saved to"), std::string::npos) << out;
  auto t = safetensors_load(dir + "/adapter/adapter_model.safetensors");
  for (const auto & kv : t) EXPECT_TRUE(at::isfinite(kv.second).all().item<bool>()) << kv.first;
  // the log holds the good steps only, every value a number (JSON has no NaN: it used to write null)
  const std::string log = read_file(dir + "/log.jsonl");
  EXPECT_EQ(log.find("null"), std::string::npos) << log;
  EXPECT_FALSE(log.empty());
}

TEST(NonFinite, ANaNStepIsNotAppliedAndNotSaved) {
  // a loss that is NaN from the first step: nothing saved, exit 1, and the trainer never applied it
  auto m = std::make_shared<PeftModel>(
      load_model(golden_model("tiny-llama")),
      AdapterConfig::from_json({{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q_proj"}}}, "cfg"));
  for (const auto & p : m->trainable_parameters()) {
    at::NoGradGuard g;
    p.fill_(std::nan(""));
  }
  m->train();
  TrainOptions o;
  o.steps = 1;
  o.batch_size = 1;
  Trainer t([&](const ForwardInput & in) { return m->forward(in); }, m->trainable_parameters(), o);
  try {
    t.step(golden_ids("lora").narrow(0, 0, 1));
    ADD_FAILURE() << "no error";
  } catch (const NonFiniteError & e) {
    EXPECT_EQ(e.step, 1);
    EXPECT_NE(std::string(e.what()).find("step 1: the loss is"), std::string::npos) << e.what();
  }
  // saving refuses it, naming the tensor; allow_nonfinite saves it anyway
  const std::string dir = temp_dir("nan-save");
  const std::string err = error_of([&] { m->save_pretrained(dir + "/a"); });
  EXPECT_NE(err.find("holds NaN or Inf values"), std::string::npos) << err;
  EXPECT_FALSE(exists(dir + "/a"));
  m->save_pretrained(dir + "/a", {}, /*allow_nonfinite=*/true);
  EXPECT_TRUE(exists(dir + "/a/adapter_model.safetensors"));
}

TEST(NonFinite, MergeIsSafeByDefault) {
  auto m = PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), golden_case("lora") + "/adapter");
  for (const auto & l : m->tuner_layers()) {
    for (const auto & p : l.second->adapter_parameters("default")) {
      at::NoGradGuard g;
      p.second.fill_(1e38);
    }
  }
  auto before = m->base_model().named_parameters(true);
  std::map<std::string, at::Tensor> saved;
  for (const auto & p : before) saved[p.key()] = p.value().clone();
  EXPECT_NE(error_of([&] { m->merge_adapter(); }).find("safe merge refused"), std::string::npos);
  for (const auto & p : m->base_model().named_parameters(true)) {
    if (saved.count(p.key())) EXPECT_TRUE(at::equal(p.value(), saved.at(p.key()))) << p.key();
  }
}

// ---- hostile files ----

TEST(HostileFiles, DeepJsonIsANamedErrorNotACrash) {
  const std::string dir = temp_dir("deep");
  ASSERT_EQ(run_command("cp -r " + golden_case("lora") + "/adapter " + dir + "/a"), 0);
  write_file_atomic(dir + "/a/adapter_config.json", "{\"peft_type\": \"LORA\", \"x\": " + nested(200000) + "}");
  std::string e = error_of([&] { AdapterConfig::load(dir + "/a"); });
  EXPECT_NE(e.find("nested deeper than"), std::string::npos) << e;
  write_file_atomic(dir + "/config.json", nested(200000));
  e = error_of([&] { ModelConfig::load(dir); });
  EXPECT_NE(e.find("nested deeper than"), std::string::npos) << e;
  write_file_atomic(dir + "/ids.json", nested(200000));
  std::string out;
  EXPECT_EQ(run_cli("forward --model " + golden_model("tiny-llama") + " --input-ids " + dir + "/ids.json --out " + dir +
                        "/o.safetensors",
                    &out),
            1);
  EXPECT_NE(out.find("nested deeper than"), std::string::npos) << out;
}

TEST(HostileFiles, AdapterFileCannotOverwriteBaseWeights) {
  const std::string dir = temp_dir("hostile") + "/a";
  ASSERT_EQ(run_command("cp -r " + golden_case("lora") + "/adapter " + dir), 0);
  auto t = safetensors_load(dir + "/adapter_model.safetensors");
  t["base_model.model.lm_head.weight"] = at::zeros({96, 32});
  safetensors_save(dir + "/adapter_model.safetensors", t);
  const std::string e = error_of([&] { PeftModel::from_pretrained(load_model(golden_model("tiny-llama")), dir); });
  EXPECT_NE(e.find("names a base-model weight ('lm_head.weight')"), std::string::npos) << e;
  PeftModel m(load_model(golden_model("tiny-llama")));
  m.load_adapter(dir, "x", false, /*allow_base_weights=*/true);
  EXPECT_EQ(m.base_model().named_parameters(true)["lm_head.weight"].abs().sum().item<double>(), 0.0);
}

TEST(HostileFiles, SafetensorsDuplicateKeysAndTrailingBytes) {
  const std::string dir = temp_dir("st-hostile");
  auto write = [&](const std::string & name, const std::string & header, const std::string & data) {
    std::string bytes(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    write_file_atomic(dir + "/" + name, bytes + header + data);
    return dir + "/" + name;
  };
  const std::string four(4, '\0');
  std::string p = write("dup.safetensors",
                        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                        four);
  EXPECT_NE(error_of([&] { safetensors_load(p); }).find("key 'a' appears twice"), std::string::npos);
  p = write("tail.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four + "junk");
  EXPECT_NE(error_of([&] { safetensors_load(p); }).find("4 bytes after the last tensor"), std::string::npos);
  p = write("gap.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", four + four);
  EXPECT_NE(error_of([&] { safetensors_load(p); }).find("belong to no tensor"), std::string::npos);
}

TEST(Limits, OversizedJsonAndModelsAreNamedErrors) {
  const std::string dir = temp_dir("limits");
  // a JSON file larger than the limit (sparse: no disk used) is refused before it is read
  ASSERT_EQ(run_command("truncate -s 600M " + dir + "/config.json"), 0);
  std::string e = error_of([&] { read_json_file(dir + "/config.json"); });
  EXPECT_NE(e.find("MiB a JSON file may have"), std::string::npos) << e;
  // a config.json whose model cannot fit this machine: a named error, not an OOM kill
  auto cfg = read_json_file(golden_model("tiny-llama") + "/config.json");
  cfg["vocab_size"] = 2000000;
  cfg["hidden_size"] = 8192;
  cfg["num_attention_heads"] = 64;
  cfg["num_key_value_heads"] = 64;
  write_file_atomic(dir + "/config.json", cfg.dump());
  e = error_of([&] { load_model(dir); });
  EXPECT_TRUE(e.find("cannot allocate the model") != std::string::npos || e.find("GB available") != std::string::npos)
      << e;
}

TEST(Validation, MergedConfigUsesTransformersDtypeNames) {
  // `--dtype bf16` used to write "torch_dtype": "bf16", which transformers does not read
  const std::string dir = temp_dir("dtype") + "/merged";
  std::string out;
  ASSERT_EQ(run_cli("merge --model " + golden_model("tiny-llama") + " --adapter " + golden_case("lora") +
                        "/adapter --dtype bf16 --out " + dir,
                    &out),
            0)
      << out;
  EXPECT_EQ(read_json_file(dir + "/config.json")["torch_dtype"], "bfloat16");
}

}  // namespace
