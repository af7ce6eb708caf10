// peft train: fine-tune an adapter on pre-tokenized data with AdamW; one JSON log line per step.
#include <cmath>
#include <fstream>
#include <sstream>
#include <iostream>

#include "commands.h"
#include "common.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"

namespace peft::cli {

Runner add_train(CLI::App & app) {
  struct Opts {
    std::string model, adapter_init, adapter_config, method, target_modules, data, optimizer = "adamw", log_file, out, betas;
    int64_t r = 8;
    double lora_alpha = 8, lora_dropout = 0;
    bool use_dora = false, use_rslora = false, no_shuffle = false, compile = false, allow_nonfinite = false;
    TrainOptions train;
    CommonOptions common;
  };
  auto o = std::make_shared<Opts>();
  o->train.weight_decay = 1e-2;
  auto * cmd = app.add_subcommand("train", "fine-tune an adapter on pre-tokenized data");
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
  cmd->add_option("--data", o->data, "JSON array of arrays of token ids")->required();
  cmd->add_option("--batch-size", o->train.batch_size, "rows per step")->required();
  cmd->add_option("--steps", o->train.steps, "optimizer steps")->required();
  cmd->add_option("--optimizer", o->optimizer, "adamw");
  cmd->add_option("--lr", o->train.lr, "learning rate")->required();
  cmd->add_option("--weight-decay", o->train.weight_decay, "AdamW weight decay (default 0.01)");
  cmd->add_option("--betas", o->betas, "AdamW betas, e.g. 0.9,0.999");
  cmd->add_option("--eps", o->train.eps, "AdamW epsilon");
  cmd->add_option("--lr-scheduler", o->train.lr_scheduler, "constant | linear | cosine");
  cmd->add_option("--warmup-steps", o->train.warmup_steps, "linear warm-up steps");
  cmd->add_option("--max-grad-norm", o->train.max_grad_norm, "clip the gradient norm (0 = off)");
  cmd->add_flag("--no-shuffle", o->no_shuffle, "take rows in order");
  cmd->add_option("--seed", o->train.seed, "seed for shuffling, dropout and adapter init");
  cmd->add_option("--log-file", o->log_file, "JSON lines: one object per step")->required();
  cmd->add_option("--out", o->out, "where to save the trained adapter")->required();
  cmd->add_flag("--compile", o->compile, "train through the compiled model");
  add_common_options(*cmd, o->common);
  cmd->add_flag("--allow-nonfinite", o->allow_nonfinite, "save the adapter even if it holds NaN or Inf values");
  return [o, cmd]() {
    // ---- every argument, path and data row is checked before the model is loaded ----
    PEFT_USAGE(o->optimizer == "adamw", "--optimizer: only adamw is supported, got '", o->optimizer, "'");
    PEFT_USAGE((!o->adapter_init.empty()) + (!o->method.empty()) + (!o->adapter_config.empty()) == 1,
               "give exactly one of --adapter-init, --adapter-config and --method");
    const auto lora_flags = given(*cmd, {"--r", "--lora-alpha", "--lora-dropout", "--target-modules", "--use-dora",
                                         "--use-rslora"});
    PEFT_USAGE(o->method.empty() ? lora_flags.empty() : true, lora_flags.empty() ? "" : lora_flags.front(),
               " does not apply with ", o->adapter_init.empty() ? "--adapter-config" : "--adapter-init",
               " (the adapter's own config decides it)");
    PEFT_USAGE(o->train.batch_size >= 1 && o->train.steps >= 1, "--batch-size and --steps must be >= 1");
    PEFT_USAGE(std::isfinite(o->train.lr) && o->train.lr > 0, "--lr must be a positive number");
    PEFT_USAGE(o->train.warmup_steps >= 0 && o->train.max_grad_norm >= 0 && o->train.weight_decay >= 0 &&
                   o->train.eps > 0,
               "--warmup-steps, --max-grad-norm and --weight-decay must be >= 0, --eps > 0");
    PEFT_USAGE(o->r >= 1, "--r must be >= 1");
    PEFT_USAGE(o->lora_dropout >= 0 && o->lora_dropout < 1, "--lora-dropout must be in [0, 1)");
    if (!o->betas.empty()) {
      std::vector<double> b;
      std::stringstream ss(o->betas);
      for (std::string item; std::getline(ss, item, ',');) {
        try {
          size_t used = 0;
          b.push_back(std::stod(item, &used));
          PEFT_USAGE(used == item.size(), "--betas must be two numbers like 0.9,0.999, got '", o->betas, "'");
        } catch (const std::logic_error &) {
          throw UsageError(str("--betas must be two numbers like 0.9,0.999, got '", o->betas, "'"));
        }
      }
      PEFT_USAGE(b.size() == 2 && b[0] >= 0 && b[0] < 1 && b[1] >= 0 && b[1] < 1,
                 "--betas must be two numbers in [0, 1) like 0.9,0.999, got '", o->betas, "'");
      o->train.beta1 = b[0];
      o->train.beta2 = b[1];
    }
    const std::vector<std::string> inputs = {o->model, o->data, o->adapter_init, o->adapter_config};
    check_output_folder("--out", o->out, inputs);
    std::vector<std::string> log_inputs = inputs;
    log_inputs.push_back(o->out);
    check_output_file("--log-file", o->log_file, log_inputs);
    const ModelConfig mcfg = ModelConfig::load(o->model);
    auto rows = read_ragged_ids_json(o->data);
    check_ids(o->data, rows, mcfg);
    AdapterConfig from_file;
    if (!o->adapter_config.empty()) {
      from_file = AdapterConfig::from_json(read_json_file(o->adapter_config), o->adapter_config);
      from_file.set_field("inference_mode", false, o->adapter_config);
    }

    // ---- the work ----
    apply_common_options(o->common);
    o->train.shuffle = !o->no_shuffle;
    at::manual_seed(o->train.seed);
    auto base = load_model(o->model);
    std::shared_ptr<PeftModel> m;
    if (!o->adapter_init.empty()) {
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
        std::vector<std::string> t;
        std::stringstream ss(o->target_modules);
        for (std::string item; std::getline(ss, item, ',');) {
          if (!item.empty()) t.push_back(item);
        }
        j["target_modules"] = t;
      }
      m = std::make_shared<PeftModel>(base, AdapterConfig::from_json(j, "command line"));
    }
    std::cerr << m->trainable_summary() << "\n";
    m->train();
    Trainer trainer(make_logits_fn(*m, o->compile), m->trainable_parameters(), o->train);
    std::ofstream log(o->log_file, std::ios::trunc);
    PEFT_CHECK(log.good(), "cannot write the log file '", o->log_file, "'");
    // (a non-finite loss or gradient norm stops the run before its step is logged: every value is a number)
    try {
      trainer.fit(rows, [&](const StepLog & s) {
        nlohmann::json line = {{"step", s.step}, {"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm}};
        log << line.dump() << "\n";
        log.flush();
        std::cerr << "step " << s.step << " loss " << s.loss << "\n";
      });
    } catch (const NonFiniteError & e) {
      // the update of the failing step was not applied: keep the last good adapter
      m->train(false);
      if (e.step > 1) {
        m->save_pretrained(o->out, {}, o->allow_nonfinite);
        fail(str(e.what(), "; the adapter after step ", e.step - 1, " was saved to '", o->out, "'"));
      }
      fail(str(e.what(), "; nothing was saved"));
    }
    m->train(false);
    m->save_pretrained(o->out, {}, o->allow_nonfinite);
    std::cerr << "saved adapter to " << o->out << "\n";
    return 0;
  };
}

}  // namespace peft::cli
