// Resume that can extend (issue 25): --allow-changed lets a resumed run have more steps or another
// schedule, as transformers' Trainer does; without it such a change is refused naming the field.
#include <gtest/gtest.h>

#include "peft/io/files.h"
#include "peft/io/safetensors.h"
#include "support.h"

namespace peft::test {
namespace {

std::string kjv() { return std::string(PEFT_TEST_SOURCE) + "/../models/kjv-llama"; }

std::string train_cmd(const std::string & dir, const std::string & out, const std::string & extra,
                      const std::string & lr = "1e-3") {
  return "train --model " + kjv() + " --method lora --r 4 --target-modules q_proj,v_proj --data " + dir +
         "/data.txt --max-length 32 --batch-size 2 --lr " + lr + " --eval-split 0.2 --eval-on-start --save-steps 3" +
         " --no-plot --no-progress --threads 1 --log-file " + out + "/log.jsonl --out " + out + "/adapter " + extra;
}

std::vector<nlohmann::json> steps_of(const std::vector<nlohmann::json> & log) {
  std::vector<nlohmann::json> out;
  for (const auto & r : log) {
    if (r.contains("loss")) out.push_back(r);
  }
  return out;
}

TEST(ResumeExtend, MoreStepsEqualALongerRunAndAreRefusedWithoutTheFlag) {
  const std::string dir = temp_dir("resume-extend");
  make_text(dir);
  ASSERT_EQ(run_command("mkdir -p " + dir + "/a " + dir + "/b " + dir + "/x"), 0);
  std::string out;
  // (a run's last step writes no checkpoint, its adapter is saved: 7 steps leave checkpoint-6)
  ASSERT_EQ(run_cli(train_cmd(dir, dir + "/a", "--steps 7"), &out), 0) << out;
  const std::string ckpt = dir + "/a/adapter-checkpoints/checkpoint-6";
  ASSERT_TRUE(exists(ckpt));

  // more steps without --allow-changed: refused, naming the field and the way out
  EXPECT_EQ(run_cli(train_cmd(dir, dir + "/a", "--steps 10 --resume-from-checkpoint " + ckpt), &out), 1) << out;
  EXPECT_NE(out.find("differs from the checkpoint's in 'steps'"), std::string::npos) << out;
  EXPECT_NE(out.find("--allow-changed steps"), std::string::npos) << out;
  // only fields that can change, and only on resume (usage errors)
  EXPECT_EQ(run_cli(train_cmd(dir, dir + "/a", "--steps 10 --allow-changed steps,seed --resume-from-checkpoint " + ckpt), &out),
            2)
      << out;
  EXPECT_NE(out.find("'seed' cannot change on resume"), std::string::npos) << out;
  EXPECT_EQ(run_cli(train_cmd(dir, dir + "/x", "--steps 10 --allow-changed steps"), &out), 2) << out;

  ASSERT_EQ(run_cli(train_cmd(dir, dir + "/a", "--steps 10 --allow-changed steps --resume-from-checkpoint " + ckpt), &out), 0)
      << out;
  EXPECT_NE(out.find("resumed with a changed --steps: 7 in the checkpoint, 10 now"), std::string::npos) << out;
  // the closing summary covers the whole run: from the evaluation at step 0 (logged before the checkpoint)
  EXPECT_NE(out.find("at step 0 -> "), std::string::npos) << out;
  EXPECT_NE(out.find("at step 10 (resumed at step 6)"), std::string::npos) << out;

  // a run of 10 steps from the start: the same losses (constant learning rate, the same batches)
  ASSERT_EQ(run_cli(train_cmd(dir, dir + "/b", "--steps 10"), &out), 0) << out;
  const auto resumed = read_jsonl(dir + "/a/log.jsonl"), whole = read_jsonl(dir + "/b/log.jsonl");
  const auto rs = steps_of(resumed), ws = steps_of(whole);
  ASSERT_EQ(rs.size(), 10u);
  ASSERT_EQ(ws.size(), 10u);
  for (size_t i = 0; i < rs.size(); ++i) {
    EXPECT_EQ(rs[i]["step"], ws[i]["step"]);
    EXPECT_NEAR(rs[i]["loss"].get<double>(), ws[i]["loss"].get<double>(), 1e-6) << "step " << i + 1;
    EXPECT_EQ(rs[i].contains("changed_on_resume"), i == 6) << i;  // the first step after the resume says so
  }
  EXPECT_EQ(rs[6]["changed_on_resume"], nlohmann::json::parse(R"({"steps": {"checkpoint": 7, "now": 10}})"));
  const auto a = safetensors_load(dir + "/a/adapter/adapter_model.safetensors");
  const auto b = safetensors_load(dir + "/b/adapter/adapter_model.safetensors");
  for (const auto & kv : b) EXPECT_TRUE(all_close(a.at(kv.first), kv.second, 1e-6, 1e-5)) << kv.first;
}

TEST(ResumeExtend, AnotherLearningRate) {
  const std::string dir = temp_dir("resume-lr");
  make_text(dir);
  ASSERT_EQ(run_command("mkdir -p " + dir + "/a " + dir + "/b " + dir + "/x"), 0);
  std::string out;
  ASSERT_EQ(run_cli(train_cmd(dir, dir + "/a", "--steps 6"), &out), 0) << out;
  const std::string ckpt = dir + "/a/adapter-checkpoints/checkpoint-3";
  EXPECT_EQ(run_cli(train_cmd(dir, dir + "/a", "--steps 6 --resume-from-checkpoint " + ckpt, "2e-3"), &out), 1) << out;
  EXPECT_NE(out.find("differs from the checkpoint's in 'lr'"), std::string::npos) << out;
  ASSERT_EQ(run_cli(train_cmd(dir, dir + "/a", "--steps 6 --allow-changed lr --resume-from-checkpoint " + ckpt, "2e-3"),
                    &out),
            0)
      << out;
  const auto rs = steps_of(read_jsonl(dir + "/a/log.jsonl"));
  ASSERT_EQ(rs.size(), 6u);
  for (size_t i = 0; i < rs.size(); ++i) EXPECT_DOUBLE_EQ(rs[i]["lr"].get<double>(), i < 3 ? 1e-3 : 2e-3) << i;
  EXPECT_TRUE(rs[3].contains("changed_on_resume")) << rs[3].dump();
}

}  // namespace
}  // namespace peft::test
