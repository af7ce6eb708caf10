// The table of upstream-PEFT golden cases with one adapter (tests/data/golden/cases/<name>), shared by
// the eager tests and the compiled-parity matrix. A method joins by adding a row.
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "peft/io/files.h"
#include "peft/peft-model.h"
#include "peft/train/trainer.h"
#include "support.h"

namespace peft::test {

struct GoldenCase {
  std::string name;   // folder under golden/cases
  std::string model;  // folder under golden/models
  // case.json's init_seed: upstream seeded the global generator with it right before creating the adapter,
  // whose initialisation draws from it again when the folder is loaded (PiSSA by randomized SVD); -1: none
  int64_t init_seed = -1;
};

/// GoogleTest prints a case by its name.
inline void PrintTo(const GoldenCase & c, std::ostream * os) { *os << c.name; }

/// PeftModel::from_pretrained of the case's adapter (or `dir`) as upstream made it: the generator seeded
/// first when the case has an init_seed.
inline std::shared_ptr<PeftModel> load_golden(const GoldenCase & c, std::shared_ptr<CausalLM> base, const std::string & dir = "") {
  if (c.init_seed >= 0) at::manual_seed(static_cast<uint64_t>(c.init_seed));
  return PeftModel::from_pretrained(std::move(base), dir.empty() ? golden_case(c.name) + "/adapter" : dir);
}
/// The CLI flag doing the same (" --init-seed N" or "").
inline std::string cli_init_seed(const GoldenCase & c) {
  return c.init_seed >= 0 ? " --init-seed " + std::to_string(c.init_seed) : "";
}

inline const std::vector<GoldenCase> & single_adapter_cases() {
  static const std::vector<GoldenCase> cases = {
      {"lora", "tiny-llama"},         {"lora_rslora_dropout", "tiny-llama"}, {"lora_bias_opt", "tiny-opt"},
      {"dora", "tiny-llama"},         {"lora_embedding", "tiny-llama"},      {"lora_modules_to_save", "tiny-llama"},
      {"ia3", "tiny-llama"},          {"ia3_opt", "tiny-opt"},               {"loha", "tiny-llama"},
      {"lokr", "tiny-llama"},         {"ln_tuning", "tiny-opt"},             {"adalora", "tiny-llama"},
      {"oft", "tiny-llama"},          {"boft", "tiny-llama"},                {"vera", "tiny-llama"},
      // made by gen_extra.py: COFT (projection clamps 24 of 32 blocks), OFT module_dropout (never applied
      // by PEFT), VeRA with bias="vera_only" on OPT, full-name targets beside layers_to_transform
      {"oft_coft", "tiny-llama"},     {"oft_module_dropout", "tiny-llama"},  {"vera_bias_opt", "tiny-opt"},
      {"lora_layer_filter", "tiny-llama"},
      // HRA (gen_extra.py): Householder reflections, and with Gram-Schmidt
      {"hra", "tiny-llama"},          {"hra_gs", "tiny-llama"},
      // RoAd (gen_extra.py): road_1, road_2, and road_4 on OPT (the merge rotates the biases too)
      {"road", "tiny-llama"},         {"road_2", "tiny-llama"},              {"road_4_opt", "tiny-opt"},
      // DeLoRA (gen_extra.py): r 4; rank/lambda patterns beside modules_to_save; OPT with bias="delora_only"
      {"delora", "tiny-llama"},       {"delora_pattern", "tiny-llama"},      {"delora_opt", "tiny-opt"},
      // MiSS (gen_extra.py) in its three modes: a partial last block (r=5), "bat", "mini"
      {"miss", "tiny-llama"},         {"miss_bat", "tiny-llama"},            {"miss_mini", "tiny-llama"},
      // FourierFT (gen_extra.py): seeded coefficient positions, n_frequency_pattern
      {"fourierft", "tiny-llama"},
      // VB-LoRA (gen_extra.py): a shared vector bank, top-2; top-3 saved with save_only_topk_weights
      {"vblora", "tiny-llama"},       {"vblora_topk", "tiny-llama"},
      // SHiRA (gen_extra.py): seeded and unseeded masks; the indices are in the file
      {"shira", "tiny-llama"},        {"shira_noseed", "tiny-llama"},
      // RandLoRA (gen_extra.py): dense and sparse bases, in the file; a partial last basis
      {"randlora", "tiny-llama"},     {"randlora_sparse", "tiny-llama"},
      // LoRA initialised from the base weight (PiSSA's SVD, OLoRA's QR): the base keeps the residual
      {"lora_pissa", "tiny-llama"},   {"lora_olora", "tiny-llama"},
      // PiSSA by randomized SVD (init_lora_weights pissa_niter_2): upstream's draws, seeded as it was
      {"lora_pissa_niter", "tiny-llama", 805},
      // BOFT with 2 and 3 butterfly factors (gen_extra.py: upstream with its CUDA extension's block-diagonal
      // builder, which its CPU fallback would replace by one factor)
      {"boft_butterfly2", "tiny-llama"}, {"boft_butterfly3", "tiny-llama"},
      // trainable tokens (gen_extra.py): rows of tiny-llama's embedding; tiny-opt's, lm_head tied to it
      {"trainable_tokens", "tiny-llama"}, {"trainable_tokens_tied", "tiny-opt"},
      // LoRA with trainable_token_indices (gen_extra.py): the list form; {module: rows} on a tied model
      {"lora_tokens", "tiny-llama"},      {"lora_tokens_tied", "tiny-opt"},
      // LoRA on parameters (gen_extra.py): q_proj/down_proj weights by target_parameters, v_proj by target_modules
      {"lora_target_parameters", "tiny-llama"},
      // gen_config_cases.py: OFT on "all-linear" and LoHa on a regex, each beside layers_to_transform (PEFT's configs
      // take it; it filters nothing there); trainable tokens targeting the embedding and the output layer tied to it;
      // LoRA on both embedding layers, whose file holds their base weights (save_embedding_layers="auto")
      {"oft_all_linear_layers", "tiny-llama"}, {"loha_regex_layers", "tiny-llama"},
      {"trainable_tokens_tied_both", "tiny-opt"}, {"lora_embed_base_saved", "tiny-llama"},
      // gen_weighted_dora.py: rank/alpha patterns keyed by parameter names with target_parameters; DoRA on an
      // embedding (PEFT's DoraEmbeddingLayer), on tiny-llama and on tiny-opt (lm_head tied to it)
      {"lora_target_parameters_patterns", "tiny-llama"},
      {"dora_embedding", "tiny-llama"},   {"dora_embedding_opt", "tiny-opt"},
  };
  return cases;
}

/// The optimizer of the golden training run (train_lora_adamw/case.json), whole batch, no shuffling.
inline TrainOptions golden_train_options() {
  auto opt = nlohmann::json::parse(read_file(golden_case("train_lora_adamw") + "/case.json"));
  TrainOptions o;
  o.batch_size = golden_ids("train_lora_adamw").size(0);
  o.steps = opt["steps"].get<int64_t>();
  o.lr = opt["optimizer"]["lr"].get<double>();
  o.beta1 = opt["optimizer"]["betas"][0].get<double>();
  o.beta2 = opt["optimizer"]["betas"][1].get<double>();
  o.eps = opt["optimizer"]["eps"].get<double>();
  o.weight_decay = opt["optimizer"]["weight_decay"].get<double>();
  o.shuffle = false;
  return o;
}

}  // namespace peft::test
