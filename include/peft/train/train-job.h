// A training run as one job: what `peft train` does, for a C++ caller. One typed config (the model and
// its quantization, where the adapter comes from, the data, the schedule, the outputs, distribution),
// checked whole before any work, with errors naming the field ("train.lr must be a positive number");
// then the run: data read and split, the model loaded, the adapter built (from flags, a config file, an
// adapter folder or a checkpoint to resume), trained with evaluations, checkpoints, AdaLoRA's rank
// allocator, data parallelism and NaN recovery, and the adapter, the JSONL log and the loss plot saved.
// What it has to say goes to an observer (lines, steps, evaluations, checkpoints); it prints nothing.
//
//   peft::TrainJobConfig c;
//   c.model.path = "models/kjv-llama";
//   c.adapter.lora = peft::LoraFields{};            // r 8, alpha 8, PEFT's default targets
//   c.data.train = "book.txt";
//   c.data.eval_split = 0.05;
//   c.train.epochs = 2;
//   c.output.adapter = "run/adapter";
//   c.output.log_file = "run/log.jsonl";
//   peft::TrainJobResult r = peft::TrainJob(c).run();
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "peft/data/dataset.h"
#include "peft/dist/dist.h"
#include "peft/quant/quantize.h"
#include "peft/train/trainer.h"
#include "peft/util/options.h"
#include "peft/util/runtime.h"

namespace peft {

/// A new LoRA adapter from fields (PEFT's LoraConfig: task CAUSAL_LM, the rest its defaults).
struct LoraFields {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0;
  std::string target_modules;  // comma-separated module names, "all-linear", or "" (the model's defaults)
  bool use_dora = false;
  bool use_rslora = false;
};

/// Every setting of a run. Field names in errors are the paths below: "model.path", "adapter.lora.r",
/// "data.eval_split", "train.lr", "output.log_file", "dist.timeout_s", "resume_from_checkpoint".
struct TrainJobConfig {
  struct Model {
    std::string path;                // a Hugging Face checkpoint folder
    quant::QuantOptions quantize;    // quantize the base's Linear layers at load (QLoRA)
    at::ScalarType dtype = at::kFloat;  // the frozen base weights: at::kFloat or at::kBFloat16 (the adapter,
                                     // its gradients and the optimizer state stay float32)
    bool byte_tokenizer = false;     // text data tokenized as bytes (tiny test models without tokenizer.json;
                                     // without it such a folder is an error for text data)
  } model;
  /// Where the adapter comes from: exactly one of init, config and lora.
  struct Adapter {
    std::string init;                // a PEFT adapter folder to go on training
    std::string config;              // an adapter_config.json: a new adapter of any method
    std::optional<LoraFields> lora;  // a new LoRA adapter from these fields
    std::string loftq_from;          // a new LoRA adapter on a 4-bit base starts from LoftQ's factors of
                                     // this float checkpoint folder (replace_lora_weights_loftq)
  } adapter;
  struct Data {
    std::string train;               // .txt, .jsonl or .json (token ids); see peft/data/dataset.h
    Choice<DataFormat> format = DataFormat::auto_detect;  // of every data file
    std::string eval;                // evaluation data (same formats), or
    double eval_split = 0;           // this fraction of the training documents held out (seeded by train.seed)
    int64_t max_length = 0;          // tokens per sequence; 0: the model's positions, at most 1024
    bool packing = false;            // pack documents into max_length blocks (else: text joined, records padded)
    bool token_cache = true;         // the token cache beside a .txt / .jsonl file
  } data;
  /// The schedule and the checkpoints. Defaults here: lr 2e-4, one epoch (steps 0 and epochs 0: 1 epoch);
  /// checkpoint_dir "" is output.adapter + "-checkpoints"; rank, world_size and virtual_tokens are set by
  /// the job (from dist.env and the adapter).
  TrainOptions train = [] {
    TrainOptions t;
    t.lr = 2e-4;
    t.steps = 0;
    return t;
  }();
  /// Continue the same run from this checkpoint folder, or "latest" (train.checkpoint_dir's newest; none
  /// there: a new run). The adapter source must still be given, as for the run that wrote it.
  std::string resume_from_checkpoint;
  struct Output {
    std::string adapter;             // the trained adapter's folder
    std::string log_file;            // JSON lines: one object per step and per evaluation
    std::string plot;                // the loss plot (PNG); "": the log file's name with .png
    bool no_plot = false;            // no loss plot
    bool allow_nonfinite = false;    // save the adapter even if it holds NaN or Inf values
  } output;
  struct Dist {
    DistEnv env;                     // this process's rank and world (DistEnv::from_env() for torchrun's variables)
    double timeout_s = 300;          // seconds to wait for peers and collectives
  } dist;
  bool compile = false;              // train through the compiled model
  bool gradient_checkpointing = false;  // recompute each decoder layer in the backward pass (not with compile)
  RuntimeOptions runtime;            // threads, applied when the work starts
};

/// What a run reports while it runs. Every member is optional. Lines, steps, evaluations and checkpoints
/// come from rank 0 only; on_start, on_finish and should_stop are called on every rank.
struct TrainJobObserver {
  std::function<void(const std::string & line)> message;  // what the run has to say, one line at a time
  std::function<void(int64_t total_steps, int64_t first_step)> on_start;  // just before the first step
  std::function<void(const StepLog &)> on_step;
  std::function<void(const EvalLog &)> on_evaluate;
  std::function<void(const std::string & dir, int64_t step)> on_save;  // a checkpoint written
  std::function<void()> on_finish;  // the steps are over (done, stopped or failed); before the adapter is saved
  /// Asked before each step: true stops the run there (a signal, a time limit): a checkpoint of the steps
  /// since the last one and the adapter are saved. With several ranks, any rank's true stops them all.
  std::function<bool()> should_stop;
};

struct TrainJobResult {
  bool stopped = false;        // should_stop ended the run early
  bool saved = false;          // this process saved the adapter to output.adapter (rank 0, after a step)
  int64_t step = 0;            // optimizer steps done
  int64_t total_steps = 0;     // of the whole run
  std::string checkpoint;      // the newest checkpoint written or resumed from ("" if none)
  std::vector<EvalLog> evals;  // every evaluation (rank 0)
};

class TrainJob {
 public:
  /// Fills in the defaults and checks every field (OptionError naming it as `namer` names it; without
  /// one, by its path: "train.lr"). Reads and writes nothing.
  explicit TrainJob(TrainJobConfig config, FieldNamer namer = {});
  /// The config with its defaults filled in.
  const TrainJobConfig & config() const { return config_; }
  /// Do the run. Paths, locks (one run per output: a second one into the same output.adapter or
  /// train.checkpoint_dir fails at once), the model's limits and the whole data are checked before the
  /// model is loaded. A non-finite loss or gradient norm throws NonFiniteError after rank 0 has saved the
  /// adapter of the last good step; other errors throw peft::Error naming the field, file or record.
  TrainJobResult run(const TrainJobObserver & observer = {});

 private:
  TrainJobConfig config_;
  FieldNamer namer_;
  bool checkpoint_dir_given_ = false;  // (its own lock; the default one lies in output.adapter's name)
  std::string name(const std::string & field) const { return field_name(namer_, field); }
};

}  // namespace peft
