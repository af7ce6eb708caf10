// peft::TrainJob, the library's training run, against `peft train`, the command line that runs it: the
// same settings make the same files (the adapter and every checkpoint byte for byte, the JSONL log line
// for line but its timings) and say the same lines; the config's checks name its fields where the
// command line names its flags; and should_stop stops a run that resumes as if never stopped.
#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "peft/io/files.h"
#include "peft/model/causal-lm.h"
#include "peft/model/config.h"
#include "peft/peft-model.h"
#include "peft/train/train-job.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

// Every file below `dir` (relative paths), but optimizer.pt: LibTorch's archive keys the optimizer state by
// tensor address, so two runs of the same binary write different bytes (resuming from it is tested in
// test-resume.cpp) -- and the run locks, which hold nothing.
std::set<std::string> files_below(const std::string & dir, const std::string & rel = "") {
  std::set<std::string> out;
  DIR * d = ::opendir((dir + "/" + rel).c_str());
  if (d == nullptr) return out;
  while (dirent * e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == ".." || n == "optimizer.pt" || n.find(".train.lock") != std::string::npos) continue;
    const std::string r = rel.empty() ? n : rel + "/" + n;
    struct stat st;
    if (::stat((dir + "/" + r).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      for (const auto & f : files_below(dir, r)) out.insert(f);
    } else {
      out.insert(r);
    }
  }
  ::closedir(d);
  return out;
}

// The lines the command printed that the job says too: not the progress (steps, evaluations, checkpoints,
// which go to the observer's other callbacks), with the run's folder written as DIR.
std::vector<std::string> said_lines(const std::string & text, const std::string & dir) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("step ", 0) == 0 || line.rfind("eval at step ", 0) == 0 || line.rfind("saved " + dir + "/", 0) == 0) {
      continue;
    }
    for (size_t at; (at = line.find(dir)) != std::string::npos;) line.replace(at, dir.size(), "DIR");
    out.push_back(line);
  }
  return out;
}

struct JobRun {
  TrainJobResult result;
  std::vector<std::string> lines;
  int steps = 0, evals = 0, saves = 0;
};

JobRun run_job(TrainJobConfig c, const std::function<bool(const JobRun &)> & stop = {}) {
  JobRun r;
  TrainJobObserver obs;
  obs.message = [&](const std::string & line) { r.lines.push_back(line); };
  obs.on_step = [&](const StepLog &) { ++r.steps; };
  obs.on_evaluate = [&](const EvalLog &) { ++r.evals; };
  obs.on_save = [&](const std::string &, int64_t) { ++r.saves; };
  if (stop) obs.should_stop = [&] { return stop(r); };
  r.result = TrainJob(std::move(c)).run(obs);
  return r;
}

// The CLI's run in DIR/cli, the job's in DIR/job: the same files, logs and lines.
void expect_same_runs(const std::string & dir, const std::string & cli_out, const JobRun & job) {
  const std::string a = dir + "/cli", b = dir + "/job";
  const auto fa = files_below(a), fb = files_below(b);
  EXPECT_EQ(fa, fb);
  EXPECT_TRUE(fa.count("adapter/adapter_model.safetensors")) << a;
  for (const auto & f : fa) {
    if (f == "log.jsonl" || !fb.count(f)) continue;
    EXPECT_TRUE(read_file(a + "/" + f) == read_file(b + "/" + f)) << f << " differs";
  }
  const auto la = read_jsonl(a + "/log.jsonl"), lb = read_jsonl(b + "/log.jsonl");  // (without tokens_per_second)
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "log line " << i;
  std::vector<std::string> job_lines;
  for (auto line : job.lines) {
    for (size_t at; (at = line.find(b)) != std::string::npos;) line.replace(at, b.size(), "DIR");
    job_lines.push_back(line);
  }
  EXPECT_EQ(said_lines(cli_out, a), job_lines);
}

TEST(TrainJob, LoraFromFieldsWithAnEvalSplitAndCheckpointsEqualsTheCli) {
  const std::string dir = temp_dir("train-job-lora");
  const std::string data = make_text(dir);
  ASSERT_EQ(::mkdir((dir + "/cli").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((dir + "/job").c_str(), 0755), 0);
  std::string out;
  ASSERT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --byte-tokenizer --method lora --r 4 --lora-alpha 16 --lora-dropout 0.1" +
                        " --target-modules q_proj,v_proj,down_proj --data " + data + " --eval-split 0.1 --eval-steps 5" +
                        " --max-length 48 --no-token-cache --batch-size 4 --steps 8 --lr 5e-3 --lr-scheduler cosine" +
                        " --warmup-steps 3 --gradient-accumulation-steps 2 --max-grad-norm 1 --seed 7 --save-steps 2" +
                        " --save-total-limit 2 --no-plot --log-file " + dir + "/cli/log.jsonl --out " + dir + "/cli/adapter",
                    &out),
            0)
      << out;

  TrainJobConfig c;
  c.model.path = golden_model("tiny-llama");
  c.model.byte_tokenizer = true;  // (the tiny model has no tokenizer.json)
  LoraFields lora;
  lora.r = 4;
  lora.lora_alpha = 16;
  lora.lora_dropout = 0.1;
  lora.target_modules = "q_proj,v_proj,down_proj";
  c.adapter.lora = lora;
  c.data.train = data;
  c.data.eval_split = 0.1;
  c.data.max_length = 48;
  c.data.token_cache = false;
  c.train.batch_size = 4;
  c.train.steps = 8;
  c.train.lr = 5e-3;
  c.train.lr_scheduler = LrScheduler::cosine;
  c.train.warmup_steps = 3;
  c.train.gradient_accumulation_steps = 2;
  c.train.max_grad_norm = 1;
  c.train.seed = 7;
  c.train.eval_steps = 5;
  c.train.save_steps = 2;
  c.train.save_total_limit = 2;
  c.output.adapter = dir + "/job/adapter";
  c.output.log_file = dir + "/job/log.jsonl";
  c.output.no_plot = true;
  const JobRun job = run_job(c);
  EXPECT_FALSE(job.result.stopped);
  EXPECT_TRUE(job.result.saved);
  EXPECT_EQ(job.result.step, 8);
  EXPECT_EQ(job.result.total_steps, 8);
  EXPECT_EQ(job.steps, 8);
  EXPECT_EQ(job.evals, 2);  // step 5 and the end
  EXPECT_EQ(job.saves, 4);  // checkpoints 2, 4, 6 and the last step's, 8
  ASSERT_EQ(job.result.evals.size(), 2u);
  EXPECT_EQ(job.result.checkpoint, dir + "/job/adapter-checkpoints/checkpoint-8");
  expect_same_runs(dir, out, job);
  EXPECT_TRUE(exists(dir + "/job/adapter-checkpoints/checkpoint-6/trainer_state.json"));
  EXPECT_FALSE(exists(dir + "/job/adapter-checkpoints/checkpoint-4"));  // save_total_limit 2
}

TEST(TrainJob, AnAdapterConfigMethodOnTokenIdsEqualsTheCli) {
  const std::string dir = temp_dir("train-job-ia3");
  ASSERT_EQ(::mkdir((dir + "/cli").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((dir + "/job").c_str(), 0755), 0);
  const std::string config = dir + "/ia3.json", ids = golden_case("train_lora_adamw") + "/input_ids.json";
  write_file_atomic(config, nlohmann::json({{"peft_type", "IA3"},
                                            {"target_modules", {"k_proj", "v_proj", "down_proj"}},
                                            {"feedforward_modules", {"down_proj"}},
                                            {"task_type", "CAUSAL_LM"}})
                                .dump());
  std::string out;
  ASSERT_EQ(run_cli("train --model " + golden_model("tiny-llama") + " --adapter-config " + config + " --data " + ids +
                        " --eval-data " + ids + " --eval-on-start --batch-size 1 --epochs 2 --optimizer sgd --momentum 0.9" +
                        " --lr 5e-2 --lr-scheduler linear --save-steps 2 --checkpoint-dir " + dir + "/cli/ck" +
                        " --log-file " + dir + "/cli/log.jsonl --plot " + dir + "/cli/loss.png --out " + dir + "/cli/adapter",
                    &out),
            0)
      << out;

  TrainJobConfig c;
  c.model.path = golden_model("tiny-llama");
  c.adapter.config = config;
  c.data.train = ids;
  c.data.eval = ids;
  c.train.eval_on_start = true;
  c.train.batch_size = 1;
  c.train.epochs = 2;
  c.train.optimizer = "sgd";
  c.train.momentum = 0.9;
  c.train.weight_decay = 0;  // (the command line's default with --optimizer sgd)
  c.train.lr = 5e-2;
  c.train.lr_scheduler = "linear";
  c.train.save_steps = 2;
  c.train.checkpoint_dir = dir + "/job/ck";
  c.output.adapter = dir + "/job/adapter";
  c.output.log_file = dir + "/job/log.jsonl";
  c.output.plot = dir + "/job/loss.png";
  const JobRun job = run_job(c);
  EXPECT_EQ(job.result.total_steps, 6);  // 3 documents, 2 epochs
  EXPECT_EQ(job.evals, 2);               // at the start and the end
  ASSERT_EQ(job.result.evals.size(), 2u);
  EXPECT_EQ(job.result.evals.front().step, 0);
  EXPECT_TRUE(exists(dir + "/job/ck/checkpoint-4/trainer_state.json"));
  // (the plots are drawn from the logs, whose timings differ: compared as a file that exists)
  EXPECT_TRUE(exists(dir + "/job/loss.png") == exists(dir + "/cli/loss.png"));
  if (exists(dir + "/cli/loss.png")) {
    ::unlink((dir + "/cli/loss.png").c_str());
    ::unlink((dir + "/job/loss.png").c_str());
  }
  expect_same_runs(dir, out, job);
}

TEST(TrainJob, ChecksNameTheFieldsAndTheCliNamesItsFlags) {
  const std::string dir = temp_dir("train-job-checks");
  const std::string ids = golden_case("train_lora_adamw") + "/input_ids.json";
  TrainJobConfig c;
  c.model.path = golden_model("tiny-llama");
  c.adapter.lora = LoraFields{};
  c.data.train = ids;
  c.output.adapter = dir + "/adapter";
  c.output.log_file = dir + "/log.jsonl";
  auto option_error = [](const TrainJobConfig & bad, const FieldNamer & namer = {}) {
    try {
      TrainJob job(bad, namer);
    } catch (const OptionError & e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(option_error(c), "");
  TrainJobConfig bad = c;
  bad.train.lr = -1;
  EXPECT_EQ(option_error(bad).rfind("train.lr must be a positive number", 0), 0u) << option_error(bad);
  EXPECT_EQ(option_error(bad, [](const std::string & f) { return "<" + f + ">"; }).rfind("<train.lr> must be", 0), 0u);
  bad = c;
  bad.adapter.init = golden_case("lora") + "/adapter";
  EXPECT_EQ(option_error(bad), "give exactly one of adapter.init, adapter.config and adapter.lora");
  bad = c;
  bad.adapter.lora->r = 0;
  EXPECT_EQ(option_error(bad), "adapter.lora.r must be >= 1");
  bad = c;
  bad.data.eval_split = 0.5;
  bad.data.eval = ids;
  EXPECT_EQ(option_error(bad), "give data.eval or data.eval_split, not both");
  bad = c;
  bad.train.eval_steps = 2;
  EXPECT_EQ(option_error(bad), "train.eval_steps and train.eval_on_start need data.eval or data.eval_split");
  bad = c;
  bad.model.quantize.double_quant = true;
  EXPECT_EQ(option_error(bad), "model.quantize.double_quant applies to model.quantize.format nf4 or fp4");
  bad = c;
  bad.train.beta2 = 1.5;
  EXPECT_EQ(option_error(bad).rfind("train.beta1 and train.beta2 must be in [0, 1)", 0), 0u) << option_error(bad);
  EXPECT_THROW(c.train.optimizer = "adam", OptionError);
  // the same checks from the command line, named by its flags: a usage error (exit 2) before any work
  const std::string cmd = "train --model " + golden_model("tiny-llama") + " --method lora --data " + ids +
                          " --log-file " + dir + "/log.jsonl --out " + dir + "/adapter ";
  std::string out;
  EXPECT_EQ(run_cli(cmd + "--lr -1", &out), 2);
  EXPECT_NE(out.find("error: --lr must be a positive number"), std::string::npos) << out;
  EXPECT_EQ(run_cli(cmd + "--eval-split 0.5 --eval-data " + ids, &out), 2);
  EXPECT_NE(out.find("give --eval-data or --eval-split, not both"), std::string::npos) << out;
  EXPECT_EQ(run_cli(cmd + "--betas 0.9,1.5", &out), 2);
  EXPECT_NE(out.find("error: --betas must be in [0, 1)"), std::string::npos) << out;
  EXPECT_EQ(run_cli(cmd + "--double-quant", &out), 2);
  EXPECT_NE(out.find("--double-quant applies to --quantize nf4 or fp4"), std::string::npos) << out;
  EXPECT_EQ(run_cli(cmd + "--lr-scheduler exp", &out), 2);
  EXPECT_NE(out.find("--lr-scheduler must be constant, linear or cosine, got 'exp'"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/log.jsonl"));
  // what only the data can tell: a schedule that cannot run is an Error, named the same ways
  bad = c;
  bad.train.epochs = 1e300;
  EXPECT_NE(error_of([&] { TrainJob(bad).run(); }).find("train.epochs 1e+300 is too large"), std::string::npos);
  EXPECT_EQ(run_cli(cmd + "--epochs 1e300", &out), 1);
  EXPECT_NE(out.find("--epochs 1e+300 is too large"), std::string::npos) << out;
  bad = c;
  bad.output.adapter = "";
  EXPECT_NE(error_of([&] { TrainJob(bad).run(); }).find("output.adapter: an empty path"), std::string::npos);
  EXPECT_FALSE(exists(dir + "/adapter"));
}

TEST(TrainJob, ShouldStopSavesACheckpointAndTheRunResumesAsIfNeverStopped) {
  const std::string dir = temp_dir("train-job-stop");
  const std::string data = make_text(dir);
  TrainJobConfig c;
  c.model.path = golden_model("tiny-llama");
  c.model.byte_tokenizer = true;  // (the tiny model has no tokenizer.json)
  LoraFields lora;
  lora.r = 4;
  lora.lora_dropout = 0.1;
  c.adapter.lora = lora;
  c.data.train = data;
  c.data.max_length = 32;
  c.data.token_cache = false;
  c.train.batch_size = 4;
  c.train.steps = 7;
  c.train.lr = 1e-2;
  c.train.seed = 3;
  c.output.no_plot = true;
  TrainJobConfig full = c, cut = c;
  full.output.adapter = dir + "/full";
  full.output.log_file = dir + "/full.jsonl";
  cut.output.adapter = dir + "/cut";
  cut.output.log_file = dir + "/cut.jsonl";
  run_job(full);
  // asked to stop after step 3: checkpoint-3 and the adapter are saved
  const JobRun stopped = run_job(cut, [](const JobRun & r) { return r.steps == 3; });
  EXPECT_TRUE(stopped.result.stopped);
  EXPECT_TRUE(stopped.result.saved);
  EXPECT_EQ(stopped.result.step, 3);
  EXPECT_EQ(stopped.result.checkpoint, dir + "/cut-checkpoints/checkpoint-3");
  EXPECT_TRUE(exists(dir + "/cut/adapter_model.safetensors"));
  cut.resume_from_checkpoint = "latest";
  const JobRun resumed = run_job(cut);
  EXPECT_FALSE(resumed.result.stopped);
  EXPECT_EQ(resumed.steps, 4);
  EXPECT_NE(std::find(resumed.lines.begin(), resumed.lines.end(),
                      "resumed from " + dir + "/cut-checkpoints/checkpoint-3 at step 3"),
            resumed.lines.end());
  EXPECT_EQ(read_file(dir + "/cut/adapter_model.safetensors"), read_file(dir + "/full/adapter_model.safetensors"));
  const auto want = read_jsonl(dir + "/full.jsonl"), got = read_jsonl(dir + "/cut.jsonl");
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "log line " << i;
}

// Issue 25: a target_modules entry that matches no module is named (a warning when others matched, an error
// naming them all when none did), and the run says which modules it adapted and print_trainable_parameters'
// line.
TEST(TrainJob, UnmatchedTargetEntriesAreNamedAndTheRunSaysWhatItAdapted) {
  const std::string dir = temp_dir("train-job-targets");
  const std::string model = golden_model("tiny-llama");
  const int64_t layers = ModelConfig::load(model).num_layers;
  ASSERT_GE(layers, 1);
  const std::string ids = golden_case("train_lora_adamw") + "/input_ids.json";
  auto cmd = [&](const std::string & targets, const std::string & name) {
    return "train --model " + model + " --method lora --r 4 --target-modules " + targets + " --data " + ids +
           " --batch-size 3 --steps 1 --no-plot --no-progress --log-file " + dir + "/" + name + ".jsonl --out " + dir +
           "/" + name;
  };
  auto group = [&](const std::string & leaf) { return layers > 1 ? str(leaf, " x", layers) : leaf; };
  std::string out;
  // one entry misspelled: the others' modules are trained, and a warning names it
  ASSERT_EQ(run_cli(cmd("q_prj,v_proj", "one"), &out), 0) << out;
  EXPECT_NE(out.find("warning: adapter 'default': target_modules [q_prj] match no module"), std::string::npos) << out;
  EXPECT_NE(out.find(str("adapted modules (", layers, "): ", group("v_proj"), "\n")), std::string::npos) << out;
  EXPECT_EQ(out.find("q_proj"), std::string::npos) << out;
  EXPECT_NE(out.find("trainable params: "), std::string::npos) << out;
  EXPECT_NE(out.find(" || all params: "), std::string::npos) << out;
  EXPECT_NE(out.find(" || trainable%: "), std::string::npos) << out;
  // every entry matches: no warning, every group named
  ASSERT_EQ(run_cli(cmd("q_proj,v_proj,lm_head", "all"), &out), 0) << out;
  EXPECT_EQ(out.find("match no module"), std::string::npos) << out;
  EXPECT_NE(out.find(str("adapted modules (", 2 * layers + 1, "): ", group("q_proj"), ", ", group("v_proj"), ", lm_head\n")),
            std::string::npos)
      << out;
  // none matches: an error naming every entry (upstream's "Target modules {...} not found"), nothing trained
  EXPECT_EQ(run_cli(cmd("q_prj,v_prj", "none"), &out), 1) << out;
  EXPECT_NE(out.find("target modules [q_prj, v_prj] not found in the base model"), std::string::npos) << out;
  EXPECT_FALSE(exists(dir + "/none/adapter_model.safetensors"));
  // the library call warns too (PeftModel, not only the command line), and refuses when nothing matches
  AdapterConfig cfg = AdapterConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 2}, {"lora_alpha", 2}, {"target_modules", {"v_proj", "nothing_here"}}}, "test");
  ::testing::internal::CaptureStderr();
  PeftModel m(load_model(model), cfg);
  const std::string warned = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(warned.find("[nothing_here] match no module"), std::string::npos) << warned;
  EXPECT_EQ(static_cast<int64_t>(m.tuner_layers().size()), layers);
  AdapterConfig bad = AdapterConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 2}, {"lora_alpha", 2}, {"target_modules", {"nothing_here"}}}, "test");
  const std::string e = error_of([&] { PeftModel(load_model(model), bad); });
  EXPECT_NE(e.find("target modules [nothing_here] not found in the base model"), std::string::npos) << e;
}

}  // namespace
