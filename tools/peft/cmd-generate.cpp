// peft generate: sample text from a model (with adapters), streaming tokens to the terminal.
#include <iostream>

#include "adapter-options.h"
#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/error.h"
#include "peft/generate/generate.h"
#include "peft/tokenizer/tokenizer.h"

namespace peft::cli {

Runner add_generate(CLI::App & app) {
  struct Opts {
    std::string model, dtype = "float32";
    std::vector<std::string> prompts;
    GenerationConfig gen;
    bool no_cache = false, compile = false, ids_out = false;
    CommonOptions common;
    QuantFlags quant;
    AdapterOptions adapters;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("generate", "generate text (prompts batched with left padding)");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--prompt", o->prompts, "prompt text (repeatable: a batch)")->required();
  cmd->add_option("--max-new-tokens", o->gen.max_new_tokens, "tokens to generate at most");
  cmd->add_flag("--do-sample", o->gen.do_sample, "sample instead of greedy decoding");
  cmd->add_option("--temperature", o->gen.temperature, "sampling temperature");
  cmd->add_option("--top-k", o->gen.top_k, "keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", o->gen.top_p, "nucleus sampling threshold (1 = off)");
  cmd->add_option("--repetition-penalty", o->gen.repetition_penalty, "penalty for tokens already present");
  cmd->add_option("--stop", o->gen.stop_strings, "stop when the text contains this (repeatable)");
  cmd->add_option("--seed", o->gen.seed, "sampling seed");
  cmd->add_flag("--no-cache", o->no_cache, "recompute the whole sequence every step");
  cmd->add_flag("--print-ids", o->ids_out, "also print the generated token ids as JSON");
  cmd->add_option("--dtype", o->dtype, "float32 or bfloat16");
  cmd->add_flag("--compile", o->compile, "generate with the compiled model");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  add_adapter_options(*cmd, o->adapters);
  return [o]() {
    const at::ScalarType dtype = parse_dtype(o->dtype);
    const ModelConfig mcfg = ModelConfig::load(o->model);
    PEFT_USAGE(o->gen.max_new_tokens >= 0 && o->gen.max_new_tokens <= mcfg.max_position_embeddings,
               "--max-new-tokens must be in [0, ", mcfg.max_position_embeddings, "] (the model's positions)");
    apply_common_options(o->common);
    auto base = load_model_with(o->model, dtype, o->quant);
    auto tok = load_tokenizer(o->model, base->config().vocab_size);
    Prepared run = apply_adapter_options(base, o->adapters);
    auto pm = run.peft ? run.peft : std::make_shared<PeftModel>(run.plain);
    GenerationConfig gen = o->gen;
    gen.use_cache = !o->no_cache;
    gen.eos_token_ids = base->config().eos_token_ids;
    gen.pad_token_id = std::max<int64_t>(0, base->config().pad_token_id);
    gen.virtual_tokens = pm->num_virtual_tokens();  // a prompt-learning adapter's, in the cache's first slots
    gen.fill_virtual_tokens = [pm](KVCache & c) { pm->fill_virtual_tokens(c); };
    std::vector<std::vector<int64_t>> prompts;
    for (const auto & p : o->prompts) prompts.push_back(tok->encode(p, /*add_special=*/true));
    const bool stream = prompts.size() == 1;
    std::string shown;
    std::vector<int64_t> so_far;
    auto on_token = [&](size_t, int64_t id) {
      if (!stream) return;
      so_far.push_back(id);
      std::string text = tok->decode(so_far);
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
        std::cout << text.substr(shown.size()) << std::flush;
        shown = text;
      }
    };
    if (stream) std::cout << o->prompts[0] << std::flush;
    // the adapters' model (an adapter's layer_replication gives it another layer stack than `base`)
    const PeftLogitsFn forward = make_logits_fn(*pm, o->compile);
    auto out = generate([&forward](const ForwardInput & in) { return forward(PeftInput(in)); }, pm->base_model().config(),
                        pm->base_model().options(), prompts,
                        gen, on_token,
                        [&](const std::vector<int64_t> & ids) { return tok->decode(ids); });
    if (stream) std::cout << "\n";
    for (size_t i = 0; i < out.size(); ++i) {
      if (!stream) std::cout << "[" << i << "] " << o->prompts[i] << tok->decode(out[i]) << "\n";
      if (o->ids_out) std::cout << nlohmann::json(out[i]).dump() << "\n";
    }
    return 0;
  };
}

}  // namespace peft::cli
