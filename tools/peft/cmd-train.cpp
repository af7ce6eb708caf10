// peft train: fine-tune an adapter on a user's data (.txt, .jsonl records or chats, token ids): epochs or
// steps, accumulation, AdamW or SGD, evaluation, checkpoints with exact resume, a JSONL log, a progress
// bar and a loss plot. The run is peft::TrainJob (src/train/train-job.cpp); this file turns the flags into
// its config (and the config's field names back into flags, for errors), starts the workers of
// --nproc-per-node, handles SIGINT / SIGTERM and prints.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "launch.h"
#include "peft/dist/dist.h"
#include "peft/error.h"
#include "peft/train/progress.h"
#include "peft/train/train-job.h"
#include "quant-options.h"

namespace peft::cli {

namespace {

// SIGINT / SIGTERM during training: the first sets the flag (the loop finishes its step, saves a
// checkpoint and the adapter, and the command exits 128 + the signal); a second exits at once.
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {
    static const char msg[] = "\nsecond signal: stopping now, nothing more is saved\n";
    [[maybe_unused]] ssize_t n = ::write(2, msg, sizeof msg - 1);
    ::_exit(128 + sig);
  }
  g_stop_signal = sig;
  static const char msg[] =
      "\nstopping after this step: a checkpoint and the adapter will be saved (signal again to stop at once)\n";
  [[maybe_unused]] ssize_t n = ::write(2, msg, sizeof msg - 1);
}

// The handlers for SIGINT and SIGTERM while it lives; the previous ones after.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignals(const StopSignals &) = delete;
  StopSignals & operator=(const StopSignals &) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

const char * signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"; }

// The flag that sets a field of TrainJobConfig, for errors: "train.lr" -> "--lr".
std::string flag_of(const std::string & field) {
  static const std::map<std::string, std::string> special = {
      {"model.path", "--model"},          {"adapter.init", "--adapter-init"},
      {"adapter.config", "--adapter-config"}, {"adapter.lora", "--method"},
      {"data.train", "--data"},           {"data.format", "--data-format"},
      {"data.eval", "--eval-data"},       {"data.token_cache", "--no-token-cache"},
      {"train.beta1", "--betas"},         {"train.beta2", "--betas"},
      {"output.adapter", "--out"},        {"dist.timeout_s", "--dist-timeout"}};
  if (auto it = special.find(field); it != special.end()) return it->second;
  const std::string quant = "model.quantize.";
  if (field.compare(0, quant.size(), quant) == 0) return quant_flag(field.substr(quant.size()));
  std::string flag = "--" + field.substr(field.rfind('.') + 1);  // train.eval_steps -> --eval-steps
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

}  // namespace

Runner add_train(CLI::App & app) {
  struct Opts {
    std::string method, optimizer = "adamw", lr_scheduler = "constant", data_format = "auto", betas, dtype = "float32";
    bool no_shuffle = false, no_token_cache = false, no_progress = false, chunked_loss = false;
    TrainJobConfig job;
    LoraFields lora;
    LaunchOptions launch;
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  TrainJobConfig & j = o->job;
  TrainOptions & t = j.train;
  auto * cmd = app.add_subcommand("train", "fine-tune an adapter on text, JSONL records or chats, or token ids");
  cmd->add_option("--model", j.model.path, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--dtype", o->dtype, kDtypeHelp);
  cmd->add_option("--adapter-init", j.adapter.init, "start from this PEFT adapter folder");
  cmd->add_option("--adapter-config", j.adapter.config,
                  "a new adapter from this adapter_config.json (any method: LORA, IA3, LOHA, LOKR, OFT, BOFT, VERA, ...)");
  cmd->add_option("--method", o->method, "adapter method for a new adapter from flags (lora)");
  cmd->add_option("--r", o->lora.r, "rank");
  cmd->add_option("--lora-alpha", o->lora.lora_alpha, "LoRA alpha (scale = alpha / r)");
  cmd->add_option("--lora-dropout", o->lora.lora_dropout, "dropout on the adapter input");
  cmd->add_option("--target-modules", o->lora.target_modules, "comma-separated module names, or all-linear");
  cmd->add_flag("--use-dora", o->lora.use_dora, "DoRA");
  cmd->add_flag("--use-rslora", o->lora.use_rslora, "rsLoRA scaling alpha / sqrt(r)");
  cmd->add_option("--loftq-from", j.adapter.loftq_from,
                  "a new LoRA adapter on a 4-bit base (--quantize nf4/fp4 or a 4-bit checkpoint): start from LoftQ's "
                  "factors, computed from the float weights of this checkpoint folder (PEFT's replace_lora_weights_loftq; "
                  "with --quantize, usually the --model folder itself)");
  // data
  cmd->add_option("--data", j.data.train,
                  "training data: .txt (plain text), .jsonl (text, prompt/completion or messages records), "
                  ".json (token-id rows)")->required();
  cmd->add_option("--data-format", o->data_format, "auto (from the extension) | txt | jsonl | ids");
  cmd->add_flag("--byte-tokenizer", j.model.byte_tokenizer,
                "tokenize text as bytes (tiny test models without tokenizer.json; without it such a model is an error for text data)");
  cmd->add_option("--eval-data", j.data.eval, "evaluation data (same formats)");
  cmd->add_option("--eval-split", j.data.eval_split, "hold out this fraction of the training documents for evaluation");
  cmd->add_option("--max-length", j.data.max_length,
                  "tokens per sequence: truncation of records, block size of text (default: the model's positions, at most 1024)");
  cmd->add_flag("--packing", j.data.packing,
                "pack documents into --max-length blocks (positions restart, no attention across documents)");
  cmd->add_flag("--no-token-cache", o->no_token_cache, "tokenize in memory; no token cache beside the data");
  // the schedule
  cmd->add_option("--batch-size", t.batch_size, "sequences per micro-batch (default 8)");
  cmd->add_option("--steps", t.steps, "optimizer steps (instead of --epochs)");
  cmd->add_option("--epochs", t.epochs, "passes over the training data (default 1)");
  cmd->add_option("--gradient-accumulation-steps", t.gradient_accumulation_steps,
                  "micro-batches per optimizer step (default 1)");
  cmd->add_option("--optimizer", o->optimizer, "adamw (default) | sgd");
  cmd->add_option("--lr", t.lr, "learning rate (default 2e-4)");
  cmd->add_option("--weight-decay", t.weight_decay, "weight decay (default 0.01 with adamw, 0 with sgd)");
  cmd->add_option("--betas", o->betas, "AdamW betas, e.g. 0.9,0.999");
  cmd->add_option("--eps", t.eps, "AdamW epsilon");
  cmd->add_option("--momentum", t.momentum, "SGD momentum");
  cmd->add_option("--lr-scheduler", o->lr_scheduler, "constant | linear | cosine");
  cmd->add_option("--warmup-steps", t.warmup_steps, "linear warm-up steps");
  cmd->add_option("--max-grad-norm", t.max_grad_norm, "clip the gradient norm (0 = off)");
  cmd->add_flag("--chunked-loss", o->chunked_loss,
                "compute the loss from the hidden states a chunk of tokens at a time (no [tokens, vocab] logits; "
                "chunks of about 64 MiB of logits; same loss and gradients)");
  cmd->add_option("--loss-chunk", t.loss_chunk, "tokens per chunk of --chunked-loss (0 = the plain loss)");
  cmd->add_flag("--no-shuffle", o->no_shuffle, "take sequences in order");
  cmd->add_option("--seed", t.seed, "seed for shuffling, dropout and adapter init");
  // evaluation, checkpoints, reporting
  cmd->add_option("--eval-steps", t.eval_steps, "evaluate every N steps (and always at the end)");
  cmd->add_flag("--eval-on-start", t.eval_on_start, "evaluate before the first step too");
  cmd->add_option("--save-steps", t.save_steps, "write a checkpoint every N steps");
  cmd->add_option("--save-total-limit", t.save_total_limit, "keep only the newest K checkpoints");
  cmd->add_option("--checkpoint-dir", t.checkpoint_dir, "where checkpoint-<step>/ folders go, with --save-steps and when SIGINT/SIGTERM stops the run (default: OUT-checkpoints)");
  cmd->add_option("--resume-from-checkpoint", j.resume_from_checkpoint,
                  "continue the same run from CHECKPOINT_DIR/checkpoint-<step>, or 'latest'");
  cmd->add_option("--allow-changed", t.allow_changed,
                  "with --resume-from-checkpoint: fields that may differ from the checkpoint's run, comma-separated "
                  "(lr, steps, epochs, lr_scheduler, warmup_steps: extend a run or change its schedule)")
      ->delimiter(',');
  cmd->add_option("--log-file", j.output.log_file, "JSON lines: one object per step and per evaluation")->required();
  cmd->add_option("--plot", j.output.plot, "loss plot PNG (default: the log file with .png)");
  cmd->add_flag("--no-plot", j.output.no_plot, "no loss plot");
  cmd->add_flag("--no-progress", o->no_progress, "plain lines instead of a progress bar on a terminal");
  cmd->add_option("--out", j.output.adapter, "where to save the trained adapter")->required();
  // data parallelism (torchrun's environment is read too: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
  cmd->add_option("--nproc-per-node", o->launch.nproc_per_node, "start N worker processes on this machine");
  cmd->add_option("--nnodes", o->launch.nnodes, "machines taking part (each runs this command)");
  cmd->add_option("--node-rank", o->launch.node_rank, "this machine's index among --nnodes");
  cmd->add_option("--master-addr", o->launch.master_addr, "rank 0's machine (default 127.0.0.1)");
  cmd->add_option("--master-port", o->launch.master_port, "rendezvous port (default: a free one on one machine)");
  cmd->add_option("--dist-timeout", j.dist.timeout_s, "seconds to wait for peers and collectives (default 300)");
  cmd->add_flag("--compile", j.compile, "train through the compiled model");
  cmd->add_flag("--gradient-checkpointing", j.gradient_checkpointing,
                "keep only each decoder layer's input and recompute the layer in the backward pass (less memory, "
                "about a third more compute; the same gradients)");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  cmd->add_flag("--allow-nonfinite", j.output.allow_nonfinite, "save the adapter even if it holds NaN or Inf values");
  return [o, cmd]() {
    // ---- the flags into the job's config: what only flags can get wrong is checked here (flags given
    // that do not apply, text to parse); the values are checked by TrainJob, named by flag_of ----
    TrainJobConfig & j = o->job;
    TrainOptions & t = j.train;
    const auto & L = o->launch;
    PEFT_USAGE(L.nproc_per_node >= 1 && L.nnodes >= 1 && L.node_rank >= 0 && L.node_rank < L.nnodes,
               "--nproc-per-node and --nnodes must be >= 1, --node-rank in [0, --nnodes)");
    PEFT_USAGE(L.master_port >= 0 && L.master_port <= 65535, "--master-port must be a port number");
    t.optimizer = parse_choice<OptimizerKind>(o->optimizer, "--optimizer");
    t.lr_scheduler = parse_choice<LrScheduler>(o->lr_scheduler, "--lr-scheduler");
    j.data.format = parse_choice<DataFormat>(o->data_format, "--data-format");
    const auto lora_flags = given(*cmd, {"--r", "--lora-alpha", "--lora-dropout", "--target-modules", "--use-dora",
                                         "--use-rslora"});
    if (!o->method.empty()) {
      PEFT_USAGE(o->method == "lora", "--method: only lora is supported here, got '", o->method, "'");
      j.adapter.lora = o->lora;
    } else if (j.adapter.init.empty() != j.adapter.config.empty()) {  // (neither or both: TrainJob says so)
      PEFT_USAGE(lora_flags.empty(), lora_flags.empty() ? "" : lora_flags.front(), " does not apply with ",
                 j.adapter.init.empty() ? "--adapter-config" : "--adapter-init", " (the adapter's own config decides it)");
    }
    const auto adam_flags = given(*cmd, {"--betas", "--eps"});
    PEFT_USAGE(t.optimizer == OptimizerKind::adamw || adam_flags.empty(), adam_flags.empty() ? "" : adam_flags.front(),
               " does not apply with --optimizer sgd");
    PEFT_USAGE(t.optimizer == OptimizerKind::sgd || cmd->count("--momentum") == 0,
               "--momentum does not apply with --optimizer adamw");
    if (t.optimizer == OptimizerKind::sgd && cmd->count("--weight-decay") == 0) t.weight_decay = 0;
    PEFT_USAGE(cmd->count("--allow-changed") == 0 || !j.resume_from_checkpoint.empty(),
               "--allow-changed applies only with --resume-from-checkpoint");
    PEFT_USAGE(!(cmd->count("--steps") && cmd->count("--epochs")), "give --steps or --epochs, not both");
    PEFT_USAGE(cmd->count("--steps") == 0 || t.steps > 0, "--steps must be >= 1, got ", t.steps);
    PEFT_USAGE(cmd->count("--epochs") == 0 || t.epochs > 0, "--epochs must be > 0, got ", t.epochs);
    PEFT_USAGE(!o->chunked_loss || cmd->count("--loss-chunk") == 0 || t.loss_chunk > 0,
               "--loss-chunk must be > 0 with --chunked-loss");
    if (o->chunked_loss && cmd->count("--loss-chunk") == 0) t.loss_chunk = -1;  // sized from the vocabulary
    if (!o->betas.empty()) {
      std::vector<double> b;
      std::stringstream ss(o->betas);
      for (std::string item; std::getline(ss, item, ',');) {
        size_t used = 0;
        try {
          b.push_back(std::stod(item, &used));
        } catch (const std::logic_error &) {
          used = std::string::npos;
        }
        PEFT_USAGE(used == item.size(), "--betas must be numbers like 0.9,0.999, got '", o->betas, "'");
      }
      PEFT_USAGE(b.size() == 2, "--betas must be two numbers in [0, 1) like 0.9,0.999, got '", o->betas, "'");
      t.beta1 = b[0];
      t.beta2 = b[1];
    }
    t.shuffle = !o->no_shuffle;
    j.data.token_cache = !o->no_token_cache;
    j.model.quantize = parse_quant_flags(o->quant);
    j.model.dtype = resolve_dtype(o->dtype, j.model.path);
    j.runtime = runtime_options(o->common);
    if ((L.nproc_per_node > 1 || L.nnodes > 1) && std::getenv("RANK") == nullptr) {
      PEFT_USAGE(L.nnodes == 1 || L.master_port > 0, "--nnodes > 1 needs --master-port (and --master-addr)");
      TrainJob check(j, flag_of);  // the settings are checked once here, before any worker starts
      return launch_workers(L);    // each worker runs this command again, with RANK set
    }
    j.dist.env = DistEnv::from_env();
    const bool main_rank = j.dist.env.rank == 0;
    TrainJob job(j, flag_of);

    // ---- the run: lines and the progress on stderr; SIGINT / SIGTERM stop it gracefully ----
    std::unique_ptr<ProgressReport> progress;
    std::unique_ptr<StopSignals> signals;
    TrainJobObserver obs;
    obs.message = [](const std::string & line) { std::cerr << line << "\n"; };
    obs.on_start = [&](int64_t total, int64_t first) {
      progress = std::make_unique<ProgressReport>(total, first, std::cerr, stderr_is_terminal() && !o->no_progress);
      // SIGINT / SIGTERM from here on stop the run after its step (see on_stop_signal); every rank stops
      // at the same step (the job sums the request across ranks before each step)
      signals = std::make_unique<StopSignals>();
    };
    obs.on_step = [&](const StepLog & s) { progress->step(s); };
    obs.on_evaluate = [&](const EvalLog & e) { progress->eval(e); };
    obs.on_save = [&](const std::string & dir, int64_t) { progress->saved(dir); };
    obs.on_finish = [&] { progress->finish(); };
    obs.should_stop = [] { return g_stop_signal != 0; };
    const TrainJobResult r = job.run(obs);
    if (!r.stopped) return 0;
    const int sig = g_stop_signal != 0 ? g_stop_signal : SIGTERM;  // (another rank's signal)
    if (!main_rank) return 128 + sig;
    const std::string & out = job.config().output.adapter;
    if (r.step == 0) {
      std::cerr << "stopped by " << signal_name(sig) << " before the first step: nothing was saved\n";
    } else if (r.checkpoint.empty()) {
      std::cerr << "stopped by " << signal_name(sig) << " after step " << r.step << " of " << r.total_steps
                << ": saved the adapter to " << out << " (no checkpoint: AdaLoRA runs cannot be resumed yet)\n";
    } else {
      std::cerr << "stopped by " << signal_name(sig) << " after step " << r.step << " of " << r.total_steps
                << ": saved the checkpoint " << r.checkpoint
                << " (continue with --resume-from-checkpoint latest) and the adapter to " << out << "\n";
    }
    return 128 + sig;
  };
}

}  // namespace peft::cli
