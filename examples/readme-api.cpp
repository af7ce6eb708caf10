// The README's C++ API example, compiled and run as a test (so the README stays true).
#include <stdlib.h>

#include <filesystem>
#include <iostream>

#include "peft/io/files.h"
#include "peft/peft.h"

int main(int argc, char ** argv) {
  const std::string model_dir = argc > 1 ? argv[1] : "models/kjv-llama";
  auto base = peft::load_model(model_dir);
  auto cfg = peft::AdapterConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 16}, {"target_modules", {"q_proj", "v_proj"}}}, "config");
  peft::PeftModel model(base, cfg);
  auto compiled = peft::compile(model);
  at::Tensor ids = at::randint(base->config().vocab_size, {2, 12}, at::kLong);

  peft::TrainOptions opts;
  opts.lr = 1e-2;
  model.train();
  peft::Trainer trainer([&](const peft::ForwardInput & in) { return compiled.forward(in); },
                        model.trainable_parameters(), opts);
  for (int i = 0; i < 3; ++i) std::cout << "loss " << trainer.step(ids).loss << "\n";
  // less memory: checkpointed decoder layers (eager) and the chunked loss
  base->set_gradient_checkpointing(true);
  peft::TrainOptions lean = opts;
  lean.loss_chunk = -1;
  peft::TrainCallbacks cb;
  cb.head = [&](const at::Tensor & h) { return base->logits(h); };
  peft::Trainer lean_trainer([&](const peft::ForwardInput & in) { return model.forward(in); },
                             model.trainable_parameters(), lean, cb);
  std::cout << "lean loss " << lean_trainer.step(ids).loss << "\n";
  base->set_gradient_checkpointing(false);
  model.train(false);
  at::NoGradGuard no_grad;
  at::Tensor eager = model.forward({ids}), fast = compiled.forward({ids});
  std::cout << "max |eager - compiled| = " << (eager - fast).abs().max().item<double>() << "\n";
  { auto off = model.disable_adapter(); compiled.forward({ids}); }
  peft::PeftInput mixed;  // a mixed-adapter batch: one adapter per row
  mixed.input_ids = ids;
  mixed.adapter_names = {"default", "__base__"};
  compiled.forward(mixed);
  model.merge_adapter();
  model.unmerge_adapter();
  std::cout << model.trainable_summary() << "\n" << compiled.explain();

  // the whole `peft train` run as a job: two steps of LoRA on a few lines of text, in a temp folder
  char tmp[] = "/tmp/peft-readme-api-XXXXXX";
  const std::string dir = ::mkdtemp(tmp);
  peft::write_file_atomic(dir + "/data.txt", "In the beginning.\n\nAnd the earth was without form.\n\nAnd void.\n");
  peft::TrainJobConfig job;
  job.model.path = model_dir;
  job.adapter.lora = peft::LoraFields{};
  job.data.train = dir + "/data.txt";
  job.train.steps = 2;
  job.train.batch_size = 2;
  job.output.adapter = dir + "/adapter";
  job.output.log_file = dir + "/log.jsonl";
  job.output.no_plot = true;
  peft::TrainJobObserver obs;
  obs.message = [](const std::string & line) { std::cout << line << "\n"; };
  const peft::TrainJobResult r = peft::TrainJob(job).run(obs);
  std::filesystem::remove_all(dir);
  if (!r.saved || r.step != 2) return 1;
  return (eager - fast).abs().max().item<double>() < 1e-4 ? 0 : 1;
}
