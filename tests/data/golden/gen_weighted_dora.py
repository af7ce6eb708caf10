#!/usr/bin/env python3
"""Golden cases from upstream PEFT for add_weighted_adapter's random draws (DARE masks, the new adapter's random
initialisation, a DoRA source), DARE over embeddings and Conv1D layers, rank/alpha patterns with target_parameters,
and DoRA on embeddings.

usage: python3 tests/data/golden/gen_weighted_dora.py --oracle /tmp/oracle [--only CASE[,CASE]]

--oracle is a prepared copy of shared/oracle (setup.sh run; /usr/bin/python3). The script imports it as gen_extra.py
does (gen_extra.setup), and for GPT-2 the reference of gen_arch.py with transformers' Conv1D put in place before PEFT
looks at it (so that PEFT sets fan_in_fan_out). It loads the base checkpoints in models/ and writes these folders under
cases/:

  weighted_dora_dare    tiny-opt, a DoRA source (fc1, fc2, out_proj, r 1) and a plain one (v_proj, fc2, k_proj,
                        out_proj, r 1), each with init_lora_weights False (d, p) and with the default init (dd, pp),
                        perturbed: add_weighted_adapter with dare_ties / dare_linear. torch.manual_seed(global_seed) is
                        applied right before each call: PEFT first builds the new adapter's layers (nn.Linear's default
                        init, then reset_lora_parameters' draws) from the global generator, and when the first source
                        is DoRA the new adapter's magnitude is ||W + s B0 A0|| of that random init (PEFT never
                        recomputes it after writing the combined A and B; with the default init B0 = 0). The DARE
                        masks come next from the same generator, or, where the combination has a mask_seed, from
                        torch.manual_seed(mask_seed) applied at the first mask draw (gen_extra's weighted_more rule).
  weighted_dare_embed_llama, weighted_dare_embed_opt, weighted_dare_conv1d_gpt2
                        two LoRA sources with the embedding among their targets (and GPT-2's Conv1D layers, whose
                        delta PEFT works on as (in, out)): dare_linear_svd / dare_ties_svd at densities 0.3-0.8
                        (masks drawn over get_delta_weight's layout: (V, D) for an embedding), dare_linear, and one
                        combination drawing everything from torch.manual_seed(global_seed) (the new embedding layer's
                        init: randn A, randn B, then normal_ B)
  lora_target_parameters_patterns
                        tiny-llama, LoRA with target_parameters ["q_proj.weight", "mlp.down_proj.weight"] and
                        target_modules ["v_proj"], rank_pattern / alpha_pattern keyed by parameter names (PEFT matches
                        a ParamWrapper's patterns against "<module>.weight"; the plain module names among the keys
                        match only v_proj); single-adapter layout
  dora_embedding        tiny-llama, DoRA (use_dora) on embed_tokens, q_proj and v_proj (PEFT's DoraEmbeddingLayer),
                        perturbed; single-adapter layout (logits, disabled, merged, unmerged, merge_and_unload)
  dora_embedding_opt    the same on tiny-opt (lm_head tied to embed_tokens) with embed_tokens, fc1 and out_proj
  dora_embedding_several
                        tiny-llama: a DoRA adapter and a plain LoRA adapter on embed_tokens active together in both
                        orders (DoRA's embedding rescales the running output, earlier adapters included), the
                        gradients of a loss with respect to the DoRA adapter's tensors, and a cat combination
                        whose first source is the DoRA adapter

Adapters are saved with save_embedding_layers=False: the files hold the adapter's tensors only (with "auto" PEFT
would add the base embedding weights of an embed_tokens target).
Every case seeds itself; the script re-runs itself with PYTHONHASHSEED=0 and single-threaded torch, so two runs write
the same files.
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", required=True, help="prepared copy of shared/oracle")
    ap.add_argument("--golden", default=HERE, help="golden folder holding models/ and cases/ (default: this folder)")
    ap.add_argument("--only", default="", metavar="CASE[,CASE]")
    a = ap.parse_args()

    import gen_extra
    import gen_arch

    torch, peft, tinyref = gen_extra.setup(a.oracle)
    # GPT-2: transformers' Conv1D in place of the stub's, in the modules that bound it (as gen_arch.py does)
    import transformers.pytorch_utils as pytorch_utils
    Conv1D = gen_arch.make_conv1d(torch)
    pytorch_utils.Conv1D = Conv1D
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("peft") and getattr(mod, "Conv1D", None) is not None:
            mod.Conv1D = Conv1D
    reference = gen_arch.build_reference(torch, Conv1D)

    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import merge_utils
    from safetensors.torch import load_file, save_file

    golden = os.path.abspath(a.golden)
    models = os.path.join(golden, "models")
    cases = os.path.join(golden, "cases")

    def load_base(sub):
        folder = os.path.join(models, sub)
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        if config["model_type"] == "gpt2":
            m = reference(config)
            missing, unexpected = m.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=False)
            assert missing == ["lm_head.weight"] and not unexpected, (missing, unexpected)
            m.eval()
            return m
        return tinyref.load_hf(folder)

    def perturb(model, seed, scale=0.05):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(scale * torch.randn(p.shape, generator=g))

    def logits_of(model, ids):
        with torch.no_grad():
            return model(ids).detach().clone()

    def input_ids(seed):
        return torch.randint(3, 96, (3, 9), generator=torch.Generator().manual_seed(seed))

    def write_case(folder, case, expected, ids):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "case.json"), "w") as f:
            json.dump(case, f, indent=2)
            f.write("\n")
        with open(os.path.join(folder, "input_ids.json"), "w") as f:
            json.dump(ids.tolist(), f)
        save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(folder, "expected.safetensors"))

    def max_diff(x, y):
        return float((x - y).abs().max())

    def weighted_call(pm, wname, spec):
        """add_weighted_adapter as the case records it: torch.manual_seed(global_seed) right before the call; a
        mask_seed re-seeds the global generator at the first DARE draw."""
        original = merge_utils.random_pruning
        state = {"seeded": False}

        def seeded(tensor, density, rescale):
            if not state["seeded"] and "mask_seed" in spec:
                torch.manual_seed(spec["mask_seed"])
                state["seeded"] = True
            return original(tensor, density, rescale=rescale)

        merge_utils.random_pruning = seeded
        try:
            kw = {k: v for k, v in spec.items() if k not in ("adapters", "weights", "global_seed", "mask_seed")}
            torch.manual_seed(spec["global_seed"])
            pm.add_weighted_adapter(spec["adapters"], spec["weights"], wname, **kw)
        finally:
            merge_utils.random_pruning = original
        assert state["seeded"] == ("mask_seed" in spec), wname

    # -----------------------------------------------------------------------------------------------------------
    def case_weighted_dora_dare(seed=2100):
        name = "weighted_dora_dare"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_base("tiny-opt")
        cfgs = {
            "d": LoraConfig(target_modules=["fc1", "fc2", "out_proj"], r=1, lora_alpha=2, use_dora=True,
                            init_lora_weights=False),
            "p": LoraConfig(target_modules=["v_proj", "fc2", "k_proj", "out_proj"], r=1, lora_alpha=3,
                            init_lora_weights=False),
            "dd": LoraConfig(target_modules=["fc1", "fc2", "out_proj"], r=1, lora_alpha=2, use_dora=True),
            "pp": LoraConfig(target_modules=["v_proj", "fc2", "k_proj", "out_proj"], r=1, lora_alpha=3),
        }
        pm = None
        for k, (nm, cfg) in enumerate(cfgs.items()):
            if pm is None:
                pm = get_peft_model(base, cfg, adapter_name=nm)
            else:
                pm.add_adapter(nm, cfg)
            pm.set_adapter(nm)
            perturb(pm, seed + 10 + k, 0.3)
        pm.eval()
        adapters_dir = os.path.join(folder, "adapters")
        pm.save_pretrained(adapters_dir, save_embedding_layers=False)
        exp = {}
        combos = {
            # the random tester's combination: the new DoRA adapter's magnitude from the random init (global_seed),
            # the masks from mask_seed
            "w_dora_dare_ties": dict(adapters=["d", "p"], weights=[0.7, 0.5], combination_type="dare_ties",
                                     density=0.3, global_seed=1001, mask_seed=42),
            # the masks follow the init's draws on the same generator
            "w_dora_dare_ties_global": dict(adapters=["d", "p"], weights=[0.7, 0.5], combination_type="dare_ties",
                                            density=0.3, global_seed=1002),
            # the default init: nn.Linear's draws for A and B, then kaiming_uniform_ on A again, per layer
            "w_default_init_dare_ties_global": dict(adapters=["dd", "pp"], weights=[0.6, 0.8],
                                                    combination_type="dare_ties", density=0.3, global_seed=1003),
            "w_plain_first_dare_linear_global": dict(adapters=["pp", "dd"], weights=[0.9, -0.4],
                                                     combination_type="dare_linear", density=0.5, global_seed=1004),
        }
        made = {}
        for wname, spec in combos.items():
            weighted_call(pm, wname, spec)
            pm.set_adapter(wname)
            exp[f"logits_{wname}"] = logits_of(pm, ids)
            c = pm.peft_config[wname]
            made[wname] = {"use_dora": c.use_dora, "r": c.r, "init_lora_weights": c.init_lora_weights}
        # what depends on the global generator: the same call after another torch.manual_seed
        spec = dict(combos["w_dora_dare_ties"], global_seed=5)
        weighted_call(pm, "w_other_global_seed", spec)
        pm.set_adapter("w_other_global_seed")
        other = logits_of(pm, ids)
        case = {
            "model": "models/tiny-opt",
            "adapters": {nm: f"adapters/{nm}" for nm in cfgs},
            "weighted": combos,
            "weighted_adapters": made,
            "upstream_other_global_seed_max_abs_diff": max_diff(other, exp["logits_w_dora_dare_ties"]),
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json; logits_<name> for the adapter "
                    "add_weighted_adapter(adapters, weights, name, combination_type, density) made, active alone. "
                    "torch.manual_seed(global_seed) was applied right before each call (PEFT draws the new adapter's "
                    "random init from the global generator; with a DoRA first source the new magnitude is the norm "
                    "of W + s B0 A0 of that init, never recomputed), and torch.manual_seed(mask_seed) at the first "
                    "DARE draw where mask_seed is given (otherwise the masks follow on the same generator). "
                    "upstream_other_global_seed_max_abs_diff: how far w_dora_dare_ties moves with global_seed 5",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # -----------------------------------------------------------------------------------------------------------
    def case_weighted_dare_transposed(name, model, cfgs, combos, seed):
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_base(model)
        pm = None
        for k, (nm, cfg) in enumerate(cfgs.items()):
            if pm is None:
                pm = get_peft_model(base, cfg, adapter_name=nm)
            else:
                pm.add_adapter(nm, cfg)
            pm.set_adapter(nm)
            perturb(pm, seed + 10 + k, 0.3)
        pm.eval()
        adapters_dir = os.path.join(folder, "adapters")
        pm.save_pretrained(adapters_dir, save_embedding_layers=False)
        layers = {n: type(m).__name__ + (" fan_in_fan_out" if getattr(m, "fan_in_fan_out", False) else "")
                  for n, m in pm.base_model.model.named_modules() if isinstance(m, LoraLayer)}
        exp = {}
        for nm in cfgs:
            pm.set_adapter(nm)
            exp[f"logits_{nm}"] = logits_of(pm, ids)
        # the DARE masks over the untransposed delta (PEFT) against a mask over B A (what a transposed draw gives)
        for wname, spec in combos.items():
            weighted_call(pm, wname, spec)
            pm.set_adapter(wname)
            exp[f"logits_{wname}"] = logits_of(pm, ids)
        case = {
            "model": f"models/{model}",
            "adapters": {nm: f"adapters/{nm}" for nm in cfgs},
            "lora_layers": layers,
            "weighted": combos,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits_<adapter> for each source, "
                    "logits_<name> for the adapter add_weighted_adapter(adapters, weights, name, **options) made, "
                    "active alone; torch.manual_seed(global_seed) right before each call, and "
                    "torch.manual_seed(mask_seed) at the first DARE draw where mask_seed is given. PEFT's *_svd types "
                    "prune get_delta_weight of each source: (V, D) for an embedding, (in, out) for a Conv1D "
                    "(fan_in_fan_out), transposed back before the SVD. lora_layers: PEFT's layer classes",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    def svd_combos(srcs, weights, base_seed):
        return {
            "w_dare_linear_svd": dict(adapters=srcs, weights=weights, combination_type="dare_linear_svd", density=0.3,
                                      global_seed=base_seed, mask_seed=base_seed + 1),
            "w_dare_ties_svd": dict(adapters=srcs, weights=weights, combination_type="dare_ties_svd", density=0.8,
                                    global_seed=base_seed + 2, mask_seed=base_seed + 3),
            "w_dare_ties_svd_frequency": dict(adapters=srcs, weights=weights, combination_type="dare_ties_svd",
                                              density=0.5, majority_sign_method="frequency", svd_rank=3,
                                              global_seed=base_seed + 4, mask_seed=base_seed + 5),
            # everything from one generator: the new adapter's init draws (an embedding: randn A, randn B, then
            # normal_ B), then the masks
            "w_dare_linear_svd_global": dict(adapters=srcs, weights=weights, combination_type="dare_linear_svd",
                                             density=0.6, global_seed=base_seed + 6),
        }

    def case_dare_embed_llama():
        cfgs = {"a": LoraConfig(target_modules=["embed_tokens", "q_proj", "v_proj"], r=4, lora_alpha=8),
                "b": LoraConfig(target_modules=["embed_tokens", "k_proj", "v_proj"], r=2, lora_alpha=4,
                                init_lora_weights=False),
                "c": LoraConfig(target_modules=["embed_tokens", "o_proj"], r=4, lora_alpha=4)}
        combos = svd_combos(["a", "b"], [0.7, 0.5], 3000)
        # not an svd type: the masks are drawn over lora_embedding_A / _B themselves (equal ranks needed)
        combos["w_dare_linear"] = dict(adapters=["a", "c"], weights=[0.6, 0.9], combination_type="dare_linear",
                                       density=0.5, global_seed=3010, mask_seed=3011)
        return case_weighted_dare_transposed("weighted_dare_embed_llama", "tiny-llama", cfgs, combos, 2200)

    def case_dare_embed_opt():
        cfgs = {"a": LoraConfig(target_modules=["embed_tokens", "q_proj", "fc2"], r=4, lora_alpha=8),
                "b": LoraConfig(target_modules=["embed_tokens", "out_proj", "fc2"], r=3, lora_alpha=6,
                                init_lora_weights=False)}
        return case_weighted_dare_transposed("weighted_dare_embed_opt", "tiny-opt", cfgs,
                                             svd_combos(["a", "b"], [0.8, 0.4], 3100), 2300)

    def case_dare_conv1d_gpt2():
        cfgs = {"a": LoraConfig(target_modules=["wte", "c_attn", "c_fc"], r=4, lora_alpha=8),
                "b": LoraConfig(target_modules=["wte", "c_attn", "mlp.c_proj"], r=2, lora_alpha=4,
                                init_lora_weights=False)}
        return case_weighted_dare_transposed("weighted_dare_conv1d_gpt2", "tiny-gpt2", cfgs,
                                             svd_combos(["a", "b"], [0.7, 0.6], 3200), 2400)

    # -----------------------------------------------------------------------------------------------------------
    def single_layout(name, model, cfg, seed, extra=None):
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_base(model)
        base_logits = logits_of(base, ids)
        pm = get_peft_model(base, cfg)
        perturb(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"), save_embedding_layers=False)
        adapter_keys = sorted(load_file(os.path.join(folder, "adapter", "adapter_model.safetensors")))
        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6)
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        layers = {n: {"r": m.r["default"], "scaling": m.scaling["default"], "class": type(m).__name__}
                  for n, m in pm.base_model.model.named_modules() if isinstance(m, LoraLayer)}
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        case = {
            "model": f"models/{model}",
            "adapter": "adapter",
            "adapter_keys": adapter_keys,
            "layers": layers,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active), "
                    "logits_disabled, logits_merged, logits_unmerged (merged, then unmerged), logits_merge_and_unload; "
                    "layers: PEFT's LoRA layers with their rank and scaling",
            **(extra or {}),
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    def case_target_parameters_patterns():
        params = ["q_proj.weight", "mlp.down_proj.weight"]
        # dict order is PEFT's matching order (the first key that matches wins); the module-name keys "q_proj" and
        # "down_proj" come first and match no parameter key ("....q_proj.weight"), only v_proj's module name
        cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["v_proj"],
                         target_parameters=params,
                         rank_pattern={"down_proj": 7, "mlp.down_proj.weight": 2, "v_proj": 6},
                         alpha_pattern={"q_proj": 20, "q_proj.weight": 3, "layers.1.mlp.down_proj.weight": 5,
                                        "v_proj": 9})
        return single_layout("lora_target_parameters_patterns", "tiny-llama", cfg, 2500,
                             {"target_parameters": params,
                              "rank_pattern": cfg.rank_pattern, "alpha_pattern": cfg.alpha_pattern})

    def case_dora_embedding():
        cfg = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["embed_tokens", "q_proj", "v_proj"])
        return single_layout("dora_embedding", "tiny-llama", cfg, 2600)

    def case_dora_embedding_opt():
        cfg = LoraConfig(r=2, lora_alpha=6, use_dora=True, init_lora_weights=False,
                         target_modules=["embed_tokens", "fc1", "out_proj"])
        return single_layout("dora_embedding_opt", "tiny-opt", cfg, 2700)

    def case_dora_embedding_several(seed=2800):
        name = "dora_embedding_several"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_base("tiny-llama")
        cfgs = {"dora": LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["embed_tokens", "v_proj"]),
                "plain": LoraConfig(r=2, lora_alpha=2, target_modules=["embed_tokens", "q_proj"])}
        pm = None
        for k, (nm, cfg) in enumerate(cfgs.items()):
            if pm is None:
                pm = get_peft_model(base, cfg, adapter_name=nm)
            else:
                pm.add_adapter(nm, cfg)
            pm.set_adapter(nm)
            perturb(pm, seed + 10 + k, 0.1)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapters"), save_embedding_layers=False)
        exp = {}
        embed = pm.base_model.model.model.embed_tokens
        sets = {"logits_dora_plain": ["dora", "plain"], "logits_plain_dora": ["plain", "dora"]}
        for key, names in sets.items():
            pm.base_model.set_adapter(names)
            assert list(embed.active_adapters) == names
            exp[key] = logits_of(pm, ids)
        pm.base_model.set_adapter(["dora", "plain"])
        pm.merge_adapter()
        exp["logits_dora_plain_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        # gradients through DoRA's embedding (norm detached), training mode, dora alone
        pm.set_adapter("dora")
        pm.train()
        logits = pm(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        loss.backward()
        grads = {}
        for n, p in pm.base_model.model.named_parameters():
            if p.grad is not None:
                grads["grad." + n] = p.grad.detach().clone()
        exp["loss"] = loss.detach().reshape(1)
        exp.update(grads)
        pm.zero_grad()
        pm.eval()
        torch.manual_seed(seed + 50)
        pm.add_weighted_adapter(["dora", "plain"], [0.6, 0.8], "w_cat", combination_type="cat")
        pm.set_adapter("w_cat")
        exp["logits_w_cat"] = logits_of(pm, ids)
        pm.save_pretrained(os.path.join(folder, "adapters"), selected_adapters=["w_cat"], save_embedding_layers=False)
        case = {
            "model": "models/tiny-llama",
            "adapters": {nm: f"adapters/{nm}" for nm in cfgs},
            "active_sets": sets,
            "merged": {"logits_dora_plain_merged": ["dora", "plain"]},
            "grads": sorted(grads),
            "weighted": {"w_cat": {"adapters": ["dora", "plain"], "weights": [0.6, 0.8], "combination_type": "cat",
                                   "global_seed": seed + 50, "folder": "adapters/w_cat",
                                   "use_dora": pm.peft_config["w_cat"].use_dora}},
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json. logits_<a>_<b>: the adapters a, b "
                    "active together in that order (model.base_model.set_adapter([a, b])); logits_dora_plain_merged: "
                    "both merged in that order. loss: mean cross-entropy of logits[:, :-1] against input_ids[:, 1:] "
                    "with dora alone active in train mode; grad.<parameter>: its gradients (named as in "
                    "base_model.model). logits_w_cat: add_weighted_adapter([dora, plain], [0.6, 0.8], cat) after "
                    "torch.manual_seed(global_seed): a DoRA adapter whose magnitude is the norm of its random init "
                    "(B0 = 0 on Linear; on the embedding A0 = 0), saved in adapters/w_cat",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    all_cases = {
        "weighted_dora_dare": case_weighted_dora_dare,
        "weighted_dare_embed_llama": case_dare_embed_llama,
        "weighted_dare_embed_opt": case_dare_embed_opt,
        "weighted_dare_conv1d_gpt2": case_dare_conv1d_gpt2,
        "lora_target_parameters_patterns": case_target_parameters_patterns,
        "dora_embedding": case_dora_embedding,
        "dora_embedding_opt": case_dora_embedding_opt,
        "dora_embedding_several": case_dora_embedding_several,
    }
    only = [c for c in a.only.split(",") if c]
    unknown = [c for c in only if c not in all_cases]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(all_cases)}")
    for nm, run in all_cases.items():
        if not only or nm in only:
            for k, v in run().items():
                print(k, " ".join(v))


if __name__ == "__main__":
    main()
