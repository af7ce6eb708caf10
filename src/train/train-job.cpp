// TrainJob: a whole training run (see peft/train/train-job.h). Every check of a run's settings lives
// here or in the code that owns the setting (check_train_options, quant::check_options, data_format_of),
// named by field; the command line maps the fields to its flags.
#include "peft/train/train-job.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <utility>

#include "peft/compile/compile.h"
#include "peft/data/batches.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/io/output-paths.h"
#include "peft/model/causal-lm.h"
#include "peft/peft-model.h"
#include "peft/train/plot.h"
#include "peft/train/progress.h"
#include "peft/tuners/adalora.h"
#include "peft/tuners/lora-loftq.h"
#include "peft/tuners/modules-to-save.h"

namespace peft {

namespace {

// The first evaluation a JSONL training log holds (a resumed run's log keeps the lines before its checkpoint).
std::optional<EvalLog> first_logged_eval(const std::string & path) {
  std::istringstream lines(read_file(path));
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("eval_loss") || !j["eval_loss"].is_number() || !j.contains("step")) continue;
    EvalLog e;
    e.step = j["step"].get<int64_t>();
    e.loss = j["eval_loss"].get<double>();
    e.perplexity = j.value("eval_perplexity", std::exp(e.loss));
    return e;
  }
  return std::nullopt;
}

// One trainer per output: a lock beside the folder (".<name>.train.lock", not FolderWriter's own lock,
// which each save takes), held for the whole run. A second run into the same output adapter or
// checkpoint folder stops at start, not at its first save.
class RunLock {
 public:
  RunLock(const std::string & what, const std::string & target) {
    const std::string path = parent_of(target) + "/." + base_of(target) + ".train.lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    PEFT_CHECK(fd_ >= 0, what, " '", target, "': cannot create the lock file '", path, "': ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      fd_ = -1;
      fail(str(what, " '", target, "' is being trained into by another process (lock '", path,
               "'); wait for that run to end, or give another ", what));
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

// The documents of a data file for this model; token-id rows are checked as given (and keyed by their
// ids, not the file's bytes: checkpoints name the data by that key).
std::shared_ptr<TokenDataset> load_data(const std::string & path, DataFormat format, const TextEncoder & enc,
                                        const ModelConfig & cfg, bool cache) {
  if (format == DataFormat::ids) {
    const auto rows = read_token_ids(path);
    check_token_ids(path, rows, cfg);
    return std::make_shared<TokenDataset>(TokenDataset::from_rows(rows, path));
  }
  DataOptions d;
  d.format = format;
  d.cache = cache;
  auto ds = std::make_shared<TokenDataset>(read_dataset(path, enc, d));
  PEFT_CHECK(ds->max_id() < cfg.vocab_size, path, ": token id ", ds->max_id(), " (from the tokenizer) is outside the ",
             "model's vocabulary [0, ", cfg.vocab_size, ")");
  return ds;
}

AdapterConfig lora_config(const LoraFields & f) {
  nlohmann::json j = {{"peft_type", "LORA"},        {"r", f.r},
                      {"lora_alpha", f.lora_alpha}, {"lora_dropout", f.lora_dropout},
                      {"use_dora", f.use_dora},     {"use_rslora", f.use_rslora},
                      {"task_type", "CAUSAL_LM"}};
  if (f.target_modules == "all-linear") {
    j["target_modules"] = "all-linear";
  } else if (!f.target_modules.empty()) {
    std::vector<std::string> tm;
    std::stringstream ss(f.target_modules);
    for (std::string item; std::getline(ss, item, ',');) {
      if (!item.empty()) tm.push_back(item);
    }
    j["target_modules"] = tm;
  }
  return AdapterConfig::from_json(j, "command line");
}

// What adapter `name` changes, by module name, grouped by the last part of the path in model order:
// "adapted modules (8): q_proj x4, v_proj x4; modules_to_save: lm_head".
std::string adapted_modules_line(const PeftModel & m, const std::string & name) {
  using Groups = std::vector<std::pair<std::string, int64_t>>;
  Groups adapted, saved;
  int64_t n_adapted = 0;
  auto add = [](Groups & g, const std::string & path) {
    const std::string leaf = path.substr(path.rfind('.') + 1);  // (npos + 1 = 0: the whole path)
    auto it = std::find_if(g.begin(), g.end(), [&](const auto & e) { return e.first == leaf; });
    if (it == g.end()) {
      g.emplace_back(leaf, 1);
    } else {
      ++it->second;
    }
  };
  for (const auto & l : m.tuner_layers()) {
    if (!l.second->has_adapter(name)) continue;
    if (std::dynamic_pointer_cast<ModulesToSaveWrapper>(l.second)) {
      add(saved, l.first);
    } else {
      add(adapted, l.first);
      ++n_adapted;
    }
  }
  auto list = [](const Groups & g) {
    std::string out;
    for (const auto & e : g) out += str(out.empty() ? "" : ", ", e.first, e.second > 1 ? str(" x", e.second) : "");
    return out;
  };
  std::string line = n_adapted == 0 ? std::string("adapted modules: none") : str("adapted modules (", n_adapted, "): ", list(adapted));
  if (n_adapted == 0 && m.virtual_token_logits() > 0) line += " (prompt learning: virtual tokens)";
  if (!saved.empty()) line += str("; modules_to_save: ", list(saved));
  return line;
}

}  // namespace

TrainJob::TrainJob(TrainJobConfig config, FieldNamer namer) : config_(std::move(config)), namer_(std::move(namer)) {
  TrainJobConfig & c = config_;
  TrainOptions & t = c.train;
  auto n = [&](const char * field) { return name(field); };
  // ---- the defaults ----
  if (t.steps == 0 && t.epochs == 0) t.epochs = 1;
  checkpoint_dir_given_ = !t.checkpoint_dir.empty();
  if (!checkpoint_dir_given_) t.checkpoint_dir = c.output.adapter + "-checkpoints";
  t.rank = c.dist.env.rank;
  t.world_size = c.dist.env.world_size;
  // ---- every field on its own, then together ----
  const int sources = !c.adapter.init.empty() + !c.adapter.config.empty() + c.adapter.lora.has_value();
  PEFT_CHECK_OPTION(sources == 1, "give exactly one of ", field_names(namer_, {"adapter.init", "adapter.config", "adapter.lora"}));
  if (c.adapter.lora) {
    PEFT_CHECK_OPTION(c.adapter.lora->r >= 1, n("adapter.lora.r"), " must be >= 1");
    PEFT_CHECK_OPTION(c.adapter.lora->lora_dropout >= 0 && c.adapter.lora->lora_dropout < 1, n("adapter.lora.lora_dropout"),
                      " must be in [0, 1)");
  }
  quant::check_options(c.model.quantize, [&](const std::string & f) { return name("model.quantize." + f); });
  PEFT_CHECK_OPTION(c.model.dtype == at::kFloat || c.model.dtype == at::kBFloat16 || c.model.dtype == at::kHalf,
                    n("model.dtype"), " must be float32, bfloat16 or float16, got ", c.model.dtype);
  check_train_options(t, [&](const std::string & f) { return name("train." + f); });
  PEFT_CHECK_OPTION(c.data.eval_split >= 0 && c.data.eval_split < 1, n("data.eval_split"), " must be in [0, 1)");
  PEFT_CHECK_OPTION(c.data.eval_split == 0 || c.data.eval.empty(), "give ", n("data.eval"), " or ", n("data.eval_split"),
                    ", not both");
  const bool has_eval = c.data.eval_split > 0 || !c.data.eval.empty();
  PEFT_CHECK_OPTION(has_eval || (t.eval_steps == 0 && !t.eval_on_start),
                    field_names(namer_, {"train.eval_steps", "train.eval_on_start"}), " need ", n("data.eval"), " or ",
                    n("data.eval_split"));
  PEFT_CHECK_OPTION(c.data.max_length >= 0, n("data.max_length"), " must be >= 0 (0: the model's positions)");
  PEFT_CHECK_OPTION(!(c.output.no_plot && !c.output.plot.empty()), "give ", n("output.plot"), " or ", n("output.no_plot"),
                    ", not both");
  PEFT_CHECK_OPTION(c.dist.timeout_s > 0, n("dist.timeout_s"), " must be > 0");
  if (c.output.plot.empty() && !c.output.no_plot) {
    const std::string & l = c.output.log_file;
    c.output.plot = (l.size() > 6 && l.compare(l.size() - 6, 6, ".jsonl") == 0 ? l.substr(0, l.size() - 6) : l) + ".png";
  }
}

TrainJobResult TrainJob::run(const TrainJobObserver & observer) {
  TrainJobConfig c = config_;
  TrainOptions & t = c.train;
  auto n = [&](const char * field) { return name(field); };
  const DistEnv & env = c.dist.env;
  const bool main_rank = env.rank == 0;
  auto say = [&](const std::string & line) {
    if (main_rank && observer.message) observer.message(line);
  };
  const FieldNamer train_namer = [&](const std::string & f) { return name("train." + f); };

  // ---- every path, lock and data record is checked before the model is loaded ----
  std::string & resume = c.resume_from_checkpoint;
  if (resume == "latest") {
    resume = latest_checkpoint(t.checkpoint_dir);
    // as transformers' Trainer: nothing to resume is a new run (the same settings work the first time too)
    if (resume.empty()) {
      say(str(n("resume_from_checkpoint"), " latest: no complete checkpoint in '", t.checkpoint_dir,
              "'; starting a new run"));
    }
  }
  PEFT_CHECK_OPTION(c.adapter.loftq_from.empty() || (resume.empty() && c.adapter.init.empty()), n("adapter.loftq_from"),
                    " initialises a new adapter (not with ", n("adapter.init"), " or ", n("resume_from_checkpoint"), ")");
  const std::vector<std::string> inputs = {c.model.path,  c.data.train,    c.data.eval,
                                           c.adapter.init, c.adapter.config, resume};
  check_output_folder(n("output.adapter"), c.output.adapter, inputs);
  std::vector<std::string> more = inputs;
  more.push_back(c.output.adapter);
  {
    // (checkpoints are written with train.save_steps and when should_stop stops the run; the checkpoint
    // resumed from may lie in that folder: it is read before anything is written there)
    std::vector<std::string> others(more);
    others.erase(std::find(others.begin(), others.end(), resume));
    check_output_folder(n("train.checkpoint_dir"), t.checkpoint_dir, others);
  }
  more.push_back(t.checkpoint_dir);
  check_output_file(n("output.log_file"), c.output.log_file, more);
  if (!c.output.no_plot) {
    more.push_back(c.output.log_file);
    check_output_file(n("output.plot"), c.output.plot, more);
  }
  // one trainer per output, found at start (rank 0 writes; the locks are held until the run ends; the
  // default checkpoint folder is the adapter folder's own)
  std::unique_ptr<RunLock> out_lock, checkpoint_lock;
  if (main_rank) {
    out_lock = std::make_unique<RunLock>(n("output.adapter"), c.output.adapter);
    if (checkpoint_dir_given_) checkpoint_lock = std::make_unique<RunLock>(n("train.checkpoint_dir"), t.checkpoint_dir);
  }
  const ModelConfig mcfg = ModelConfig::load(c.model.path);
  int64_t & max_length = c.data.max_length;
  if (max_length == 0) max_length = std::min<int64_t>(mcfg.max_position_embeddings, 1024);
  PEFT_CHECK_OPTION(max_length >= 2 && max_length <= mcfg.max_position_embeddings, n("data.max_length"),
                    " must be in [2, ", mcfg.max_position_embeddings, "] (the model's positions), got ", max_length);
  const DataFormat train_format = data_format_of(c.data.train, c.data.format, n("data.format"));
  DataFormat eval_format = train_format;
  if (!c.data.eval.empty()) eval_format = data_format_of(c.data.eval, c.data.format, n("data.format"));
  // the tokenizer only where text is read (token ids need none; a model folder without tokenizer.json is
  // an error for text, unless model.byte_tokenizer asks for bytes)
  const bool text = train_format != DataFormat::ids || (!c.data.eval.empty() && eval_format != DataFormat::ids);
  const TextEncoder enc = text ? TextEncoder::for_model(c.model.path, mcfg, c.model.byte_tokenizer) : TextEncoder{};
  auto data = load_data(c.data.train, train_format, enc, mcfg, c.data.token_cache);
  std::shared_ptr<TokenDataset> eval_docs;
  if (!c.data.eval.empty()) eval_docs = load_data(c.data.eval, eval_format, enc, mcfg, c.data.token_cache);
  if (c.data.eval_split > 0) {
    // a seeded split of the documents
    std::vector<size_t> order(data->size());
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(t.seed);
    std::shuffle(order.begin(), order.end(), rng);
    const size_t n_eval = std::max<size_t>(1, static_cast<size_t>(std::llround(c.data.eval_split * data->size())));
    PEFT_CHECK(n_eval < data->size(), c.data.train, ": ", data->size(), " documents are too few for ",
               n("data.eval_split"), " ", c.data.eval_split);
    std::vector<size_t> ev(order.begin(), order.begin() + n_eval), tr(order.begin() + n_eval, order.end());
    std::sort(ev.begin(), ev.end());
    std::sort(tr.begin(), tr.end());
    eval_docs = std::make_shared<TokenDataset>(data->subset(ev));
    data = std::make_shared<TokenDataset>(data->subset(tr));
  }
  const SequenceLayout layout = layout_for(train_format, c.data.packing);
  const int64_t pad_id = std::max<int64_t>(0, mcfg.pad_token_id);
  SequenceSet train_set(data, layout, max_length, pad_id);
  std::unique_ptr<SequenceSet> eval_set;
  if (eval_docs) {
    eval_set = std::make_unique<SequenceSet>(eval_docs, layout_for(eval_format, c.data.packing), max_length, pad_id);
  }
  say(str(c.data.train, ": ", data->size(), " documents, ", data->tokens(), " tokens",
          data->from_cache() ? " (token cache)" : "", " -> ", train_set.size(), " sequences of <= ", max_length,
          " tokens (", choice_name(layout), ")"));
  AdapterConfig from_file;
  if (!c.adapter.config.empty()) {
    from_file = AdapterConfig::from_json(read_json_file(c.adapter.config), c.adapter.config);
    from_file.set_field("inference_mode", false, c.adapter.config);
  }

  // ---- the work ----
  at::AutoGradMode grad(true);  // (whatever the caller's mode: training needs gradients)
  const int blas_threads = configure_runtime(c.runtime);
  std::shared_ptr<ProcessGroup> pg;
  if (env.distributed()) {
    pg = ProcessGroup::create(env, std::chrono::milliseconds(static_cast<int64_t>(c.dist.timeout_s * 1000)));
  }
  at::manual_seed(t.seed);
  LoadOptions load;
  load.quantize = c.model.quantize;
  load.dtype = c.model.dtype;
  auto base = load_model(c.model.path, load);
  std::shared_ptr<PeftModel> m;
  if (!resume.empty()) {
    m = PeftModel::from_pretrained(base, resume, "default", /*is_trainable=*/true);
  } else if (!c.adapter.init.empty()) {
    m = PeftModel::from_pretrained(base, c.adapter.init, "default", /*is_trainable=*/true);
  } else if (!c.adapter.config.empty()) {
    m = std::make_shared<PeftModel>(base, from_file);
  } else {
    m = std::make_shared<PeftModel>(base, lora_config(*c.adapter.lora));
  }
  if (!c.adapter.loftq_from.empty()) {
    const int64_t layers = replace_lora_weights_loftq(*m, c.adapter.loftq_from);
    say(str("LoftQ: ", layers, " LoRA layers initialised from ", c.adapter.loftq_from));
  }
  say(adapted_modules_line(*m, "default"));
  if (c.runtime.blas_threads <= 0 && blas_threads > 0) {  // (the default: say where it comes from)
    std::string why;
    default_blas_threads(&why);
    say(str("threads: ", blas_threads, " BLAS per process (", why, "; --threads N to choose)"));
  }
  say(m->trainable_summary());
  m->train();
  m->base_model().set_gradient_checkpointing(c.gradient_checkpointing);
  std::unique_ptr<TrainLog> log;
  TrainCallbacks cb;
  cb.set_training = [m](bool on) { m->train(on); };
  const bool allow_nonfinite = c.output.allow_nonfinite;
  cb.save_model = [m, allow_nonfinite](FolderWriter & w) { m->save_pretrained(w, {}, allow_nonfinite); };
  TrainJobResult result;
  std::unique_ptr<GradientSync> sync;
  nlohmann::json resume_changes = nlohmann::json::object();  // field -> {checkpoint, now}: for the log's next step
  int64_t resumed_at = -1;
  if (main_rank) {  // rank 0 logs, checkpoints and saves
    cb.on_step_end = [&](const StepLog & s) {
      // a data-parallel step: how long the gradient all-reduce was waited for after the backward pass
      nlohmann::json extra = nlohmann::json::object();
      if (sync) extra["allreduce_wait_ms"] = sync->last_wait_ms();
      // the first step after a resume that changed the schedule says what changed
      if (!resume_changes.empty()) extra["changed_on_resume"] = std::exchange(resume_changes, nlohmann::json::object());
      log->step(s, extra);
      if (observer.on_step) observer.on_step(s);
    };
    cb.on_evaluate = [&](const EvalLog & e) {
      result.evals.push_back(e);
      log->eval(e);
      if (observer.on_evaluate) observer.on_evaluate(e);
    };
    cb.on_save = [&](const std::string & dir, int64_t step) {
      if (observer.on_save) observer.on_save(dir, step);
    };
  }
  if (pg) {
    sync = std::make_unique<GradientSync>(pg, m->trainable_parameters());
    cb.sum_across_ranks = [pg](double v) { return pg->sum(v); };
    cb.before_backward = [&](bool last) { sync->prepare(last); };
    cb.after_backward = [&] { sync->finish(); };
  }
  cb.should_stop = [&observer, pg] {
    double requested = observer.should_stop && observer.should_stop() ? 1 : 0;
    if (pg) requested = pg->sum(requested);  // every rank stops at the same step
    return requested > 0;
  };
  // AdaLoRA trains with its rank allocator: the orthogonal term in the loss, the budget after each update
  std::unique_ptr<AdaLoraAllocator> allocator;
  const auto * adalora = dynamic_cast<const AdaLoraOptions *>(m->adapter_config("default").options.get());
  if (adalora != nullptr) {
    PEFT_CHECK_OPTION(t.save_steps == 0 && resume.empty(), n("train.save_steps"), " / ", n("resume_from_checkpoint"),
                      ": checkpoints of AdaLoRA runs are not supported yet (the rank allocator's state is not saved)");
    allocator = std::make_unique<AdaLoraAllocator>(*m, "default");
    t.checkpoint_dir.clear();  // (a stop saves the adapter only)
    cb.extra_loss = [&] { return allocator->orthogonal_regularization(); };
    cb.after_update = [&](int64_t step) { allocator->update_and_allocate(step - 1); };  // upstream counts from 0
  }
  t.virtual_tokens = m->virtual_token_logits() > 0;  // prompt learning: each row's first token is predicted too
  if (t.loss_chunk != 0) {  // the chunked loss: the forward stops at the hidden states, the head runs per chunk
    cb.head = [m](const at::Tensor & hidden) { return m->base_model().logits(hidden); };
    if (pg) {
      for (const auto & p : m->base_model().output_layer()->named_parameters(true)) {
        PEFT_CHECK_OPTION(!p.value().requires_grad(), n("train.loss_chunk"), " with data parallelism: the output layer's '",
                          p.key(), "' is trained, which the chunked loss cannot do across processes yet");
      }
    }
  }
  LogitsFn forward = [m](const ForwardInput & in) { return m->forward(in); };
  if (c.compile) {
    auto compiled = std::make_shared<CompiledModel>(peft::compile(*m));
    forward = [compiled](const ForwardInput & in) { return compiled->forward(in); };
  }
  Trainer trainer(forward, m->trainable_parameters(), t, cb, train_namer);
  if (allocator) {
    const int64_t total_step = adalora->total_step, steps = trainer.total_steps(train_set);
    if (total_step != steps) {
      say(str("note: the AdaLoRA config's total_step (", total_step, ") differs from this run's ", steps,
              " steps: the rank budget follows total_step"));
    }
  }
  if (!resume.empty()) {
    const auto changes = trainer.resume(resume, train_set);
    resumed_at = trainer.global_step();
    say(str("resumed from ", resume, " at step ", resumed_at));
    for (const auto & ch : changes) {
      const std::string field = "train." + ch.field;
      say(str("resumed with a changed ", n(field.c_str()), ": ", ch.checkpoint, " in the checkpoint, ", ch.now, " now (allowed)"));
      resume_changes[ch.field] = {{"checkpoint", nlohmann::json::parse(ch.checkpoint)}, {"now", nlohmann::json::parse(ch.now)}};
    }
  }
  if (main_rank) log = std::make_unique<TrainLog>(c.output.log_file, resume.empty() ? -1 : trainer.global_step());
  result.total_steps = trainer.total_steps(train_set);
  if (observer.on_start) observer.on_start(result.total_steps, trainer.global_step());
  reset_peak_rss();  // the steps' peak_rss_mb: the training's own peak, not loading's
  // (a non-finite loss or gradient norm stops the run before its step is logged: every value is a number)
  try {
    trainer.train(train_set, eval_set.get());
    if (observer.on_finish) observer.on_finish();
  } catch (const NonFiniteError & e) {
    if (observer.on_finish) observer.on_finish();
    // the update of the failing step was not applied: keep the last good adapter
    m->train(false);
    // every rank stops at the same step (the loss is the global batch's); the others wait until rank
    // 0 has saved the last good adapter, so that a launcher does not stop it halfway
    const bool saved = main_rank && e.step > 1;
    if (saved) m->save_pretrained(c.output.adapter, {}, allow_nonfinite);
    if (pg) pg->barrier();
    if (saved) {
      throw NonFiniteError(e.step, str(e.what(), "; the adapter after step ", e.step - 1, " was saved to '",
                                       c.output.adapter, "'"));
    }
    throw NonFiniteError(e.step, str(e.what(), main_rank ? "; nothing was saved" : ""));
  }
  m->train(false);
  result.step = trainer.global_step();
  result.checkpoint = trainer.last_checkpoint();
  if (trainer.stopped()) {
    result.stopped = true;
    result.saved = main_rank && result.step > 0;
    if (result.saved) m->save_pretrained(c.output.adapter, {}, allow_nonfinite);
    if (pg) pg->barrier();  // the other ranks wait until rank 0 has saved
    return result;
  }
  if (!main_rank) return result;
  m->save_pretrained(c.output.adapter, {}, allow_nonfinite);
  result.saved = true;
  say(str("saved adapter to ", c.output.adapter));
  if (sync) say(str("gradients summed over ", env.world_size, " ranks in ", sync->buckets(), " bucket(s)"));
  // the whole run: a resumed one's first evaluation is in the log's lines before the checkpoint
  std::vector<EvalLog> evals = result.evals;
  if (!resume.empty() && !evals.empty()) {
    if (auto first = first_logged_eval(c.output.log_file); first && first->step < evals.front().step) {
      evals.insert(evals.begin(), *first);
    }
  }
  if (evals.size() >= 2) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "eval loss %.4f (perplexity %.2f) at step %lld -> %.4f (perplexity %.2f) at step %lld",
                  evals.front().loss, evals.front().perplexity, static_cast<long long>(evals.front().step),
                  evals.back().loss, evals.back().perplexity, static_cast<long long>(evals.back().step));
    say(str(buf, resume.empty() ? "" : str(" (resumed at step ", resumed_at, ")")));
  }
  if (!c.output.no_plot) {
    try {
      plot_train_log(c.output.log_file, c.output.plot);
      say(str("wrote the loss plot ", c.output.plot));
    } catch (const Error & e) {
      say(str("note: no loss plot: ", e.what()));
    }
  }
  return result;
}

}  // namespace peft
