// Metadata and folders as upstream writes them (issue 25): adapter_config.json's base_model_name_or_path,
// parameter counts with quantized weights (upstream's print_trainable_parameters), generation_config.json kept
// by merge and read by generate for its defaults, and each command's --help listing only its own flags.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "peft/io/files.h"
#include "peft/model/causal-lm.h"
#include "peft/model/name-or-path.h"
#include "peft/peft.h"
#include "peft/quant/quantize.h"
#include "support.h"

namespace peft::test {
namespace {

std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }

nlohmann::json lora_config() {
  return {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "v_proj"}}};
}

nlohmann::json saved_config(const std::string & dir) { return nlohmann::json::parse(read_file(dir + "/adapter_config.json")); }

// A copy of the bundled model's folder with `generation_config` as its generation_config.json (none if null).
std::string kjv_with(const std::string & tag, const nlohmann::json & generation_config) {
  const std::string dir = temp_dir(tag);
  EXPECT_EQ(run_command("cp " + kjv() + "/config.json " + kjv() + "/model.safetensors " + kjv() + "/tokenizer.json " +
                        kjv() + "/tokenizer_config.json " + dir + "/"),
            0);
  if (!generation_config.is_null()) write_file_atomic(dir + "/generation_config.json", generation_config.dump(2));
  return dir;
}

// The JSON line of ids that --print-ids prints (the last line of the output that is a JSON array).
std::vector<int64_t> printed_ids(const std::string & out) {
  std::vector<int64_t> ids;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line[0] == '[' && line.back() == ']') ids = nlohmann::json::parse(line).get<std::vector<int64_t>>();
  }
  return ids;
}

std::vector<int64_t> generate_ids(const std::string & model, const std::string & flags) {
  std::string out;
  EXPECT_EQ(run_cli("generate --model " + model + " --prompt 'In the beginning' --print-ids --threads 1 " + flags, &out), 0)
      << out;
  return printed_ids(out);
}

// "trainable params: N || all params: M || trainable%: P" -> (N, M)
std::pair<int64_t, int64_t> counts_of(const std::string & summary) {
  std::smatch m;
  EXPECT_TRUE(std::regex_search(summary, m, std::regex("trainable params: (\\d+) \\|\\| all params: (\\d+)"))) << summary;
  if (m.size() < 3) return {-1, -1};
  return {std::stoll(m[1]), std::stoll(m[2])};
}

// ---- base_model_name_or_path ----

TEST(Metadata, SavedAdapterNamesItsBase) {
  const std::string dir = temp_dir("name-or-path");
  auto m = std::make_shared<PeftModel>(load_model(kjv()), AdapterConfig::from_json(lora_config(), "cfg"));
  m->save_pretrained(dir + "/a");
  EXPECT_EQ(saved_config(dir + "/a")["base_model_name_or_path"], kjv());  // the folder as given

  // loaded (on another copy of the base) and saved again: the file's value is kept, as upstream keeps it
  const std::string copy = kjv_with("name-or-path-base", nullptr);
  auto again = PeftModel::from_pretrained(load_model(copy), dir + "/a");
  again->save_pretrained(dir + "/b");
  EXPECT_EQ(saved_config(dir + "/b")["base_model_name_or_path"], kjv());

  // a config that names no base gets the model's folder; a model built in memory has none (null, as upstream)
  auto cfg = saved_config(dir + "/a");
  cfg["base_model_name_or_path"] = nullptr;
  write_file_atomic(dir + "/a/adapter_config.json", cfg.dump(2));
  PeftModel::from_pretrained(load_model(copy), dir + "/a")->save_pretrained(dir + "/c");
  EXPECT_EQ(saved_config(dir + "/c")["base_model_name_or_path"], copy);
  auto built = build_model(ModelConfig::load(kjv()));
  init_random(*built, 1);
  EXPECT_EQ(model_name_or_path(*built), "");
  PeftModel(built, AdapterConfig::from_json(lora_config(), "cfg")).save_pretrained(dir + "/d");
  EXPECT_TRUE(saved_config(dir + "/d")["base_model_name_or_path"].is_null());
}

TEST(Metadata, TrainWritesTheModelFolderInAdapterAndCheckpoints) {
  const std::string dir = temp_dir("name-or-path-train");
  const std::string data = make_text(dir);
  std::string out;
  ASSERT_EQ(run_cli("train --model " + kjv() + " --method lora --r 4 --target-modules q_proj,v_proj --data " + data +
                        " --max-length 32 --batch-size 2 --steps 2 --save-steps 1 --no-plot --no-progress --threads 1" +
                        " --log-file " + dir + "/log.jsonl --out " + dir + "/adapter",
                    &out),
            0)
      << out;
  EXPECT_EQ(saved_config(dir + "/adapter")["base_model_name_or_path"], kjv());
  EXPECT_EQ(saved_config(dir + "/adapter-checkpoints/checkpoint-1")["base_model_name_or_path"], kjv());
  // trained further from that adapter: still its base
  ASSERT_EQ(run_cli("train --model " + kjv() + " --adapter-init " + dir + "/adapter --data " + data +
                        " --max-length 32 --batch-size 2 --steps 1 --no-plot --no-progress --threads 1" +
                        " --log-file " + dir + "/log2.jsonl --out " + dir + "/adapter2",
                    &out),
            0)
      << out;
  EXPECT_EQ(saved_config(dir + "/adapter2")["base_model_name_or_path"], kjv());
}

// ---- parameter counts with quantized weights ----

TEST(Metadata, QuantizedWeightsCountAsTheirElements) {
  auto float_model = std::make_shared<PeftModel>(load_model(kjv()), AdapterConfig::from_json(lora_config(), "cfg"));
  const auto want = counts_of(float_model->trainable_summary());
  ASSERT_GT(want.first, 0);
  for (const char * format : {"nf4", "fp4", "int8"}) {
    LoadOptions o;
    o.quantize.format = quant::parse_format(format, "format");
    auto q = std::make_shared<PeftModel>(load_model(kjv(), o), AdapterConfig::from_json(lora_config(), "cfg"));
    ASSERT_GT(quant::weight_footprint(q->model_ptr()).quantized_params, 0) << format;
    EXPECT_EQ(counts_of(q->trainable_summary()), want) << format << ": " << q->trainable_summary();
  }
}

TEST(Metadata, TrainPrintsTheFloatModelsCountsOnAQuantizedBase) {
  const std::string dir = temp_dir("qlora-counts");
  const std::string data = make_text(dir);
  std::vector<std::pair<int64_t, int64_t>> counts;
  for (const std::string q : {"", " --quantize nf4"}) {
    std::string out;
    ASSERT_EQ(run_cli("train --model " + kjv() + q + " --method lora --r 4 --target-modules q_proj,v_proj --data " + data +
                          " --max-length 32 --batch-size 2 --steps 1 --no-plot --no-progress --threads 1 --log-file " +
                          dir + "/log.jsonl --out " + dir + "/adapter",
                      &out),
              0)
        << out;
    counts.push_back(counts_of(out));
  }
  EXPECT_EQ(counts[0], counts[1]);
}

TEST(Metadata, InfoCountsAQuantizedCheckpointAsTheFloatModel) {
  const std::string dir = temp_dir("info-nf4");
  std::string out;
  ASSERT_EQ(run_cli("quantize --model " + kjv() + " --out " + dir + "/nf4 --method nf4", &out), 0) << out;
  auto parameters = [](const std::string & text) {
    std::smatch m;
    EXPECT_TRUE(std::regex_search(text, m, std::regex("parameters: +(\\d+)\n"))) << text;
    return m.size() > 1 ? std::stoll(m[1]) : -1;
  };
  ASSERT_EQ(run_cli("info --model " + kjv(), &out), 0) << out;
  const int64_t want = parameters(out);
  EXPECT_NE(out.find("storage:      float32 " + std::to_string(want) + " ("), std::string::npos) << out;
  ASSERT_EQ(run_cli("info --model " + dir + "/nf4", &out), 0) << out;
  EXPECT_EQ(parameters(out), want) << out;
  EXPECT_NE(out.find(", nf4 "), std::string::npos) << out;  // the packed weights' own line
  EXPECT_NE(out.find("codes and scales"), std::string::npos) << out;
}

// ---- generation_config.json ----

TEST(Metadata, MergeKeepsGenerationConfig) {
  const std::string dir = temp_dir("merge-genconfig");
  auto m = std::make_shared<PeftModel>(load_model(kjv()), AdapterConfig::from_json(lora_config(), "cfg"));
  m->save_pretrained(dir + "/adapter");
  std::string out;
  ASSERT_EQ(run_cli("merge --model " + kjv() + " --adapter " + dir + "/adapter --out " + dir + "/merged", &out), 0) << out;
  ASSERT_TRUE(exists(dir + "/merged/generation_config.json"));
  EXPECT_EQ(read_file(dir + "/merged/generation_config.json"), read_file(kjv() + "/generation_config.json"));
}

TEST(Metadata, GenerateTakesItsDefaultsFromGenerationConfig) {
  // the bundled model's file: greedy (no do_sample), max_new_tokens 64 with its eos ids
  const nlohmann::json bundled = nlohmann::json::parse(read_file(kjv() + "/generation_config.json"));
  ASSERT_FALSE(bundled.value("do_sample", false));

  // max_new_tokens from the file where no flag is given; the flag wins
  const auto five = generate_ids(kjv_with("gen-none", nullptr), "--max-new-tokens 5");
  ASSERT_EQ(five.size(), 5u);  // (the prompt's greedy continuation has no eos in 5 tokens)
  const std::string short_len = kjv_with("gen-len", {{"max_new_tokens", 3}});
  const auto three = generate_ids(short_len, "");
  EXPECT_EQ(three, std::vector<int64_t>(five.begin(), five.begin() + 3));
  EXPECT_EQ(generate_ids(short_len, "--max-new-tokens 5"), five);
  // without a file: the command's own default (32 tokens at most)
  EXPECT_LE(generate_ids(kjv_with("gen-default", nullptr), "").size(), 32u);

  // sampling settings from the file equal the same flags; the flags win over the file; --do-sample=false: greedy
  const std::string plain = kjv_with("gen-plain", nullptr);
  const std::string sampling =
      kjv_with("gen-sample", {{"do_sample", true}, {"temperature", 0.7}, {"top_k", 20}, {"top_p", 0.9},
                              {"repetition_penalty", 1.3}, {"max_new_tokens", 12}});
  const auto want = generate_ids(plain, "--max-new-tokens 12 --do-sample --temperature 0.7 --top-k 20 --top-p 0.9 "
                                        "--repetition-penalty 1.3 --seed 7");
  EXPECT_EQ(generate_ids(sampling, "--seed 7"), want);
  EXPECT_NE(generate_ids(sampling, "--seed 7 --temperature 3"), want);
  EXPECT_EQ(generate_ids(sampling, "--seed 7 --temperature 3"),
            generate_ids(plain, "--max-new-tokens 12 --do-sample --temperature 3 --top-k 20 --top-p 0.9 "
                                "--repetition-penalty 1.3 --seed 7"));
  EXPECT_EQ(generate_ids(sampling, "--seed 7 --do-sample=false"),
            generate_ids(plain, "--max-new-tokens 12 --repetition-penalty 1.3"));
  // greedy in the file: its sampling fields do not apply (as transformers), a temperature of 0 included
  EXPECT_EQ(generate_ids(kjv_with("gen-greedy", {{"do_sample", false}, {"temperature", 0.0}, {"top_p", 0.5}}),
                         "--max-new-tokens 5"),
            five);

  // a bad value names the file and the field
  std::string out;
  EXPECT_EQ(run_cli("generate --model " + kjv_with("gen-bad", {{"do_sample", true}, {"top_p", 2}}) + " --prompt In", &out), 1)
      << out;
  EXPECT_NE(out.find("generation_config.json: field 'top_p'"), std::string::npos) << out;
  EXPECT_EQ(run_cli("generate --model " + kjv_with("gen-bad2", {{"max_new_tokens", "many"}}) + " --prompt In", &out), 1)
      << out;
  EXPECT_NE(out.find("generation_config.json: field 'max_new_tokens'"), std::string::npos) << out;
}

// ---- help text per command ----

TEST(Metadata, EachCommandListsOnlyItsFlags) {
  auto help = [](const std::string & cmd) {
    std::string out;
    EXPECT_EQ(run_cli(cmd + " --help", &out), 0) << out;
    return out;
  };
  auto has = [](const std::string & text, const std::string & flag) {
    return std::regex_search(text, std::regex("\\s" + flag + "(\\s|$)"));
  };
  const std::string merge = help("merge");
  for (const char * f : {"--adapter", "--active", "--weighted", "--init-seed", "--quantize", "--int8-threshold", "--dtype"}) {
    EXPECT_TRUE(has(merge, f)) << f << "\n" << merge;
  }
  for (const char * f : {"--disable-adapters", "--merge", "--unmerge", "--merge-and-unload", "--max-new-tokens",
                         "--do-sample", "--compile"}) {
    EXPECT_FALSE(has(merge, f)) << f << "\n" << merge;
  }
  std::string out;  // and refused as flags merge does not have (a usage error)
  EXPECT_EQ(run_cli("merge --model " + kjv() + " --adapter x --out y --disable-adapters", &out), 2) << out;

  const std::string generate = help("generate");
  for (const char * f : {"--merge-and-unload", "--disable-adapters", "--max-new-tokens", "--quantize"}) {
    EXPECT_TRUE(has(generate, f)) << f << "\n" << generate;
  }
  // --int8-threshold only goes into a written quantization_config: merge and quantize have it
  for (const char * cmd : {"generate", "forward", "info", "train", "serve"}) {
    EXPECT_FALSE(has(help(cmd), "--int8-threshold")) << cmd;
  }
  EXPECT_TRUE(has(help("quantize"), "--int8-threshold"));
}

}  // namespace
}  // namespace peft::test
