#include "adapter-options.h"

#include "peft/error.h"
#include "peft/tuners/lora-weighted.h"

namespace peft::cli {

void add_adapter_options(CLI::App & cmd, AdapterOptions & o, AdapterFlags which) {
  cmd.add_option("--adapter", o.adapters, "PEFT adapter folder, optionally =NAME (repeatable; the first is active)");
  cmd.add_option("--active", o.active, "comma-separated adapters to activate together");
  cmd.add_flag("--allow-base-weights", o.allow_base_weights,
               "load adapter files that also overwrite base-model weights (refused by default)");
  cmd.add_option("--init-seed", o.init_seed,
                 "seed the global generator before the adapters load: an adapter whose config draws random numbers "
                 "when it is created (init_lora_weights pissa_niter_N) then gets what upstream PEFT gets after "
                 "torch.manual_seed(N)")
      ->check(CLI::NonNegativeNumber);
  if (which == AdapterFlags::run) {
    cmd.add_flag("--disable-adapters", o.disable, "run with adapters disabled");
    cmd.add_flag("--merge", o.merge, "merge the active adapters into the base weights");
    cmd.add_flag("--unmerge", o.unmerge, "after --merge: unmerge again, then run");
    cmd.add_flag("--merge-and-unload", o.merge_and_unload, "merge, then run the plain model");
  }
  cmd.add_option("--weighted", o.weighted,
                 "NAME=TYPE:ADAPTER*WEIGHT,...[:KEY=VALUE...]: add a weighted combination (svd, cat, linear, ties, "
                 "dare_linear, dare_ties, magnitude_prune, ties_svd, dare_linear_svd, dare_ties_svd, "
                 "magnitude_prune_svd; options density, seed, svd_rank, svd_clamp, svd_full_matrices, "
                 "majority_sign_method) and activate it (repeatable)");
}

static std::vector<std::string> split(const std::string & s);

// NAME=TYPE:ADAPTER*WEIGHT,...[:KEY=VALUE...]
static void apply_weighted(PeftModel & pm, const std::string & spec) {
  auto bad = [&](const std::string & why) { fail(str("--weighted '", spec, "': ", why)); };
  size_t eq = spec.find('='), c1 = spec.find(':');
  if (eq == std::string::npos || c1 == std::string::npos || c1 < eq) bad("expected NAME=TYPE:ADAPTER*WEIGHT,...");
  WeightedAdapterOptions o;
  const std::string name = spec.substr(0, eq);
  o.combination_type = spec.substr(eq + 1, c1 - eq - 1);
  std::string rest = spec.substr(c1 + 1);
  size_t c2 = rest.find(':');
  if (c2 != std::string::npos) {
    std::string opts = rest.substr(c2 + 1);
    rest = rest.substr(0, c2);
    size_t start = 0;
    while (start <= opts.size()) {
      const size_t end = std::min(opts.find(':', start), opts.size());
      const std::string opt = opts.substr(start, end - start);
      start = end + 1;
      const size_t q = opt.find('=');
      if (q == std::string::npos) bad("options after the adapters are KEY=VALUE (density, seed, svd_rank, svd_clamp, svd_full_matrices, majority_sign_method)");
      const std::string key = opt.substr(0, q), value = opt.substr(q + 1);
      try {
        if (key == "density") o.density = std::stod(value);
        else if (key == "seed") o.seed = std::stoll(value);
        else if (key == "svd_rank") o.svd_rank = std::stoll(value);
        else if (key == "svd_clamp") o.svd_clamp = std::stod(value);
        else if (key == "majority_sign_method") o.majority_sign_method = value;
        else if (key == "svd_full_matrices") {
          if (value != "true" && value != "false") bad("svd_full_matrices is true or false");
          o.svd_full_matrices = value == "true";
        } else {
          bad("unknown option '" + key + "' (density, seed, svd_rank, svd_clamp, svd_full_matrices, majority_sign_method)");
        }
      } catch (const std::invalid_argument &) {
        bad(key + " is not a number");
      } catch (const std::out_of_range &) {
        bad(key + " is out of range");
      }
    }
  }
  std::vector<std::string> adapters;
  std::vector<double> weights;
  for (const auto & item : split(rest)) {
    size_t star = item.find('*');
    if (star == std::string::npos) bad("each adapter needs a weight: ADAPTER*WEIGHT");
    adapters.push_back(item.substr(0, star));
    try {
      weights.push_back(std::stod(item.substr(star + 1)));
    } catch (const std::exception &) {
      bad("weight of '" + adapters.back() + "' is not a number");
    }
  }
  add_weighted_adapter(pm, adapters, weights, name, o);
  pm.set_adapter(name);
}

static std::vector<std::string> split(const std::string & s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t c = s.find(',', start);
    std::string part = s.substr(start, c == std::string::npos ? std::string::npos : c - start);
    if (!part.empty()) out.push_back(part);
    if (c == std::string::npos) break;
    start = c + 1;
  }
  return out;
}

Prepared apply_adapter_options(std::shared_ptr<CausalLM> model, const AdapterOptions & o) {
  Prepared p;
  if (o.adapters.empty()) {
    PEFT_CHECK(o.active.empty() && !o.merge && !o.unmerge && !o.merge_and_unload,
               "--active/--merge/--unmerge/--merge-and-unload need at least one --adapter");
    p.plain = model;
    return p;
  }
  PEFT_CHECK(!o.unmerge || o.merge, "--unmerge needs --merge");
  if (o.init_seed >= 0) at::manual_seed(static_cast<uint64_t>(o.init_seed));
  auto pm = std::make_shared<PeftModel>(model);
  std::string first;
  for (size_t i = 0; i < o.adapters.size(); ++i) {
    std::string path = o.adapters[i], name = i == 0 ? "default" : "adapter" + std::to_string(i);
    size_t eq = path.rfind('=');
    if (eq != std::string::npos) {
      name = path.substr(eq + 1);
      path = path.substr(0, eq);
    }
    pm->load_adapter(path, name, /*is_trainable=*/false, o.allow_base_weights);
    if (first.empty()) first = name;
  }
  pm->set_adapter(o.active.empty() ? std::vector<std::string>{first} : split(o.active));
  for (const auto & w : o.weighted) apply_weighted(*pm, w);
  if (o.disable) pm->set_adapters_disabled(true);
  if (o.merge_and_unload) {
    p.plain = pm->merge_and_unload();
    return p;
  }
  if (o.merge) pm->merge_adapter();
  if (o.unmerge) pm->unmerge_adapter();
  p.peft = pm;
  return p;
}

RunModel load_run_model(const std::string & dir, at::ScalarType dtype, const QuantFlags & quant, const AdapterOptions & adapters,
                        bool compile) {
  Prepared run = apply_adapter_options(load_model_with(dir, dtype, quant), adapters);
  RunModel r;
  r.has_adapters = run.peft != nullptr;
  r.model = run.peft ? run.peft : std::make_shared<PeftModel>(run.plain);
  r.forward = make_logits_fn(*r.model, compile);
  return r;
}

}  // namespace peft::cli
