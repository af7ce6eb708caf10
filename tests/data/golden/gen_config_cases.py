#!/usr/bin/env python3
"""Golden cases from upstream PEFT for configurations peft.cpp refused while upstream accepts them (issue 27, "wrong
refusals"): the layer filter beside a string target_modules, modules_to_save with prompt learning, trainable tokens on
an embedding and the output layer tied to it, and the base embedding weights that save_embedding_layers="auto" writes
into adapter files.

usage: python3 tests/data/golden/gen_config_cases.py --oracle /tmp/oracle [--only CASE[,CASE]]

--oracle is a prepared copy of shared/oracle (run its setup.sh first; use /usr/bin/python3, Debian's interpreter with
torch). The script reuses gen_extra.py's setup (oracle_env before peft, the models' get_input_embeddings, which PEFT's
save_embedding_layers needs) and, for the prompt-learning cases, gen_prompt.py's forward (inputs_embeds, past keys and
values); it LOADS the checkpoints in models/ (never rebuilds them) and writes these folders under cases/ (the
single-adapter cases have gen_golden.py's layout: adapter/, input_ids.json, expected.safetensors with logits,
logits_disabled, logits_merged, logits_unmerged, logits_merge_and_unload):

  config_rules          case.json only: for LoRA, AdaLoRA, OFT, BOFT, LoHa, LoKr, VeRA, VB-LoRA, RandLoRA, HRA, MiSS and
                        FourierFT, whether upstream accepts layers_to_transform / layers_pattern beside "all-linear", a
                        regex, or (layers_pattern alone) a list, and which modules it adapts (fields: the config as
                        adapter_config.json fields)
  oft_all_linear_layers tiny-llama, OFT (block size 4) with target_modules="all-linear" and layers_to_transform=[1]: PEFT
                        expands "all-linear" to the layers' full names, which the layer filter never applies to, so all
                        14 linear layers of both decoder layers are adapted; single-adapter layout
  loha_regex_layers     tiny-llama, LoHa with a regex target_modules and layers_to_transform=[1] (ignored); same layout
  trainable_tokens_tied_both
                        tiny-opt (lm_head tied to embed_tokens), TRAINABLE_TOKENS with target_modules=["embed_tokens",
                        "lm_head"]: lm_head's layer is replaced by one tied to the embedding's, as with the embedding
                        alone (case.json: the logits' difference to that); same layout
  prompt_tuning_mts, p_tuning_mts, prefix_tuning_mts
                        tiny-llama, prompt tuning / P-tuning (MLP) / prefix tuning with modules_to_save: copies of the
                        modules trained beside the encoder. Expected: logits, logits_disabled (upstream's
                        disable_adapter only swaps the forward: the copies stay in place), logits_loaded (upstream's
                        from_pretrained of adapter/), losses (4 AdamW steps, lr 1e-2, wd 0.01, labels = input_ids) and
                        logits_final; encoder.safetensors (the encoder's state dict) and copies.safetensors (the copies'
                        weights by module path) as they were before training
  lora_embed_base_saved LoRA on embed_tokens, lm_head and q_proj: save_embedding_layers="auto" writes the base weights of
                        both embedding layers (".base_layer.weight") into the file, equal to the base; single layout
  lora_embed_base_changed
                        the same with rows of the base embedding changed before saving: upstream's from_pretrained loads
                        them into the base embedding. Expected: logits_loaded, logits_loaded_disabled, and the base's
                        logits_base
  multi_embed_head      tiny-llama, LoRA adapters "emb" (embed_tokens, q_proj) and "head" (lm_head only) saved together:
                        each file holds the other's embedding base weight (".base_layer.weight"), which upstream ignores
                        when that module is not adapted. Expected: logits_<name>_alone (the folder loaded alone),
                        logits_<name> (both loaded, emb first, that one active), logits_base

--only writes just the named cases; every case seeds itself, so its files are the same as in a full run. Everything
is seeded and single-threaded (the script re-runs itself with PYTHONHASHSEED=0), so two runs write the same files.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # (importing gen_extra / gen_prompt leaves no __pycache__ here)


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", required=True, help="prepared copy of shared/oracle")
    ap.add_argument("--golden", default=HERE, help="golden folder holding models/ and cases/ (default: this folder)")
    ap.add_argument("--only", default="", metavar="CASE[,CASE]")
    a = ap.parse_args()

    import gen_extra
    import gen_prompt

    torch, peft, tinyref = gen_extra.setup(a.oracle)
    plain_forward = {c: c.forward for c in (tinyref.LlamaForCausalLM, tinyref.OPTForCausalLM)}
    gen_prompt.setup(a.oracle)  # transformers' forward for prompt learning, used only inside prompt_forward()
    prompt_forward_fns = {c: c.forward for c in plain_forward}
    for c, f in plain_forward.items():
        c.forward = f

    @contextlib.contextmanager
    def prompt_forward():
        for c, f in prompt_forward_fns.items():
            c.forward = f
        try:
            yield
        finally:
            for c, f in plain_forward.items():
                c.forward = f

    from peft import PeftModel, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file, save_file
    import peft.tuners.randlora.model as randlora_model

    def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
        # torch >= 2.1's signature (a generator argument), which PEFT's RandLoRA uses and Debian's torch 1.13 lacks
        fan = torch.nn.init._calculate_correct_fan(tensor, mode)
        bound = math.sqrt(3.0) * torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
        with torch.no_grad():
            return tensor.uniform_(-bound, bound, generator=generator)

    randlora_model.torch.nn.init.kaiming_uniform_ = kaiming_uniform_

    golden = os.path.abspath(a.golden)
    models = os.path.join(golden, "models")
    cases = os.path.join(golden, "cases")

    def perturb_trainables(model, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))

    def logits_of(model, ids):
        with torch.no_grad():
            out = model(ids)
            return (out.logits if hasattr(out, "logits") else out).detach().clone()

    def input_ids(seed):
        return torch.randint(3, 96, (3, 9), generator=torch.Generator().manual_seed(seed))

    def write_json(path, obj):
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

    def write_case(folder, case, expected, ids):
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "case.json"), case)
        with open(os.path.join(folder, "input_ids.json"), "w") as f:
            json.dump(ids.tolist(), f)
        save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(folder, "expected.safetensors"))

    def load_model(sub):
        m = tinyref.load_hf(os.path.join(models, sub))
        if m.config.get("tie_word_embeddings") and isinstance(m, tinyref.LlamaForCausalLM):
            m.lm_head.weight = m.model.embed_tokens.weight  # tinyref ties only OPT itself; HF ties on load
        return m

    def adapted_modules(pm):
        return [n for n, m in pm.base_model.model.named_modules() if isinstance(m, BaseTunerLayer)]

    def file_keys(folder):
        return sorted(load_file(os.path.join(folder, "adapter_model.safetensors")))

    def case_single(name, make_cfg, seed, model="tiny-llama", facts=None):
        """One adapter made from make_cfg() with perturbed tensors, in the single-adapter layout."""
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_model(model)
        base_logits = logits_of(base, ids)
        pm = get_peft_model(base, make_cfg())
        perturb_trainables(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6)
        extra = facts(pm, ids, exp) if facts else {}
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        case = {
            "model": "models/" + model,
            "adapter": "adapter",
            "method": name,
            "disabled_is_base_model": True,
            **({"adapted_modules": extra.pop("adapted_modules")} if "adapted_modules" in extra else {}),
            "adapter_keys": file_keys(os.path.join(folder, "adapter")),
            **extra,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active), "
                    "logits_disabled, logits_merged (after merge_adapter), logits_unmerged (after unmerge_adapter), "
                    "logits_merge_and_unload",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # 1. the layer filter beside a string target_modules, per method
    def case_config_rules():
        name = "config_rules"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        methods = {
            "LORA": ("LoraConfig", {"r": 2}),
            "ADALORA": ("AdaLoraConfig", {"total_step": 10}),
            "OFT": ("OFTConfig", {"r": 0, "oft_block_size": 4}),
            "BOFT": ("BOFTConfig", {"boft_block_size": 4}),
            "LOHA": ("LoHaConfig", {"r": 2}),
            "LOKR": ("LoKrConfig", {"r": 2}),
            "VERA": ("VeraConfig", {"r": 4}),
            "VBLORA": ("VBLoRAConfig", {"r": 2, "num_vectors": 16, "vector_length": 8}),
            "RANDLORA": ("RandLoraConfig", {"r": 4}),
            "HRA": ("HRAConfig", {"r": 2}),
            "MISS": ("MissConfig", {"r": 4}),
            "FOURIERFT": ("FourierFTConfig", {"n_frequency": 10}),
        }
        variants = {
            "all_linear_layers_to_transform": {"target_modules": "all-linear", "layers_to_transform": [1]},
            "regex_layers_to_transform": {"target_modules": r".*\.(q_proj|v_proj)", "layers_to_transform": [1]},
            "regex_layers_pattern": {"target_modules": r".*\.(q_proj|v_proj)", "layers_to_transform": [1],
                                     "layers_pattern": "layers"},
            "list_layers_pattern_alone": {"target_modules": ["q_proj"], "layers_pattern": "layers"},
        }
        checks = {}
        for peft_type, (cls_name, base_fields) in methods.items():
            cls = getattr(peft, cls_name)
            for vname, vfields in variants.items():
                fields = {**base_fields, **vfields}
                entry = {"peft_type": peft_type, "fields": fields, "applied_to": "models/tiny-llama"}
                stage = "config"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        cfg = cls(**fields)
                        stage = "get_peft_model"
                        torch.manual_seed(0)
                        pm = get_peft_model(tinyref.load_hf(os.path.join(models, "tiny-llama")), cfg)
                        entry.update(accepted=True, adapted_modules=adapted_modules(pm))
                    except Exception as e:  # noqa: BLE001
                        entry.update(accepted=False, refused_by=stage, error=f"{type(e).__name__}: {e}")
                checks[f"{peft_type.lower()}_{vname}"] = entry
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "case.json"), {
            "what": "for each method and configuration (fields: the config's fields as PEFT names them), whether "
                    "upstream accepts it (the config made, then applied with get_peft_model to applied_to); "
                    "refused_by: the step that raised, error: its message; adapted_modules: the modules upstream "
                    "adapted (named in the base model)",
            "checks": checks})
        return {name: sorted(checks)}

    def case_oft_all_linear():
        def make():
            return peft.OFTConfig(r=0, oft_block_size=4, target_modules="all-linear", layers_to_transform=[1],
                                  init_weights=False)
        return case_single("oft_all_linear_layers", make, 900,
                           facts=lambda pm, ids, exp: {"adapted_modules": adapted_modules(pm)})

    def case_loha_regex():
        def make():
            return peft.LoHaConfig(r=2, alpha=4, target_modules=r".*\.(q_proj|v_proj)", layers_to_transform=[1],
                                   init_weights=False)
        return case_single("loha_regex_layers", make, 910,
                           facts=lambda pm, ids, exp: {"adapted_modules": adapted_modules(pm)})

    # ---------------------------------------------------------------------------------------------------------------
    # 4. trainable tokens on the embedding and the output layer tied to it
    def case_tokens_tied_both():
        kw = dict(token_indices=[1, 4, 60], init_weights=False)

        def facts(pm, ids, exp):
            # the same adapter made with the embedding alone: the same tensors, the same logits
            torch.manual_seed(920)
            alone = get_peft_model(load_model("tiny-opt"), peft.TrainableTokensConfig(target_modules=["embed_tokens"],
                                                                                    **kw))
            with torch.no_grad():
                for (n1, p1), (n2, p2) in zip(sorted(pm.named_parameters()), sorted(alone.named_parameters())):
                    assert n1 == n2, (n1, n2)
                    p2.copy_(p1)
            alone.eval()
            return {"adapted_modules": adapted_modules(pm),
                    "logits_max_abs_diff_vs_embedding_alone": (logits_of(alone, ids) - exp["logits"]).abs().max().item(),
                    "lm_head_tied_to_embedding": pm.base_model.model.lm_head.tied_adapter is not None}

        return case_single("trainable_tokens_tied_both",
                           lambda: peft.TrainableTokensConfig(target_modules=["embed_tokens", "lm_head"], **kw), 920,
                           model="tiny-opt", facts=facts)

    # ---------------------------------------------------------------------------------------------------------------
    # 3. modules_to_save with prompt learning
    def case_prompt_mts(name, cfg, seed):
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        ids = input_ids(seed + 1)
        cfg = dict(cfg, task_type="CAUSAL_LM")
        with prompt_forward():
            torch.manual_seed(seed)
            base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
            base.eval()
            with torch.no_grad():
                base_logits = base(input_ids=ids).logits
            model = get_peft_model(base, peft.get_peft_config(cfg))
            trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
            perturb_trainables(model, seed + 10)
            enc = model.prompt_encoder["default"]
            enc_state = {k: v.detach().clone().contiguous() for k, v in enc.state_dict().items()}
            copies = {}
            for n, m in model.base_model.named_modules():
                if type(m).__name__ == "ModulesToSaveWrapper":
                    for k, v in m.modules_to_save["default"].state_dict().items():
                        copies[f"{n}.{k}"] = v.detach().clone().contiguous()
            model.eval()
            exp = {}
            with torch.no_grad():
                exp["logits"] = model(input_ids=ids).logits
                with model.disable_adapter():
                    exp["logits_disabled"] = model(input_ids=ids).logits
            copies_active_when_disabled = not torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6)
            adapter_dir = os.path.join(folder, "adapter")
            model.save_pretrained(adapter_dir)
            loaded = PeftModel.from_pretrained(tinyref.load_hf(os.path.join(models, "tiny-llama")), adapter_dir)
            loaded.eval()
            with torch.no_grad():
                exp["logits_loaded"] = loaded(input_ids=ids).logits
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
            losses = []
            for _ in range(4):
                out = model(input_ids=ids, labels=ids)
                losses.append(out.loss.item())
                out.loss.backward()
                opt.step()
                opt.zero_grad()
            model.eval()
            with torch.no_grad():
                exp["logits_final"] = model(input_ids=ids).logits
            exp["losses"] = torch.tensor(losses, dtype=torch.float64)
        save_file(enc_state, os.path.join(folder, "encoder.safetensors"))
        save_file(copies, os.path.join(folder, "copies.safetensors"))
        case = {
            "model": "tiny-llama", "config": cfg, "trainable": trainable,
            "adapter_keys": file_keys(adapter_dir),
            "copies_active_when_disabled": copies_active_when_disabled,
            "expected": {
                "logits": "eval logits, adapter active (prompt/P-tuning: virtual tokens first); prompt tuning and "
                          "P-tuning embed the input with the embedding PEFT found before wrapping modules_to_save "
                          "(PeftModel.word_embeddings), so a copy of embed_tokens does not change them",
                "logits_disabled": "inside disable_adapter(): upstream swaps in the base model's forward, whose "
                                   "modules_to_save wrappers still run the copies",
                "logits_loaded": "PeftModel.from_pretrained(adapter/)",
                "losses": "4 AdamW steps (lr 1e-2, wd 0.01), labels = input_ids, the encoder and the copies trained",
                "logits_final": "eval logits after training",
            },
        }
        write_json(os.path.join(folder, "case.json"), case)
        with open(os.path.join(folder, "input_ids.json"), "w") as f:
            json.dump(ids.tolist(), f)
        save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(folder, "expected.safetensors"))
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # 6. save_embedding_layers="auto": the base embedding weights in the adapter file
    def case_embed_base_saved():
        return case_single("lora_embed_base_saved",
                           lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head", "q_proj"],
                                                   init_lora_weights=False), 930)

    def case_embed_base_changed(seed=940):
        name = "lora_embed_base_changed"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_model("tiny-llama")
        exp = {"logits_base": logits_of(base, ids)}
        pm = get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"],
                                                  init_lora_weights=False))
        perturb_trainables(pm, seed + 10)
        rows = [3, 17, 42, 88]
        g = torch.Generator().manual_seed(seed + 20)
        with torch.no_grad():  # the base embedding changed after the adapter was made (e.g. new tokens' rows set)
            w = pm.base_model.model.model.embed_tokens.base_layer.weight
            w[rows] = torch.randn(len(rows), w.shape[1], generator=g)
        pm.eval()
        adapter_dir = os.path.join(folder, "adapter")
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            pm.save_pretrained(adapter_dir)
        loaded = PeftModel.from_pretrained(load_model("tiny-llama"), adapter_dir)
        loaded.eval()
        exp["logits_loaded"] = logits_of(loaded, ids)
        with loaded.disable_adapter():
            exp["logits_loaded_disabled"] = logits_of(loaded, ids)
        assert torch.allclose(exp["logits_loaded"], logits_of(pm, ids), atol=1e-6)
        assert not torch.allclose(exp["logits_loaded_disabled"], exp["logits_base"], atol=1e-3)
        case = {
            "model": "models/tiny-llama", "adapter": "adapter", "changed_rows": rows,
            "adapter_keys": file_keys(adapter_dir),
            "save_warnings": sorted({str(w.message) for w in ws}),
            "what": "LoRA on embed_tokens and q_proj; the base embedding's rows changed_rows were changed before "
                    "save_pretrained, which wrote the base embedding weight (save_embedding_layers=\"auto\": "
                    "...embed_tokens.base_layer.weight). logits_loaded: upstream's from_pretrained of adapter/ on "
                    "the unchanged base (it loads that weight into the base embedding); logits_loaded_disabled: the "
                    "same inside disable_adapter() (the changed base); logits_base: the unchanged base model",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # 5. two adapters saved together: each file holds the other's embedding base weight
    def case_multi_embed_head(seed=950):
        name = "multi_embed_head"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_model("tiny-llama")
        exp = {"logits_base": logits_of(base, ids)}
        cfgs = {"emb": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"],
                                       init_lora_weights=False),
                "head": peft.LoraConfig(r=2, lora_alpha=4, target_modules=["lm_head"], init_lora_weights=False)}
        pm = get_peft_model(base, cfgs["emb"], adapter_name="emb")
        pm.add_adapter("head", cfgs["head"])
        for i, nm in enumerate(cfgs):
            pm.set_adapter(nm)
            perturb_trainables(pm, seed + 10 + i)
        pm.eval()
        adapters = os.path.join(folder, "adapters")
        pm.save_pretrained(adapters)
        for nm in cfgs:
            pm.set_adapter(nm)
            exp[f"logits_{nm}_made"] = logits_of(pm, ids)
        keys = {nm: file_keys(os.path.join(adapters, nm)) for nm in cfgs}
        load_results = {}
        for nm in cfgs:
            with warnings.catch_warnings(record=True) as ws:
                warnings.simplefilter("always")
                alone = PeftModel.from_pretrained(load_model("tiny-llama"), os.path.join(adapters, nm), adapter_name=nm)
            alone.eval()
            exp[f"logits_{nm}_alone"] = logits_of(alone, ids)
            load_results[nm] = sorted({str(w.message) for w in ws})
        both = PeftModel.from_pretrained(load_model("tiny-llama"), os.path.join(adapters, "emb"), adapter_name="emb")
        both.load_adapter(os.path.join(adapters, "head"), adapter_name="head")
        both.eval()
        for nm in cfgs:
            both.set_adapter(nm)
            exp[f"logits_{nm}"] = logits_of(both, ids)
            assert torch.allclose(exp[f"logits_{nm}"], exp[f"logits_{nm}_made"], atol=1e-6)
            assert torch.allclose(exp[f"logits_{nm}"], exp[f"logits_{nm}_alone"], atol=1e-6)
        for nm in cfgs:
            del exp[f"logits_{nm}_made"]
        case = {
            "model": "models/tiny-llama", "adapters": {nm: f"adapters/{nm}" for nm in cfgs},
            "adapter_keys": keys, "load_warnings": load_results,
            "what": "two LoRA adapters saved by one save_pretrained: emb (embed_tokens, q_proj) and head (lm_head). "
                    "save_embedding_layers=\"auto\" writes the base weight of every adapted embedding layer into each "
                    "file (adapter_keys): head's file holds model.embed_tokens.base_layer.weight, emb's "
                    "lm_head.base_layer.weight. logits_<name>_alone: upstream's from_pretrained of that folder alone "
                    "(the other module is not adapted, so its key matches nothing and is ignored, without a warning: "
                    "load_warnings); logits_<name>: emb loaded, then head, that one active; logits_base: the base",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    all_cases = {
        "config_rules": case_config_rules,
        "oft_all_linear_layers": case_oft_all_linear,
        "loha_regex_layers": case_loha_regex,
        "trainable_tokens_tied_both": case_tokens_tied_both,
        "prompt_tuning_mts": lambda: case_prompt_mts(
            "prompt_tuning_mts", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4,
                                  "modules_to_save": ["lm_head", "embed_tokens"]}, 960),
        "p_tuning_mts": lambda: case_prompt_mts(
            "p_tuning_mts", {"peft_type": "P_TUNING", "num_virtual_tokens": 5, "encoder_hidden_size": 20,
                             "modules_to_save": ["model.layers.0.mlp.down_proj"]}, 970),
        "prefix_tuning_mts": lambda: case_prompt_mts(
            "prefix_tuning_mts", {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4,
                                  "modules_to_save": ["norm", "embed_tokens"]}, 980),
        "lora_embed_base_saved": case_embed_base_saved,
        "lora_embed_base_changed": case_embed_base_changed,
        "multi_embed_head": case_multi_embed_head,
    }
    only = [c for c in a.only.split(",") if c]
    unknown = [c for c in only if c not in all_cases]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(all_cases)}")
    made = {}
    for nm, run in all_cases.items():
        if not only or nm in only:
            made.update(run())
    for k, v in made.items():
        print(k, " ".join(v))


if __name__ == "__main__":
    main()
