// peft eval: measure a model (with adapters): perplexity over a text with a sliding window (bits per
// byte, word perplexity), multiple-choice accuracy, and the KL divergence against another model or the
// base (what quantizing, merging or a fine-tune changed). Results as one human line each and, with
// --json, in lm-evaluation-harness's result shape.
#include <sys/stat.h>

#include <iomanip>
#include <optional>
#include <iostream>
#include <sstream>

#include "adapter-options.h"
#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/data/dataset.h"
#include "peft/error.h"
#include "peft/eval/multiple-choice.h"
#include "peft/eval/perplexity.h"
#include "peft/io/files.h"
#include "peft/model/config.h"

namespace peft::cli {

namespace {

std::string stem_of(const std::string & path) {
  std::string s = path.substr(path.find_last_of('/') + 1);
  const size_t dot = s.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? s : s.substr(0, dot);
}

bool has_file(const std::string & dir, const std::string & name) {
  struct stat st {};
  return ::stat((dir + "/" + name).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

}  // namespace

Runner add_eval(CLI::App & app) {
  struct Opts {
    std::string model, dtype = "float32", data, json, compare_to;
    std::vector<std::string> tasks;
    int64_t context = 0, stride = 0, batch = 1, chunk = -1;
    bool compile = false, byte_tokenizer = false;
    CommonOptions common;
    QuantFlags quant;
    AdapterOptions adapters;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("eval", "perplexity, bits per byte, multiple choice and KL against another model");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--data", o->data,
                  "text to score: .txt (one stream), .jsonl (text / prompt+completion / messages: the tokens training "
                  "counts), .json token ids");
  cmd->add_option("--context", o->context, "tokens per window (default: the model's positions, at most 2048)");
  cmd->add_option("--stride", o->stride, "tokens between window starts (default: context / 2)");
  cmd->add_option("--task", o->tasks,
                  "multiple-choice task, JSON lines {\"context\", \"choices\": [...], \"gold\": i} (repeatable)");
  cmd->add_option("--compare-to", o->compare_to,
                  "with --data: KL divergence and top-token agreement against __base__ (the adapters disabled), "
                  "an adapter folder (on the same --model) or a model folder");
  cmd->add_option("--json", o->json, "write the results in lm-evaluation-harness's shape to this file");
  cmd->add_option("--batch-size", o->batch, "windows per forward")->check(CLI::Range(1, 4096));
  cmd->add_option("--eval-chunk", o->chunk, "positions per head call (default: sized so the logits stay ~64 MiB)");
  cmd->add_option("--dtype", o->dtype, kDtypeHelp);
  cmd->add_flag("--compile", o->compile, "evaluate with the compiled model");
  cmd->add_flag("--byte-tokenizer", o->byte_tokenizer, "tokenize text as bytes (tiny test models without tokenizer.json)");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  add_adapter_options(*cmd, o->adapters);
  return [o]() {
    PEFT_USAGE(!o->data.empty() || !o->tasks.empty(), "give --data (perplexity) and/or --task (multiple choice)");
    PEFT_USAGE(o->compare_to.empty() || !o->data.empty(), "--compare-to compares on --data: give it too");
    PEFT_USAGE(o->chunk == -1 || o->chunk >= 1, "--eval-chunk must be at least 1");
    const at::ScalarType dtype = resolve_dtype(o->dtype, o->model);
    const ModelConfig mcfg = ModelConfig::load(o->model);
    std::vector<std::string> inputs = {o->model};
    if (!o->data.empty()) inputs.push_back(o->data);
    for (const auto & t : o->tasks) inputs.push_back(t);
    if (!o->json.empty()) check_output_file("--json", o->json, inputs);
    // text needs the model's tokenizer (none: an error naming tokenizer.json, unless --byte-tokenizer), token ids do not
    const bool ids_only = o->tasks.empty() && data_format_of(o->data) == DataFormat::ids;
    const TextEncoder enc = ids_only && !o->byte_tokenizer && !has_file(o->model, "tokenizer.json")
                                ? TextEncoder{}
                                : TextEncoder::for_model(o->model, mcfg, o->byte_tokenizer);
    apply_common_options(o->common);

    RunModel main = load_run_model(o->model, dtype, o->quant, o->adapters, o->compile);
    const int64_t virtual_tokens = main.model->num_virtual_tokens();
    const int64_t positions = mcfg.max_position_embeddings - virtual_tokens;
    const int64_t context = o->context > 0 ? o->context : std::min<int64_t>(positions, 2048);
    PEFT_USAGE(context >= 2, "--context must be at least 2 tokens");
    PEFT_USAGE(!mcfg.learned_positions || context <= positions, "--context ", context, " exceeds the model's ",
               positions, " positions (config.json max_position_embeddings",
               virtual_tokens > 0 ? ", less the adapter's virtual tokens" : "", ")");
    PEFT_USAGE(o->stride >= 0 && o->stride <= context, "--stride must be in [1, --context]");
    eval::Scorer scorer = eval::scorer_of(*main.model, main.forward);
    std::optional<RunModel> ref;  // --compare-to's model (loaded before the memory mark: both are resident)
    scorer.chunk = o->chunk;

    nlohmann::json results = nlohmann::json::object(), samples = nlohmann::json::object(),
                   configs = nlohmann::json::object(), versions = nlohmann::json::object();
    if (!o->data.empty()) {
      // the reference model, when asked for
      std::optional<eval::Scorer> ref_scorer;
      if (o->compare_to == kBaseAdapter) {
        PEFT_USAGE(main.model->adapter_names().size() > 0 && !o->adapters.merge_and_unload,
                   "--compare-to ", kBaseAdapter, " needs adapters on the model (and not --merge-and-unload)");
        ref_scorer = eval::scorer_of(*main.model, main.forward, /*disabled=*/true);
      } else if (!o->compare_to.empty()) {
        const std::string & d = o->compare_to;
        if (has_file(d, "adapter_config.json")) {
          AdapterOptions a;
          a.adapters = {d};
          ref = load_run_model(o->model, dtype, o->quant, a, o->compile);
        } else {
          PEFT_CHECK(has_file(d, "config.json"), "--compare-to ", d, ": neither ", kBaseAdapter,
                     " nor a folder with adapter_config.json (an adapter) or config.json (a model)");
          const ModelConfig rc = ModelConfig::load(d);
          PEFT_CHECK(rc.vocab_size == mcfg.vocab_size, "--compare-to ", d, ": its vocabulary (", rc.vocab_size,
                     ") is not the model's (", mcfg.vocab_size, "): the distributions cannot be compared");
          ref = load_run_model(d, dtype, QuantFlags{}, AdapterOptions{}, o->compile);
        }
        ref_scorer = eval::scorer_of(*ref->model, ref->forward);
      }
      if (ref_scorer) ref_scorer->chunk = o->chunk;
      reset_peak_rss();  // from here: what evaluating costs beyond the loaded models
      DataOptions dopt;
      dopt.cache = false;
      const TokenDataset ds = read_dataset(o->data, enc, dopt);
      const bool join = data_format_of(o->data) == DataFormat::txt;
      eval::PerplexityOptions po;
      po.context = context;
      po.stride = o->stride;
      po.batch = o->batch;
      const eval::PerplexityResult r = eval::perplexity(scorer, eval::documents_of(ds, join), po, enc.tokenizer.get(),
                                                        ref_scorer ? &*ref_scorer : nullptr);
      PEFT_CHECK(r.tokens > 0, o->data, ": no token to score (documents of fewer than 2 tokens, or nothing marked for the loss)");
      const std::string name = stem_of(o->data);
      std::cout << "perplexity (" << name << "): " << fixed(r.perplexity(), 4) << " +/- " << fixed(r.perplexity_stderr(), 4)
                << " over " << r.tokens << " tokens (mean loss " << fixed(r.mean_nll(), 5) << ", context " << context
                << ", stride " << (o->stride > 0 ? o->stride : std::max<int64_t>(1, context / 2)) << "); bits per byte "
                << fixed(r.bits_per_byte(), 5) << ", word perplexity " << fixed(r.word_perplexity(), 4) << "; "
                << fixed(r.tokens / std::max(r.seconds, 1e-9), 1) << " tokens/s\n";
      nlohmann::json res = {{"alias", name},
                            {"perplexity,none", r.perplexity()},
                            {"perplexity_stderr,none", r.perplexity_stderr()},
                            {"token_loss,none", r.mean_nll()},
                            {"bits_per_byte,none", r.bits_per_byte()},
                            {"byte_perplexity,none", r.byte_perplexity()},
                            {"word_perplexity,none", r.word_perplexity()},
                            {"tokens", r.tokens},
                            {"bytes", r.bytes},
                            {"words", r.words},
                            {"tokens_per_second", r.tokens / std::max(r.seconds, 1e-9)}};
      if (r.compared) {
        std::cout << "compared to " << o->compare_to << ": mean KL " << fixed(r.kl_mean(), 6) << ", 99% KL "
                  << fixed(r.kl_quantile(0.99), 6) << ", 99.9% KL " << fixed(r.kl_quantile(0.999), 6) << ", max KL "
                  << fixed(r.kl_quantile(1.0), 6) << ", same top token " << fixed(100.0 * r.same_top_fraction(), 2)
                  << "%, perplexity " << fixed(r.perplexity(), 4) << " vs " << fixed(r.ref_perplexity(), 4) << " (ratio "
                  << fixed(r.perplexity() / r.ref_perplexity(), 5) << ")\n";
        res["kl_mean,none"] = r.kl_mean();
        res["kl_p99,none"] = r.kl_quantile(0.99);
        res["kl_p999,none"] = r.kl_quantile(0.999);
        res["kl_max,none"] = r.kl_quantile(1.0);
        res["same_top,none"] = r.same_top_fraction();
        res["ref_perplexity,none"] = r.ref_perplexity();
        res["perplexity_ratio,none"] = r.perplexity() / r.ref_perplexity();
        res["compare_to"] = o->compare_to;
      }
      results[name] = res;
      samples[name] = {{"original", r.documents}, {"effective", r.documents}};
      configs[name] = {{"task", name}, {"output_type", "loglikelihood_rolling"}, {"dataset_path", o->data},
                       {"context", context}, {"stride", o->stride > 0 ? o->stride : std::max<int64_t>(1, context / 2)}};
      versions[name] = 1.0;
    }
    if (o->data.empty()) reset_peak_rss();
    for (const std::string & task : o->tasks) {
      const auto items = eval::read_choice_task(task);
      const eval::ChoiceResult r = eval::multiple_choice(scorer, *enc.tokenizer, items, positions);
      const std::string name = stem_of(task);
      std::cout << "multiple choice (" << name << "): acc " << fixed(r.acc, 4) << " +/- " << fixed(r.acc_stderr, 4)
                << ", acc_norm " << fixed(r.acc_norm, 4) << " +/- " << fixed(r.acc_norm_stderr, 4) << " over " << r.items
                << " items\n";
      results[name] = {{"alias", name},
                       {"acc,none", r.acc},
                       {"acc_stderr,none", r.acc_stderr},
                       {"acc_norm,none", r.acc_norm},
                       {"acc_norm_stderr,none", r.acc_norm_stderr}};
      samples[name] = {{"original", r.items}, {"effective", r.items}};
      configs[name] = {{"task", name}, {"output_type", "multiple_choice"}, {"dataset_path", task},
                       {"metric_list", {{{"metric", "acc"}}, {{"metric", "acc_norm"}}}}};
      versions[name] = 1.0;
    }
    const double peak_mb = static_cast<double>(peak_rss_bytes()) / (1 << 20);
    if (peak_mb > 0) std::cout << "memory: peak RSS " << fixed(peak_mb, 0) << " MB while evaluating (models loaded)\n";
    if (!o->json.empty()) {
      std::string model_args = "pretrained=" + o->model + ",dtype=" + dtype_name(dtype);
      for (const auto & a : o->adapters.adapters) model_args += ",peft=" + a;
      if (o->quant.quantize != "none") model_args += ",quantize=" + o->quant.quantize;
      const nlohmann::json out = {
          {"results", results},
          {"configs", configs},
          {"versions", versions},
          {"n-samples", samples},
          {"config", {{"model", "peft.cpp"}, {"model_args", model_args}, {"batch_size", o->batch},
                      {"compile", o->compile}, {"peak_rss_mb", peak_mb}}}};
      write_file_atomic(o->json, out.dump(2) + "\n");
    }
    return 0;
  };
}

}  // namespace peft::cli
