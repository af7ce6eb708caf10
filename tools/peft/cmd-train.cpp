// peft train: fine-tune an adapter on a user's data (.txt, .jsonl records or chats, token ids): epochs or
// steps, accumulation, AdamW or SGD, evaluation, checkpoints with exact resume, a JSONL log, a progress
// bar and a loss plot.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>

#include "commands.h"
#include "launch.h"
#include "peft/dist/dist.h"
#include "common.h"
#include "quant-options.h"
#include "peft/data/batches.h"
#include "peft/data/dataset.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/tuners/lora-loftq.h"
#include "peft/train/plot.h"
#include "peft/train/progress.h"
#include "peft/train/trainer.h"
#include "peft/tuners/adalora.h"

namespace peft::cli {

namespace {

std::vector<double> parse_numbers(const std::string & flag, const std::string & text) {
  std::vector<double> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      out.push_back(std::stod(item, &used));
      PEFT_USAGE(used == item.size(), flag, " must be numbers like 0.9,0.999, got '", text, "'");
    } catch (const std::logic_error &) {
      throw UsageError(str(flag, " must be numbers like 0.9,0.999, got '", text, "'"));
    }
  }
  return out;
}

// The documents of a data file for this model; token-id files are checked row by row as given.
std::shared_ptr<TokenDataset> load_data(const std::string & path, const std::string & format, const TextEncoder & enc,
                                        const ModelConfig & cfg, bool cache) {
  DataOptions d;
  d.format = data_format_of(path, format);
  d.cache = cache;
  if (d.format == "ids") {
    auto rows = read_ragged_ids_json(path);
    check_ids(path, rows, cfg);
    return std::make_shared<TokenDataset>(TokenDataset::from_rows(rows, path));
  }
  auto ds = std::make_shared<TokenDataset>(read_dataset(path, enc, d));
  PEFT_CHECK(ds->max_id() < cfg.vocab_size, path, ": token id ", ds->max_id(), " (from the tokenizer) is outside the ",
             "model's vocabulary [0, ", cfg.vocab_size, ")");
  return ds;
}

// One trainer per output: a lock beside the folder (".<name>.train.lock", not FolderWriter's own lock,
// which each save takes), held for the whole run. A second `peft train` into the same --out or
// --checkpoint-dir stops at start, not at its first save.
class RunLock {
 public:
  RunLock(const std::string & flag, const std::string & target) {
    const std::string path = parent_of(target) + "/." + base_of(target) + ".train.lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    PEFT_CHECK(fd_ >= 0, flag, " '", target, "': cannot create the lock file '", path, "': ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      fd_ = -1;
      fail(str(flag, " '", target, "' is being trained into by another process (lock '", path,
               "'); wait for that run to end, or give another ", flag));
    }
  }
  ~RunLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock (the file stays: removing it would race)
  }
  RunLock(const RunLock &) = delete;
  RunLock & operator=(const RunLock &) = delete;

 private:
  int fd_ = -1;
};

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

}  // namespace

Runner add_train(CLI::App & app) {
  struct Opts {
    std::string model, adapter_init, adapter_config, method, target_modules, data, data_format = "auto", eval_data,
        optimizer = "adamw", log_file, out, betas, checkpoint_dir, resume, plot, loftq_from;
    int64_t r = 8, max_length = 0;
    double lora_alpha = 8, lora_dropout = 0, eval_split = 0;
    bool use_dora = false, use_rslora = false, no_shuffle = false, compile = false, allow_nonfinite = false,
         packing = false, no_token_cache = false, no_plot = false, no_progress = false;
    TrainOptions train;
    LaunchOptions launch;
    double dist_timeout = 300;
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  o->train.weight_decay = 1e-2;
  o->train.lr = 2e-4;
  o->train.steps = 0;
  auto * cmd = app.add_subcommand("train", "fine-tune an adapter on text, JSONL records or chats, or token ids");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--adapter-init", o->adapter_init, "start from this PEFT adapter folder");
  cmd->add_option("--adapter-config", o->adapter_config,
                  "a new adapter from this adapter_config.json (any method: LORA, IA3, LOHA, LOKR, OFT, BOFT, VERA, ...)");
  cmd->add_option("--method", o->method, "adapter method for a new adapter from flags (lora)");
  cmd->add_option("--r", o->r, "rank");
  cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha (scale = alpha / r)");
  cmd->add_option("--lora-dropout", o->lora_dropout, "dropout on the adapter input");
  cmd->add_option("--target-modules", o->target_modules, "comma-separated module names, or all-linear");
  cmd->add_flag("--use-dora", o->use_dora, "DoRA");
  cmd->add_flag("--use-rslora", o->use_rslora, "rsLoRA scaling alpha / sqrt(r)");
  cmd->add_option("--loftq-from", o->loftq_from,
                  "a new LoRA adapter on a 4-bit base (--quantize nf4/fp4 or a 4-bit checkpoint): start from LoftQ's "
                  "factors, computed from the float weights of this checkpoint folder (PEFT's replace_lora_weights_loftq; "
                  "with --quantize, usually the --model folder itself)");
  // data
  cmd->add_option("--data", o->data,
                  "training data: .txt (plain text), .jsonl (text, prompt/completion or messages records), "
                  ".json (token-id rows)")->required();
  cmd->add_option("--data-format", o->data_format, "auto (from the extension) | txt | jsonl | ids");
  cmd->add_option("--eval-data", o->eval_data, "evaluation data (same formats)");
  cmd->add_option("--eval-split", o->eval_split, "hold out this fraction of the training documents for evaluation");
  cmd->add_option("--max-length", o->max_length,
                  "tokens per sequence: truncation of records, block size of text (default: the model's positions, at most 1024)");
  cmd->add_flag("--packing", o->packing,
                "pack documents into --max-length blocks (positions restart, no attention across documents)");
  cmd->add_flag("--no-token-cache", o->no_token_cache, "tokenize in memory; no token cache beside the data");
  // the schedule
  cmd->add_option("--batch-size", o->train.batch_size, "sequences per micro-batch (default 8)");
  cmd->add_option("--steps", o->train.steps, "optimizer steps (instead of --epochs)");
  cmd->add_option("--epochs", o->train.epochs, "passes over the training data (default 1)");
  cmd->add_option("--gradient-accumulation-steps", o->train.gradient_accumulation_steps,
                  "micro-batches per optimizer step (default 1)");
  cmd->add_option("--optimizer", o->optimizer, "adamw (default) | sgd");
  cmd->add_option("--lr", o->train.lr, "learning rate (default 2e-4)");
  cmd->add_option("--weight-decay", o->train.weight_decay, "weight decay (default 0.01 with adamw, 0 with sgd)");
  cmd->add_option("--betas", o->betas, "AdamW betas, e.g. 0.9,0.999");
  cmd->add_option("--eps", o->train.eps, "AdamW epsilon");
  cmd->add_option("--momentum", o->train.momentum, "SGD momentum");
  cmd->add_option("--lr-scheduler", o->train.lr_scheduler, "constant | linear | cosine");
  cmd->add_option("--warmup-steps", o->train.warmup_steps, "linear warm-up steps");
  cmd->add_option("--max-grad-norm", o->train.max_grad_norm, "clip the gradient norm (0 = off)");
  cmd->add_flag("--no-shuffle", o->no_shuffle, "take sequences in order");
  cmd->add_option("--seed", o->train.seed, "seed for shuffling, dropout and adapter init");
  // evaluation, checkpoints, reporting
  cmd->add_option("--eval-steps", o->train.eval_steps, "evaluate every N steps (and always at the end)");
  cmd->add_flag("--eval-on-start", o->train.eval_on_start, "evaluate before the first step too");
  cmd->add_option("--save-steps", o->train.save_steps, "write a checkpoint every N steps");
  cmd->add_option("--save-total-limit", o->train.save_total_limit, "keep only the newest K checkpoints");
  cmd->add_option("--checkpoint-dir", o->checkpoint_dir, "where checkpoint-<step>/ folders go, with --save-steps and when SIGINT/SIGTERM stops the run (default: OUT-checkpoints)");
  cmd->add_option("--resume-from-checkpoint", o->resume,
                  "continue the same run from CHECKPOINT_DIR/checkpoint-<step>, or 'latest'");
  cmd->add_option("--log-file", o->log_file, "JSON lines: one object per step and per evaluation")->required();
  cmd->add_option("--plot", o->plot, "loss plot PNG (default: the log file with .png)");
  cmd->add_flag("--no-plot", o->no_plot, "no loss plot");
  cmd->add_flag("--no-progress", o->no_progress, "plain lines instead of a progress bar on a terminal");
  cmd->add_option("--out", o->out, "where to save the trained adapter")->required();
  // data parallelism (torchrun's environment is read too: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
  cmd->add_option("--nproc-per-node", o->launch.nproc_per_node, "start N worker processes on this machine");
  cmd->add_option("--nnodes", o->launch.nnodes, "machines taking part (each runs this command)");
  cmd->add_option("--node-rank", o->launch.node_rank, "this machine's index among --nnodes");
  cmd->add_option("--master-addr", o->launch.master_addr, "rank 0's machine (default 127.0.0.1)");
  cmd->add_option("--master-port", o->launch.master_port, "rendezvous port (default: a free one on one machine)");
  cmd->add_option("--dist-timeout", o->dist_timeout, "seconds to wait for peers and collectives (default 300)");
  cmd->add_flag("--compile", o->compile, "train through the compiled model");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  cmd->add_flag("--allow-nonfinite", o->allow_nonfinite, "save the adapter even if it holds NaN or Inf values");
  return [o, cmd]() {
    // ---- every argument, path and data record is checked before the model is loaded ----
    auto & t = o->train;
    const auto & L = o->launch;
    PEFT_USAGE(L.nproc_per_node >= 1 && L.nnodes >= 1 && L.node_rank >= 0 && L.node_rank < L.nnodes,
               "--nproc-per-node and --nnodes must be >= 1, --node-rank in [0, --nnodes)");
    PEFT_USAGE(L.master_port >= 0 && L.master_port <= 65535, "--master-port must be a port number");
    PEFT_USAGE(o->dist_timeout > 0, "--dist-timeout must be > 0");
    if ((L.nproc_per_node > 1 || L.nnodes > 1) && std::getenv("RANK") == nullptr) {
      PEFT_USAGE(L.nnodes == 1 || L.master_port > 0, "--nnodes > 1 needs --master-port (and --master-addr)");
      return launch_workers(L);  // each worker runs this command again, with RANK set
    }
    const DistEnv env = DistEnv::from_env();
    const bool main_rank = env.rank == 0;
    t.rank = env.rank;
    t.world_size = env.world_size;
    PEFT_USAGE(o->optimizer == "adamw" || o->optimizer == "sgd", "--optimizer must be adamw or sgd, got '",
               o->optimizer, "'");
    t.optimizer = o->optimizer;
    PEFT_USAGE((!o->adapter_init.empty()) + (!o->method.empty()) + (!o->adapter_config.empty()) == 1,
               "give exactly one of --adapter-init, --adapter-config and --method");
    const auto lora_flags = given(*cmd, {"--r", "--lora-alpha", "--lora-dropout", "--target-modules", "--use-dora",
                                         "--use-rslora"});
    PEFT_USAGE(o->method.empty() ? lora_flags.empty() : true, lora_flags.empty() ? "" : lora_flags.front(),
               " does not apply with ", o->adapter_init.empty() ? "--adapter-config" : "--adapter-init",
               " (the adapter's own config decides it)");
    const auto adam_flags = given(*cmd, {"--betas", "--eps"});
    PEFT_USAGE(o->optimizer == "adamw" || adam_flags.empty(), adam_flags.empty() ? "" : adam_flags.front(),
               " does not apply with --optimizer sgd");
    PEFT_USAGE(o->optimizer == "sgd" || cmd->count("--momentum") == 0, "--momentum does not apply with --optimizer adamw");
    if (o->optimizer == "sgd" && cmd->count("--weight-decay") == 0) t.weight_decay = 0;
    PEFT_USAGE(!(cmd->count("--steps") && cmd->count("--epochs")), "give --steps or --epochs, not both");
    if (t.steps == 0 && t.epochs == 0) t.epochs = 1;
    PEFT_USAGE(t.batch_size >= 1 && t.gradient_accumulation_steps >= 1,
               "--batch-size and --gradient-accumulation-steps must be >= 1");
    PEFT_USAGE(t.steps >= 0 && std::isfinite(t.epochs) && t.epochs >= 0, "--steps and --epochs must be > 0");
    PEFT_USAGE(std::isfinite(t.lr) && t.lr > 0, "--lr must be a positive number");
    PEFT_USAGE(t.warmup_steps >= 0 && t.max_grad_norm >= 0 && t.weight_decay >= 0 && t.eps > 0,
               "--warmup-steps, --max-grad-norm and --weight-decay must be >= 0, --eps > 0");
    PEFT_USAGE(t.momentum >= 0 && t.momentum < 1, "--momentum must be in [0, 1)");
    PEFT_USAGE(o->r >= 1, "--r must be >= 1");
    PEFT_USAGE(o->lora_dropout >= 0 && o->lora_dropout < 1, "--lora-dropout must be in [0, 1)");
    PEFT_USAGE(o->eval_split >= 0 && o->eval_split < 1, "--eval-split must be in [0, 1)");
    PEFT_USAGE(o->eval_split == 0 || o->eval_data.empty(), "give --eval-data or --eval-split, not both");
    const bool has_eval = o->eval_split > 0 || !o->eval_data.empty();
    PEFT_USAGE(has_eval || (t.eval_steps == 0 && !t.eval_on_start),
               "--eval-steps and --eval-on-start need --eval-data or --eval-split");
    PEFT_USAGE(t.eval_steps >= 0 && t.save_steps >= 0 && t.save_total_limit >= 0,
               "--eval-steps, --save-steps and --save-total-limit must be >= 0");
    PEFT_USAGE(!(o->no_plot && cmd->count("--plot")), "give --plot or --no-plot, not both");
    if (!o->betas.empty()) {
      auto b = parse_numbers("--betas", o->betas);
      PEFT_USAGE(b.size() == 2 && b[0] >= 0 && b[0] < 1 && b[1] >= 0 && b[1] < 1,
                 "--betas must be two numbers in [0, 1) like 0.9,0.999, got '", o->betas, "'");
      t.beta1 = b[0];
      t.beta2 = b[1];
    }
    t.shuffle = !o->no_shuffle;
    t.checkpoint_dir = o->checkpoint_dir.empty() ? o->out + "-checkpoints" : o->checkpoint_dir;
    if (o->resume == "latest") {
      o->resume = latest_checkpoint(t.checkpoint_dir);
      // as transformers' Trainer: nothing to resume is a new run (the same command works the first time too)
      if (o->resume.empty() && main_rank) {
        std::cerr << "--resume-from-checkpoint latest: no complete checkpoint in '" << t.checkpoint_dir
                  << "'; starting a new run\n";
      }
    }
    const std::vector<std::string> inputs = {o->model, o->data, o->eval_data, o->adapter_init, o->adapter_config,
                                             o->resume};
    check_output_folder("--out", o->out, inputs);
    std::vector<std::string> more = inputs;
    more.push_back(o->out);
    {
      // (checkpoints are written with --save-steps and when a signal stops the run; the checkpoint
      // resumed from may lie in it: it is read before anything is written there)
      std::vector<std::string> others(more);
      others.erase(std::find(others.begin(), others.end(), o->resume));
      check_output_folder("--checkpoint-dir", t.checkpoint_dir, others);
    }
    more.push_back(t.checkpoint_dir);
    check_output_file("--log-file", o->log_file, more);
    if (o->plot.empty() && !o->no_plot) {
      const std::string & l = o->log_file;
      o->plot = (l.size() > 6 && l.compare(l.size() - 6, 6, ".jsonl") == 0 ? l.substr(0, l.size() - 6) : l) + ".png";
    }
    if (!o->no_plot) {
      more.push_back(o->log_file);
      check_output_file("--plot", o->plot, more);
    }
    // one trainer per output, found at start (rank 0 writes; the locks are held until the command ends;
    // the default checkpoint folder is --out's own)
    std::unique_ptr<RunLock> out_lock, checkpoint_lock;
    if (main_rank) {
      out_lock = std::make_unique<RunLock>("--out", o->out);
      if (!o->checkpoint_dir.empty()) checkpoint_lock = std::make_unique<RunLock>("--checkpoint-dir", t.checkpoint_dir);
    }
    const ModelConfig mcfg = ModelConfig::load(o->model);
    if (o->max_length == 0) o->max_length = std::min<int64_t>(mcfg.max_position_embeddings, 1024);
    PEFT_USAGE(o->max_length >= 2 && o->max_length <= mcfg.max_position_embeddings, "--max-length must be in [2, ",
               mcfg.max_position_embeddings, "] (the model's positions), got ", o->max_length);
    const TextEncoder enc = TextEncoder::for_model(o->model, mcfg);
    auto data = load_data(o->data, o->data_format, enc, mcfg, !o->no_token_cache);
    std::shared_ptr<TokenDataset> eval_docs;
    if (!o->eval_data.empty()) eval_docs = load_data(o->eval_data, o->data_format, enc, mcfg, !o->no_token_cache);
    if (o->eval_split > 0) {
      // a seeded split of the documents
      std::vector<size_t> order(data->size());
      std::iota(order.begin(), order.end(), 0);
      std::mt19937_64 rng(t.seed);
      std::shuffle(order.begin(), order.end(), rng);
      const size_t n_eval = std::max<size_t>(1, static_cast<size_t>(std::llround(o->eval_split * data->size())));
      PEFT_CHECK(n_eval < data->size(), o->data, ": ", data->size(), " documents are too few for --eval-split ",
                 o->eval_split);
      std::vector<size_t> ev(order.begin(), order.begin() + n_eval), tr(order.begin() + n_eval, order.end());
      std::sort(ev.begin(), ev.end());
      std::sort(tr.begin(), tr.end());
      eval_docs = std::make_shared<TokenDataset>(data->subset(ev));
      data = std::make_shared<TokenDataset>(data->subset(tr));
    }
    const std::string fmt = data_format_of(o->data, o->data_format);
    const std::string layout = o->packing ? "pack" : (fmt == "txt" ? "concat" : "pad");
    const int64_t pad_id = std::max<int64_t>(0, mcfg.pad_token_id);
    SequenceSet train_set(data, layout, o->max_length, pad_id);
    std::unique_ptr<SequenceSet> eval_set;
    if (eval_docs) {
      const std::string efmt = o->eval_data.empty() ? fmt : data_format_of(o->eval_data, o->data_format);
      eval_set = std::make_unique<SequenceSet>(eval_docs, o->packing ? "pack" : (efmt == "txt" ? "concat" : "pad"),
                                               o->max_length, pad_id);
    }
    if (main_rank) std::cerr << o->data << ": " << data->size() << " documents, " << data->tokens() << " tokens"
              << (data->from_cache() ? " (token cache)" : "") << " -> " << train_set.size() << " sequences of <= "
              << o->max_length << " tokens (" << layout << ")\n";
    AdapterConfig from_file;
    if (!o->adapter_config.empty()) {
      from_file = AdapterConfig::from_json(read_json_file(o->adapter_config), o->adapter_config);
      from_file.set_field("inference_mode", false, o->adapter_config);
    }

    // ---- the work ----
    apply_common_options(o->common);
    std::shared_ptr<ProcessGroup> pg;
    if (env.distributed()) {
      pg = ProcessGroup::create(env, std::chrono::milliseconds(static_cast<int64_t>(o->dist_timeout * 1000)));
    }
    at::manual_seed(t.seed);
    auto base = load_model_with(o->model, at::kFloat, o->quant);
    std::shared_ptr<PeftModel> m;
    if (!o->resume.empty()) {
      m = PeftModel::from_pretrained(base, o->resume, "default", /*is_trainable=*/true);
    } else if (!o->adapter_init.empty()) {
      m = PeftModel::from_pretrained(base, o->adapter_init, "default", /*is_trainable=*/true);
    } else if (!o->adapter_config.empty()) {
      m = std::make_shared<PeftModel>(base, from_file);
    } else {
      PEFT_USAGE(o->method == "lora", "--method: only lora is supported here, got '", o->method, "'");
      nlohmann::json j = {{"peft_type", "LORA"},        {"r", o->r},
                          {"lora_alpha", o->lora_alpha}, {"lora_dropout", o->lora_dropout},
                          {"use_dora", o->use_dora},    {"use_rslora", o->use_rslora},
                          {"task_type", "CAUSAL_LM"}};
      if (o->target_modules == "all-linear") {
        j["target_modules"] = "all-linear";
      } else if (!o->target_modules.empty()) {
        std::vector<std::string> tm;
        std::stringstream ss(o->target_modules);
        for (std::string item; std::getline(ss, item, ',');) {
          if (!item.empty()) tm.push_back(item);
        }
        j["target_modules"] = tm;
      }
      m = std::make_shared<PeftModel>(base, AdapterConfig::from_json(j, "command line"));
    }
    if (!o->loftq_from.empty()) {
      PEFT_USAGE(o->resume.empty() && o->adapter_init.empty(), "--loftq-from initialises a new adapter (not with ",
                 "--adapter-init or --resume-from-checkpoint)");
      const int64_t n = replace_lora_weights_loftq(*m, o->loftq_from);
      if (main_rank) std::cerr << "LoftQ: " << n << " LoRA layers initialised from " << o->loftq_from << "\n";
    }
    if (main_rank) std::cerr << m->trainable_summary() << "\n";
    m->train();
    std::unique_ptr<TrainLog> log;
    std::unique_ptr<ProgressReport> progress;
    TrainCallbacks cb;
    cb.set_training = [m](bool on) { m->train(on); };
    cb.save_model = [m, o](FolderWriter & w) { m->save_pretrained(w, {}, o->allow_nonfinite); };
    std::vector<EvalLog> evals;
    std::unique_ptr<GradientSync> sync;
    if (main_rank) {  // rank 0 logs, checkpoints and saves
      cb.on_step_end = [&](const StepLog & s) {
        // a data-parallel step: how long the gradient all-reduce was waited for after the backward pass
        if (sync) {
          log->step(s, {{"allreduce_wait_ms", sync->last_wait_ms()}});
          progress->step(s);
          return;
        }
        log->step(s);
        progress->step(s);
      };
      cb.on_evaluate = [&](const EvalLog & e) {
        evals.push_back(e);
        log->eval(e);
        progress->eval(e);
      };
      cb.on_save = [&](const std::string & dir, int64_t) { progress->saved(dir); };
    }
    if (pg) {
      sync = std::make_unique<GradientSync>(pg, m->trainable_parameters());
      cb.sum_across_ranks = [pg](double v) { return pg->sum(v); };
      cb.before_backward = [&](bool last) { sync->prepare(last); };
      cb.after_backward = [&] { sync->finish(); };
    }
    cb.should_stop = [pg] {
      double requested = g_stop_signal != 0 ? 1 : 0;
      if (pg) requested = pg->sum(requested);
      return requested > 0;
    };
    // AdaLoRA trains with its rank allocator: the orthogonal term in the loss, the budget after each update
    std::unique_ptr<AdaLoraAllocator> allocator;
    const AdapterConfig & acfg = m->adapter_config("default");
    if (acfg.peft_type == "ADALORA") {
      PEFT_USAGE(t.save_steps == 0 && o->resume.empty(), "--save-steps / --resume-from-checkpoint: checkpoints of ",
                 "AdaLoRA runs are not supported yet (the rank allocator's state is not saved)");
      allocator = std::make_unique<AdaLoraAllocator>(*m, "default");
      t.checkpoint_dir.clear();  // (a signal saves the adapter only)
      cb.extra_loss = [&] { return allocator->orthogonal_regularization(); };
      cb.after_update = [&](int64_t step) { allocator->update_and_allocate(step - 1); };  // upstream counts from 0
    }
    t.virtual_tokens = m->virtual_token_logits() > 0;  // prompt learning: each row's first token is predicted too
    Trainer trainer(make_logits_fn(*m, o->compile), m->trainable_parameters(), t, cb);
    if (allocator) {
      const int64_t total_step = acfg.opts<AdaLoraOptions>().total_step, steps = trainer.total_steps(train_set);
      if (total_step != steps) {
        std::cerr << "note: the AdaLoRA config's total_step (" << total_step << ") differs from this run's " << steps
                  << " steps: the rank budget follows total_step\n";
      }
    }
    if (!o->resume.empty()) {
      trainer.resume(o->resume, train_set);
      if (main_rank) std::cerr << "resumed from " << o->resume << " at step " << trainer.global_step() << "\n";
    }
    if (main_rank) {
      log = std::make_unique<TrainLog>(o->log_file, o->resume.empty() ? -1 : trainer.global_step());
    }
    progress = std::make_unique<ProgressReport>(trainer.total_steps(train_set), trainer.global_step(), std::cerr,
                                                stderr_is_terminal() && !o->no_progress);
    // SIGINT / SIGTERM from here on stop the run gracefully (see on_stop_signal); every rank stops at
    // the same step (the flag is summed across ranks before each step)
    StopSignals signals;
    // (a non-finite loss or gradient norm stops the run before its step is logged: every value is a number)
    try {
      trainer.train(train_set, eval_set.get());
      progress->finish();
    } catch (const NonFiniteError & e) {
      progress->finish();
      // the update of the failing step was not applied: keep the last good adapter
      m->train(false);
      // every rank stops at the same step (the loss is the global batch's); the others wait until rank
      // 0 has saved the last good adapter, so the launcher does not stop it halfway
      const bool saved = main_rank && e.step > 1;
      if (saved) m->save_pretrained(o->out, {}, o->allow_nonfinite);
      if (pg) pg->barrier();
      if (saved) fail(str(e.what(), "; the adapter after step ", e.step - 1, " was saved to '", o->out, "'"));
      fail(str(e.what(), main_rank ? "; nothing was saved" : ""));
    }
    m->train(false);
    if (trainer.stopped()) {
      const int sig = g_stop_signal != 0 ? g_stop_signal : SIGTERM;  // (another rank's signal)
      const int64_t step = trainer.global_step();
      if (main_rank && step > 0) m->save_pretrained(o->out, {}, o->allow_nonfinite);
      if (pg) pg->barrier();  // the other ranks wait until rank 0 has saved
      if (!main_rank) return 128 + sig;
      if (step == 0) {
        std::cerr << "stopped by " << signal_name(sig) << " before the first step: nothing was saved\n";
      } else if (trainer.last_checkpoint().empty()) {
        std::cerr << "stopped by " << signal_name(sig) << " after step " << step << " of "
                  << trainer.total_steps(train_set) << ": saved the adapter to " << o->out
                  << " (no checkpoint: AdaLoRA runs cannot be resumed yet)\n";
      } else {
        std::cerr << "stopped by " << signal_name(sig) << " after step " << step << " of "
                  << trainer.total_steps(train_set) << ": saved the checkpoint " << trainer.last_checkpoint()
                  << " (continue with --resume-from-checkpoint latest) and the adapter to " << o->out << "\n";
      }
      return 128 + sig;
    }
    if (!main_rank) return 0;
    m->save_pretrained(o->out, {}, o->allow_nonfinite);
    std::cerr << "saved adapter to " << o->out << "\n";
    if (sync) std::cerr << "gradients summed over " << env.world_size << " ranks in " << sync->buckets() << " bucket(s)\n";
    if (evals.size() >= 2) {
      std::fprintf(stderr, "eval loss %.4f (perplexity %.2f) at step %lld -> %.4f (perplexity %.2f) at step %lld\n",
                   evals.front().loss, evals.front().perplexity, static_cast<long long>(evals.front().step),
                   evals.back().loss, evals.back().perplexity, static_cast<long long>(evals.back().step));
    }
    if (!o->no_plot) {
      try {
        plot_train_log(o->log_file, o->plot);
        std::cerr << "wrote the loss plot " << o->plot << "\n";
      } catch (const Error & e) {
        std::cerr << "note: no loss plot: " << e.what() << "\n";
      }
    }
    return 0;
  };
}

}  // namespace peft::cli
