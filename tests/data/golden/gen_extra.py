#!/usr/bin/env python3
"""Extra golden cases from upstream PEFT: several active LoRA/DoRA adapters, weighted combinations with DoRA sources,
and modules_to_save on tied lm_head / embed_tokens.

usage: python3 tests/data/golden/gen_extra.py --oracle /tmp/oracle

--oracle is a prepared copy of shared/oracle (run its setup.sh first; use /usr/bin/python3, Debian's interpreter with
torch). The script puts that folder on sys.path, imports oracle_env before peft (it stubs transformers & co.), and
uses tinyref for the reference models. It LOADS the existing base checkpoints in models/tiny-llama and models/tiny-opt
(never regenerates them), writes models/tiny-llama-tied (the tiny-llama weights with lm_head tied to embed_tokens,
saved without lm_head.weight) and these folders under cases/ (same layout as gen_golden.py's cases):

  several_active        three LoRA adapters (plain, dora, other) on tiny-llama: one / several active adapters,
                        merge of several, mixed batch, add_weighted_adapter with a DoRA source
  mts_tied_opt          tiny-opt, LoRA + modules_to_save=["lm_head"] (lm_head tied to embed_tokens)
  mts_embed_opt         tiny-opt, LoRA + modules_to_save=["embed_tokens"]
  mts_tied_llama        tiny-llama-tied, LoRA + modules_to_save=["lm_head"]
  mts_tied_llama_embed  tiny-llama-tied, LoRA + modules_to_save=["embed_tokens"]

Everything is seeded and single-threaded (and the script re-runs itself with PYTHONHASHSEED=0), so two runs write
byte-identical files.
"""
import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))


def setup(oracle):
    """Import the reference (oracle_env before peft) and return the modules the cases use."""
    sys.path.insert(0, os.path.abspath(oracle))
    import oracle_env  # noqa: F401  (must come before peft)
    import torch
    import peft
    import tinyref

    torch.set_num_threads(1)
    # What real transformers models provide and tinyref leaves out: get_input_embeddings (PEFT's merge_and_unload uses
    # it to notice untied embeddings) and the v4-style _tied_weights_keys (PEFT's tied-module warnings use it; both only
    # matter when config.tie_word_embeddings is true).
    tinyref.LlamaForCausalLM.get_input_embeddings = lambda self: self.model.embed_tokens
    tinyref.OPTForCausalLM.get_input_embeddings = lambda self: self.model.decoder.embed_tokens
    tinyref.LlamaForCausalLM._tied_weights_keys = ["lm_head.weight"]
    tinyref.OPTForCausalLM._tied_weights_keys = ["lm_head.weight"]
    return torch, peft, tinyref


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT keeps target_modules as a set and writes it to adapter_config.json in set order, which follows the
        # per-process string hash: fix the hash seed so adapter_config.json is byte-identical from run to run.
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", required=True, help="prepared copy of shared/oracle")
    ap.add_argument("--golden", default=HERE, help="golden folder holding models/ and cases/ (default: this folder)")
    a = ap.parse_args()
    torch, peft, tinyref = setup(a.oracle)
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file, save_file

    golden = os.path.abspath(a.golden)
    models = os.path.join(golden, "models")
    cases = os.path.join(golden, "cases")

    def perturb_trainables(model, seed):
        """Give every trainable adapter tensor non-trivial values (as gen_golden.py; includes DoRA magnitudes and
        modules_to_save copies)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))

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

    def err(e):
        return f"{type(e).__name__}: {e}"

    def warning_texts(ws):
        out = []
        for w in ws:
            t = f"{w.category.__name__}: {w.message}"
            if t not in out:
                out.append(t)
        return out

    @contextlib.contextmanager
    def per_row_adapters(pm, names):
        """forward(..., adapter_names=names) on every LoRA layer. torch 1.13 has no keyword pre-hooks, which PEFT's
        _enable_peft_forward_hooks needs, so hand adapter_names to the layers directly (as gen_golden.py does); the
        layers' own _check_forward_args still runs."""
        def call(fwd, x, *args, **kwargs):
            return fwd(x, *args, adapter_names=list(names), **kwargs)

        patched = [m for m in pm.modules() if isinstance(m, LoraLayer)]
        for m in patched:
            m.forward = functools.partial(call, m.forward)
        try:
            yield
        finally:
            for m in patched:
                del m.forward

    # ---------------------------------------------------------------------------------------------------------------
    # A. several_active: plain / dora / other on tiny-llama
    def case_several_active(seed=200):
        name = "several_active"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        base_logits = logits_of(base, ids)
        cfgs = {
            "plain": LoraConfig(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, init_lora_weights=False),
            "dora": LoraConfig(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, use_dora=True,
                               init_lora_weights=False),
            "other": LoraConfig(target_modules=["q_proj", "k_proj"], r=2, lora_alpha=4, init_lora_weights=False),
        }
        pm = get_peft_model(base, cfgs["plain"], adapter_name="plain")
        pm.add_adapter("dora", cfgs["dora"])
        pm.add_adapter("other", cfgs["other"])
        for i, nm in enumerate(cfgs):
            pm.set_adapter(nm)  # makes exactly this adapter's tensors trainable
            perturb_trainables(pm, seed + 10 + i)
        pm.eval()
        adapters_dir = os.path.join(folder, "adapters")
        pm.save_pretrained(adapters_dir)  # adapters/<name>/ for each of the three

        exp = {}
        for nm in cfgs:
            pm.set_adapter(nm)
            exp[f"logits_{nm}"] = logits_of(pm, ids)
        with pm.disable_adapter():
            exp["logits_base"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_base"], base_logits, atol=1e-6)

        q_proj = pm.base_model.model.model.layers[0].self_attn.q_proj
        active_sets = {"logits_plain_dora": ["plain", "dora"], "logits_dora_plain": ["dora", "plain"],
                       "logits_plain_other": ["plain", "other"], "logits_plain_dora_other": ["plain", "dora", "other"]}
        for key, names in active_sets.items():
            pm.base_model.set_adapter(names)  # several active adapters at once, applied in this order
            assert list(q_proj.active_adapters) == names, q_proj.active_adapters
            exp[key] = logits_of(pm, ids)

        pm.base_model.set_adapter(["plain", "dora"])
        pm.merge_adapter()  # merges the active adapters in order: plain, then dora
        merged_order = list(q_proj.merged_adapters)
        exp["logits_plain_dora_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()  # unmerges in reverse order
        exp["logits_plain_dora_unmerged"] = logits_of(pm, ids)

        pm.set_adapter("plain")
        mixed = ["plain", "__base__", "other"]
        mixed_info = {"adapter_names": mixed}
        try:
            with per_row_adapters(pm, mixed):
                exp["logits_mixed_batch"] = logits_of(pm, ids)
            mixed_info["accepted"] = True
        except Exception as e:  # noqa: BLE001
            mixed_info["accepted"] = False
            mixed_info["error"] = err(e)
        dora_rows = ["dora", "__base__", "plain"]
        try:
            with per_row_adapters(pm, dora_rows):
                logits_of(pm, ids)
            mixed_info["with_dora_row"] = {"adapter_names": dora_rows, "accepted": True}
        except Exception as e:  # noqa: BLE001
            mixed_info["with_dora_row"] = {"adapter_names": dora_rows, "accepted": False, "error": err(e)}

        combos = {
            "w_cat_dora_first": (["dora", "plain"], [0.7, 0.3], "cat"),
            "w_cat_plain_first": (["plain", "dora"], [0.7, 0.3], "cat"),
            "w_linear_dora": (["dora", "plain"], [0.6, 0.4], "linear"),
            "w_svd_dora": (["dora", "plain"], [0.6, 0.4], "svd"),
        }
        weighted, weighted_errors, weighted_made = {}, {}, {}
        for k, (wname, (srcs, ws, ct)) in enumerate(combos.items()):
            torch.manual_seed(seed + 30 + k)  # the new adapter's layers are first built with a random init
            try:
                pm.add_weighted_adapter(srcs, ws, wname, combination_type=ct)
            except Exception as e:  # noqa: BLE001
                weighted_errors[wname] = {"adapters": srcs, "weights": ws, "combination_type": ct, "error": err(e)}
                continue
            pm.set_adapter(wname)
            exp[f"logits_{wname}"] = logits_of(pm, ids)
            weighted[wname] = {"adapters": srcs, "weights": ws, "combination_type": ct}
            pm.save_pretrained(adapters_dir, selected_adapters=[wname])
            c = pm.peft_config[wname]
            weighted_made[wname] = {"folder": f"adapters/{wname}", "r": c.r, "lora_alpha": c.lora_alpha,
                                    "use_dora": c.use_dora, "target_modules": sorted(c.target_modules)}

        case = {
            "model": "models/tiny-llama",
            "adapters": {nm: f"adapters/{nm}" for nm in cfgs},
            "active_sets": {"logits_plain": ["plain"], "logits_dora": ["dora"], "logits_other": ["other"],
                            **active_sets},
            "merged": {"logits_plain_dora_merged": {"active": ["plain", "dora"], "merged_adapters": merged_order},
                       "logits_plain_dora_unmerged": {"active": ["plain", "dora"]}},
            "mixed_batch_adapter_names": mixed,
            "mixed_batch": mixed_info,
            "weighted": weighted,
            "weighted_adapters": weighted_made,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json. logits_<set> with the adapters in "
                    "active_sets[<key>] active at once, in that order (model.base_model.set_adapter(list)); logits_base "
                    "inside disable_adapter(); logits_plain_dora_merged after merge_adapter() with plain and dora active "
                    "(merged in that order), logits_plain_dora_unmerged after unmerge_adapter(); logits_mixed_batch with "
                    "per-row adapter_names (\"__base__\" = no adapter) while all three adapters are loaded; "
                    "logits_w_<name> for the adapter add_weighted_adapter(adapters, weights, name, combination_type) "
                    "made (svd with PEFT's defaults), active alone; weighted_adapters tells what PEFT made (saved by "
                    "save_pretrained in adapters/<name>/, including any DoRA magnitude vector)",
        }
        if weighted_errors:
            case["weighted_errors"] = weighted_errors
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # B-D. modules_to_save on a tied lm_head / embed_tokens
    def load_model(sub):
        m = tinyref.load_hf(os.path.join(models, sub))
        if m.config.get("tie_word_embeddings") and isinstance(m, tinyref.LlamaForCausalLM):
            m.lm_head.weight = m.model.embed_tokens.weight  # tinyref ties only OPT itself; HF ties on load
        return m

    def embed_of(m):
        return m.get_input_embeddings()

    def write_tied_llama(seed=300):
        torch.manual_seed(seed)
        m = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        m.config["tie_word_embeddings"] = True
        m.lm_head.weight = m.model.embed_tokens.weight  # the input embedding wins, as in transformers' tie_weights
        folder = os.path.join(models, "tiny-llama-tied")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        sd = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(m.config, f, indent=2)
        assert "lm_head.weight" not in load_file(os.path.join(folder, "model.safetensors"))

    def case_mts(name, sub, module, seed):
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = load_model(sub)
        tied_before = base.lm_head.weight.data_ptr() == embed_of(base).weight.data_ptr()
        assert tied_before, name
        orig_embed = embed_of(base).weight.detach().clone()
        base_logits = logits_of(base, ids)
        cfg = LoraConfig(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, modules_to_save=[module],
                         init_lora_weights=False)
        with warnings.catch_warnings(record=True) as ws_make:
            warnings.simplefilter("always")
            pm = get_peft_model(base, cfg)
        perturb_trainables(pm, seed + 10)
        pm.eval()
        wrapper = pm.base_model.model.lm_head if module == "lm_head" else embed_of(pm.base_model.model)
        copy_w = wrapper.modules_to_save["default"].weight
        orig_w = wrapper.original_module.weight
        copy_change = (copy_w - orig_w).abs().max().item()
        assert copy_change > 0, name
        wrapped = {
            "copy_shares_storage_with_original": copy_w.data_ptr() == orig_w.data_ptr(),
            "original_still_tied": pm.base_model.model.lm_head.weight.data_ptr() == orig_w.data_ptr()
            if module == "embed_tokens" else embed_of(pm.base_model.model).weight.data_ptr() == orig_w.data_ptr(),
            "copy_max_abs_change_after_perturb": copy_change,
        }
        pm.save_pretrained(os.path.join(folder, "adapter"))
        adapter_keys = sorted(load_file(os.path.join(folder, "adapter", "adapter_model.safetensors")))

        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6), name
        trained_copy = copy_w.detach().clone()
        with warnings.catch_warnings(record=True) as ws_unload:
            warnings.simplefilter("always")
            un = pm.merge_and_unload()
        exp["logits_merge_and_unload"] = logits_of(un, ids)
        lm, em = un.lm_head.weight, embed_of(un).weight
        after = {
            "same_data_ptr": lm.data_ptr() == em.data_ptr(),
            "same_parameter": lm is em,
            "max_abs_diff_lm_head_vs_embed_tokens": (lm - em).abs().max().item(),
            "lm_head_is_trained_copy": bool(torch.equal(lm.detach(), trained_copy)),
            "embed_tokens_is_trained_copy": bool(torch.equal(em.detach(), trained_copy)),
            "lm_head_equals_original_embedding": bool(torch.equal(lm.detach(), orig_embed)),
            "embed_tokens_equals_original_embedding": bool(torch.equal(em.detach(), orig_embed)),
            "config_tie_word_embeddings_attr": getattr(un.config, "tie_word_embeddings"),
            "lm_head_module_type": type(un.lm_head).__name__,
            "embed_tokens_module_type": type(embed_of(un)).__name__,
        }
        case = {
            "model": f"models/{sub}",
            "adapter": "adapter",
            "method": "lora_modules_to_save_tied",
            "modules_to_save": [module],
            "adapter_keys": adapter_keys,
            "tying": {"base_tied": tied_before, "peft_wrapped": wrapped, "after_merge_and_unload": after},
            "peft_warnings": {"get_peft_model": warning_texts(ws_make), "merge_and_unload": warning_texts(ws_unload)},
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active: LoRA on "
                    f"q_proj/v_proj and PEFT's trainable copy of {module}, while the base model ties lm_head to "
                    "embed_tokens), logits_disabled (adapters disabled), logits_merge_and_unload (forward of the plain "
                    "model merge_and_unload returned). tying.after_merge_and_unload says whether lm_head.weight and "
                    "embed_tokens.weight of that model are still one tensor "
                    "(config_tie_word_embeddings_attr: what PEFT left in model.config.tie_word_embeddings)",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    made = {}
    made.update(case_several_active())
    made.update(case_mts("mts_tied_opt", "tiny-opt", "lm_head", 400))
    made.update(case_mts("mts_embed_opt", "tiny-opt", "embed_tokens", 410))
    write_tied_llama()
    made.update(case_mts("mts_tied_llama", "tiny-llama-tied", "lm_head", 420))
    made.update(case_mts("mts_tied_llama_embed", "tiny-llama-tied", "embed_tokens", 430))
    for k, v in made.items():
        print(k, " ".join(v))


if __name__ == "__main__":
    main()
