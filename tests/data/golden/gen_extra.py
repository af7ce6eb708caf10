#!/usr/bin/env python3
"""Extra golden cases from upstream PEFT: several active LoRA/DoRA adapters, weighted combinations with DoRA sources,
modules_to_save on tied lm_head / embed_tokens, OFT options (coft, module_dropout), VeRA with trained biases, the
layer filter with a full module name among the targets, and which configurations upstream accepts.

usage: python3 tests/data/golden/gen_extra.py --oracle /tmp/oracle [--only CASE[,CASE]]

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
  oft_coft              tiny-llama, OFT with coft=True, eps=0.9 (the forward projects oft_R in place; adapter/ holds
                        the unprojected oft_R, saved before any forward)
  oft_module_dropout    tiny-llama, OFT with module_dropout=0.3
  vera_bias_opt         tiny-opt, VeRA with bias="vera_only" (biases of the adapted layers trained and saved)
  lora_target_parameters
                        tiny-llama, LoRA on q_proj's and down_proj's weights by target_parameters (PEFT's ParamWrapper)
                        and on v_proj by target_modules; upstream's errors for lora_dropout / use_dora with them
  lora_layer_filter     tiny-llama, LoRA with target_modules=["model.layers.0.self_attn.k_proj", "q_proj", "v_proj"]
                        and layers_to_transform=[1]
  config_checks         case.json only: which configurations upstream accepts, with its error messages
  weighted_more         tiny-llama with multi_adapter's alpha/beta/gamma: add_weighted_adapter with dare_linear,
                        dare_ties (total and frequency signs), ties_svd, dare_linear_svd, dare_ties_svd,
                        magnitude_prune_svd, svd with svd_rank/svd_clamp/svd_full_matrices=False, a negative weight,
                        and the refusals; the DARE masks come from torch.manual_seed(seed) applied at the merge's
                        first random draw (PEFT draws them from the global generator after building the new adapter)
  weighted_ia3          tiny-llama, two IA3 adapters with different targets and feed-forward modules: IA3's
                        add_weighted_adapter (the linear combination), and its refusal of list + string targets
  hra, hra_gs           tiny-llama, HRA (r=4) on q_proj/v_proj, and with apply_GS=True on q_proj/k_proj/down_proj:
                        logits, disabled, merged, unmerged, merge_and_unload (the single-adapter case layout)
  miss, miss_bat, miss_mini
                        tiny-llama, MiSS in its three modes: r=5 on q_proj/down_proj (a partial last block),
                        "bat" (r=4 blocks of q_proj/o_proj), "mini" (r=4, mini_r=8 on q_proj/v_proj); same layout
  lora_pissa, lora_olora
                        tiny-llama, LoRA (r=4) on q_proj/v_proj/down_proj with init_lora_weights "pissa" / "olora":
                        the base keeps the residual, so logits_disabled is the residual model; same layout
  lora_pissa_niter      the same with "pissa_niter_2" (randomized SVD): the global generator is seeded with case.json's
                        init_seed right before the adapter is created (and must be before it is loaded: upstream
                        draws again on load); same layout
  lora_layer_replication
                        tiny-llama, LoRA on the stack replicated by layer_replication [[0, 2], [1, 2]] (layers 0 1 1):
                        logits, logits_disabled; upstream's (wrong) merge is measured, not recorded; upstream's
                        error on tiny-opt
  fourierft             tiny-llama, FourierFT (n_frequency 40, v_proj 25 by n_frequency_pattern, scaling 20,
                        random_loc_seed 123) on q_proj/v_proj; same layout
  vblora, vblora_topk   tiny-llama, VB-LoRA (r 4, a bank of 16 vectors of length 8) on q_proj/v_proj/down_proj with
                        topk 2, and topk 3 saved with save_only_topk_weights (the file holds the top-k indices and
                        the first k-1 softmax weights instead of the logits); same layout
  shira, shira_noseed   tiny-llama, SHiRA on q_proj/v_proj/down_proj: r 2 with random_seed 42, and r 1 with no seed
                        (PEFT's mask generator then starts from torch's default seed); the file holds shira_indices
                        (int32, (2, n)); same layout
  randlora, randlora_sparse
                        tiny-llama, RandLoRA on q_proj/v_proj/down_proj: r 4 with dense bases (prng key 7), and r 5
                        with sparse bases (5 does not divide 16 or 32: a partial last basis); the bases are in the file
                        (save_projection); same layout
  road, road_2, road_4_opt
                        RoAd (init_weights=False): road_1 with group_size 8 on tiny-llama's q_proj/v_proj, road_2 with
                        group_size 4 on q_proj/k_proj/down_proj, road_4 with group_size 16 on tiny-opt's q_proj/v_proj/fc1
                        (biases: the merge rotates them too); same layout
  road_mixed            tiny-llama, two RoAd adapters (one: road_1, group 8 on q_proj/v_proj; two: road_4, group 4 on
                        q_proj/down_proj): each alone, both active in either order, merged and unmerged in order, and a
                        mixed batch ["one", "__base__", "two"]; adapters/<name>/
  delora, delora_pattern, delora_opt
                        DeLoRA (init_weights=False): r 4 on tiny-llama's q_proj/v_proj; r 4, delora_lambda 6,
                        module_dropout 0.1 (eval: off), rank_pattern {"v_proj": 2}, lambda_pattern {"down_proj": 3} on
                        q_proj/v_proj/down_proj with modules_to_save=["lm_head"]; r 3 on tiny-opt's q_proj/v_proj/fc1
                        with bias="delora_only" (the adapted layers' biases trained: disabled is not the base). The
                        file holds delora_w_norm, the base weight's column norms; same layout
  train_vblora_adamw    tiny-llama, VB-LoRA trained 8 AdamW steps (logits and the shared bank; train_lora_adamw's
                        optimizer and loss): losses, logits_final, adapter_init/ and adapter_final/
  trainable_tokens, trainable_tokens_tied
                        trainable tokens (PEFT's TRAINABLE_TOKENS): rows [4, 13, 59, 95] of tiny-llama's embed_tokens,
                        and rows [1, 4, 60] of tiny-opt's (lm_head tied to it: the same rows there), initialised
                        randomly (init_weights=False); same layout
  lora_tokens, lora_tokens_tied
                        LoRA (r 4 on q_proj/v_proj) with trainable_token_indices: [6, 44, 81] on tiny-llama, and
                        {"embed_tokens": [1, 4, 60]} on tiny-opt (lm_head tied: it follows); same layout
  boft_butterfly2, boft_butterfly3
                        tiny-llama, BOFT with 2 butterfly factors (block size 4 on q_proj/v_proj/down_proj) and 3
                        (8 blocks on q_proj/down_proj: block sizes 4 and 6), computed as upstream's CUDA extension
                        does (its block-diagonal builder replaced by torch.block_diag: upstream on CPU silently uses
                        one factor); same layout
  adalora_allocator     tiny-llama, AdaLoRA (init_r 6 -> target_r 2 on v_proj/o_proj/up_proj) trained 14 AdamW steps
                        through RankAllocator's phases (warmup, cubic budget with masking every deltaT, final mask,
                        fixed mask): per-step losses, E, scores, thresholds; the saved folder with rank_pattern

--check-adalora-folder DIR loads an adapter folder that peft.cpp saved after the adalora_allocator run with upstream
and prints its rank_pattern and how far its logits are from upstream's run (nothing is written).

--only writes just the named cases; every case seeds itself, so its files are the same as in a full run.
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
    # The oracle's minimal safetensors reader cannot make an empty tensor (torch.frombuffer refuses a 0-byte buffer);
    # real safetensors can, and AdaLoRA saves one for a module whose rank the allocator cut to 0.
    import safetensors.torch as st
    get_tensor = st._Reader.get_tensor

    def get_tensor_or_empty(self, k):
        e = self.h[k]
        if e["data_offsets"][0] == e["data_offsets"][1]:
            return torch.zeros(e["shape"], dtype=st._RDT[e["dtype"]])
        return get_tensor(self, k)

    st._Reader.get_tensor = get_tensor_or_empty
    return torch, peft, tinyref


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT keeps target_modules as a set and writes it to adapter_config.json in set order, which follows the
        # per-process string hash: fix the hash seed so adapter_config.json is byte-identical from run to run.
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", required=True, help="prepared copy of shared/oracle")
    ap.add_argument("--golden", default=HERE, help="golden folder holding models/ and cases/ (default: this folder)")
    ap.add_argument("--only", default="", metavar="CASE[,CASE]",
                    help="write only these cases (each case seeds itself, so its files are the same as in a full run)")
    ap.add_argument("--check-adalora-folder", default="", metavar="DIR",
                    help="instead of writing cases: load DIR (an adapter folder peft.cpp saved after the "
                         "adalora_allocator run) with upstream and print its rank_pattern and logits difference")
    a = ap.parse_args()
    torch, peft, tinyref = setup(a.oracle)
    from peft import LoHaConfig, LoraConfig, OFTConfig, PeftModel, VeraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.tuners.oft.layer import OFTRotationModule
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
    def per_row_adapters(pm, names, layer_cls=None):
        """forward(..., adapter_names=names) on every LoRA layer (every `layer_cls` layer when given). torch 1.13 has
        no keyword pre-hooks, which PEFT's _enable_peft_forward_hooks needs, so hand adapter_names to the layers
        directly (as gen_golden.py does); the layers' own _check_forward_args still runs."""
        def call(fwd, x, *args, **kwargs):
            return fwd(x, *args, adapter_names=list(names), **kwargs)

        patched = [m for m in pm.modules() if isinstance(m, layer_cls or LoraLayer)]
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

    # ---------------------------------------------------------------------------------------------------------------
    # E-F. OFT options: coft (projection of oft_R in forward) and module_dropout
    def rotation_modules(pm):
        """[(adapter-file key of the weight, OFTRotationModule)] in module order."""
        out = []
        for n, m in pm.named_modules():
            if isinstance(m, OFTRotationModule):
                assert n.endswith(".oft_R.default"), n
                out.append((n[: -len(".default")] + ".weight", m))
        return out

    def skew_norms(m, w):
        """Frobenius norm of each block's skew-symmetric matrix (what _project_batch compares with eps)."""
        return torch.norm(m._pytorch_skew_symmetric(w, m.block_size), dim=(1, 2))

    def max_abs_diff(a, b):
        return (a - b).abs().max().item()

    def case_oft_coft(seed=500, eps=0.9):
        # eps 0.9 (eps_effective 0.318 for 8 blocks) clamps 24 of the 32 blocks and keeps 8, so both branches of the
        # projection matter; a tiny eps such as 1e-3 clamps every block to a near-identity rotation, and the logits
        # then differ from the base model's by only ~1e-3.
        name = "oft_coft"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        base_logits = logits_of(base, ids)
        cfg = OFTConfig(target_modules=["q_proj", "v_proj"], r=0, oft_block_size=4, coft=True, eps=eps,
                        init_weights=False)
        pm = get_peft_model(base, cfg)
        perturb_trainables(pm, seed + 10)
        pm.eval()
        rots = rotation_modules(pm)
        before = {k: m.weight.detach().clone() for k, m in rots}
        adapter_dir = os.path.join(folder, "adapter")
        pm.save_pretrained(adapter_dir)  # before any forward: the forward projects oft_R in place
        saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
        assert sorted(saved) == sorted(before), sorted(saved)

        # diagnostic only: the same adapter without the projection
        for _, m in rots:
            m.coft = False
        unprojected_logits = logits_of(pm, ids)
        for _, m in rots:
            m.coft = True
        assert all(torch.equal(m.weight, before[k]) for k, m in rots)

        exp = {"logits": logits_of(pm, ids)}  # projects every oft_R in place, then rotates with it
        projected = {k: m.weight.detach().clone() for k, m in rots}
        per_module, clamped_total, blocks_total, margins = {}, 0, 0, []
        for k, m in rots:
            n_blocks = before[k].shape[0]
            eps_eff = eps / (n_blocks ** 0.5)  # _project_batch: eps * 1 / sqrt(number of blocks)
            norms = skew_norms(m, before[k])
            clamped = norms > eps_eff
            changed = (projected[k] != before[k]).any(dim=1)
            assert torch.equal(changed, clamped), (k, norms, eps_eff)  # only blocks above eps_eff move
            after_norms = skew_norms(m, projected[k])
            assert torch.allclose(after_norms[clamped], torch.full_like(after_norms[clamped], eps_eff), atol=1e-6)
            margins += ((norms - eps_eff).abs() / eps_eff).tolist()
            clamped_total += int(clamped.sum())
            blocks_total += n_blocks
            per_module[k] = {"blocks": n_blocks, "eps_effective": eps_eff,
                             "clamped_blocks": [i for i, c in enumerate(clamped.tolist()) if c],
                             "block_norms_before": [round(v, 6) for v in norms.tolist()]}
        assert 0 < clamped_total < blocks_total, (clamped_total, blocks_total)
        logits_again = logits_of(pm, ids)  # the projection again, on the projected oft_R
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6)
        pm.merge_adapter()  # get_weight() projects (again) before the Cayley transform
        exp["logits_merged"] = logits_of(pm, ids)
        after_merge_change = max(max_abs_diff(m.weight, projected[k]) for k, m in rots)

        # loading the saved (unprojected) adapter reproduces the logits: the projection happens in the forward
        torch.manual_seed(seed)
        reloaded = PeftModel.from_pretrained(tinyref.load_hf(os.path.join(models, "tiny-llama")), adapter_dir)
        reloaded.eval()
        reload_diff = max_abs_diff(logits_of(reloaded, ids), exp["logits"])
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        assert reload_diff < 1e-6, reload_diff

        save_file({k: v.contiguous() for k, v in projected.items()}, os.path.join(folder, "oft_R_projected.safetensors"))
        case = {
            "model": "models/tiny-llama",
            "adapter": "adapter",
            "method": "oft_coft",
            "coft": {
                "eps": eps,
                "eps_effective_rule": "eps / sqrt(number of blocks of the layer), a float32 tensor "
                                      "(OFTRotationModule._project_batch); a block is kept if its norm <= that",
                "blocks_total": blocks_total,
                "blocks_clamped": clamped_total,
                "min_relative_margin_of_block_norms_to_eps_effective": min(margins),
                "per_module": per_module,
                "saved_before_any_forward": True,
                "saved_oft_R_equals_perturbed": all(torch.equal(saved[k], before[k]) for k in before),
                "saved_oft_R_equals_projected": all(torch.equal(saved[k], projected[k]) for k in projected),
                "forward_projects_oft_R_in_place": any(not torch.equal(projected[k], before[k]) for k in before),
                "max_abs_change_of_oft_R_by_second_forward_and_merge": after_merge_change,
                "logits_second_forward_max_abs_diff": max_abs_diff(logits_again, exp["logits"]),
                "logits_max_abs_diff_vs_unprojected_oft_R": max_abs_diff(exp["logits"], unprojected_logits),
                "logits_max_abs_diff_vs_base": max_abs_diff(exp["logits"], base_logits),
                "reloaded_adapter_logits_max_abs_diff": reload_diff,
            },
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active; PEFT's "
                    "forward first replaces each oft_R by its projection: every block whose skew-symmetric matrix has "
                    "Frobenius norm > eps_effective is scaled to norm eps_effective, the others are kept), "
                    "logits_disabled (adapters disabled), logits_merged (after merge_adapter). adapter/ was saved "
                    "before any forward, so it holds the unprojected oft_R; oft_R_projected.safetensors holds oft_R "
                    "after the first forward (same keys as adapter_model.safetensors)",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    def case_oft_module_dropout(seed=510):
        name = "oft_module_dropout"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        base_logits = logits_of(base, ids)
        cfg = OFTConfig(target_modules=["q_proj", "v_proj"], r=0, oft_block_size=4, module_dropout=0.3,
                        init_weights=False)
        pm = get_peft_model(base, cfg)
        perturb_trainables(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6)
        pm.train()
        torch.manual_seed(seed + 20)
        train_logits = logits_of(pm, ids)
        pm.eval()
        q_proj = pm.base_model.model.model.layers[0].self_attn.q_proj
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        case = {
            "model": "models/tiny-llama",
            "adapter": "adapter",
            "method": "oft_module_dropout",
            "module_dropout": {
                "p": 0.3,
                "dropout_layer_type": type(q_proj.oft_dropout["default"]).__name__,
                "train_mode_logits_equal_eval_logits": bool(torch.equal(train_logits, exp["logits"])),
                "note": "PEFT builds a MultiplicativeDropoutLayer per adapter (it replaces blocks of the rotation by "
                        "identity blocks, in training only), but OFT's Linear.forward never calls oft_dropout",
            },
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active), "
                    "logits_disabled (adapters disabled), logits_merged (after merge_adapter)",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # G. VeRA with bias="vera_only" on tiny-opt (biases of the adapted layers are trained)
    def case_vera_bias_opt(seed=520):
        name = "vera_bias_opt"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-opt"))
        base_logits = logits_of(base, ids)
        cfg = VeraConfig(target_modules=["q_proj", "v_proj"], r=8, bias="vera_only", init_weights=False)
        pm = get_peft_model(base, cfg)
        trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
        perturb_trainables(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        adapter_keys = sorted(load_file(os.path.join(folder, "adapter", "adapter_model.safetensors")))
        exp = {"logits": logits_of(pm, ids)}
        with warnings.catch_warnings(record=True) as ws_disable:
            warnings.simplefilter("always")
            with pm.disable_adapter():
                exp["logits_disabled"] = logits_of(pm, ids)
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        case = {
            "model": "models/tiny-opt",
            "adapter": "adapter",
            "method": "vera_bias_opt",
            "trainable_parameters": trainable,
            "adapter_keys": adapter_keys,
            "logits_disabled_max_abs_diff_vs_base": max_abs_diff(exp["logits_disabled"], base_logits),
            "peft_warnings": {"disable_adapter": warning_texts(ws_disable)},
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active), "
                    "logits_disabled (adapters disabled: the trained biases of the adapted q_proj/v_proj stay, so this "
                    "is not the base model), logits_merged (after merge_adapter), logits_unmerged (after "
                    "unmerge_adapter), logits_merge_and_unload (plain model after merge_and_unload)",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # H. layers_to_transform with a full module name among the targets
    def lora_modules(pm):
        return [n for n, m in pm.base_model.model.named_modules() if isinstance(m, LoraLayer)]

    def case_lora_target_parameters(seed=1530):
        """LoRA on parameters (PEFT's ParamWrapper): the weights of q_proj and down_proj by target_parameters, with v_proj
        by target_modules; the file's keys are LoRA's."""
        name = "lora_target_parameters"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        base_logits = logits_of(base, ids)
        params = ["q_proj.weight", "mlp.down_proj.weight"]
        cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["v_proj"], target_parameters=params)
        pm = get_peft_model(base, cfg)
        wrappers = sorted(n for n, m in pm.named_modules() if type(m).__name__ == "ParamWrapper")
        perturb_trainables(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        adapter_keys = sorted(load_file(os.path.join(folder, "adapter", "adapter_model.safetensors")))
        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6)
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        refused = {}
        for what, kw in [("lora_dropout", {"lora_dropout": 0.1}), ("use_dora", {"use_dora": True})]:
            try:
                get_peft_model(tinyref.load_hf(os.path.join(models, "tiny-llama")),
                               LoraConfig(r=4, target_modules=["v_proj"], target_parameters=params, **kw))
                refused[what] = None
            except ValueError as e:
                refused[what] = str(e)
        case = {
            "model": "models/tiny-llama",
            "adapter": "adapter",
            "method": "lora_target_parameters",
            "target_parameters": params,
            "param_wrappers": wrappers,
            "adapter_keys": adapter_keys,
            "refused": refused,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active), "
                    "logits_disabled, logits_merged, logits_unmerged, logits_merge_and_unload. param_wrappers: the "
                    "modules whose weight PEFT's ParamWrapper adapts; refused: upstream's errors for options that "
                    "cannot go with target_parameters",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    def case_lora_layer_filter(seed=530):
        name = "lora_layer_filter"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        base_logits = logits_of(base, ids)
        targets = ["model.layers.0.self_attn.k_proj", "q_proj", "v_proj"]
        cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets, layers_to_transform=[1])
        pm = get_peft_model(base, cfg)
        adapted = lora_modules(pm)
        perturb_trainables(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        adapter_keys = sorted(load_file(os.path.join(folder, "adapter", "adapter_model.safetensors")))
        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6)
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        case = {
            "model": "models/tiny-llama",
            "adapter": "adapter",
            "method": "lora_layer_filter",
            "target_modules": targets,
            "layers_to_transform": [1],
            "adapted_modules": adapted,
            "adapter_keys": adapter_keys,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active), "
                    "logits_disabled (adapters disabled), logits_merged (after merge_adapter). adapted_modules: the "
                    "modules PEFT wrapped (the layer filter applies to suffix matches only; a target equal to a "
                    "module's full name is adapted whatever its layer)",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # H2. add_weighted_adapter's other combination types, on multi_adapter's adapters
    def case_weighted_more(seed=560):
        from peft.utils import merge_utils

        name = "weighted_more"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        srcs_dir = os.path.join(cases, "multi_adapter", "adapters")
        pm = PeftModel.from_pretrained(base, os.path.join(srcs_dir, "alpha"), adapter_name="alpha")
        for nm in ("beta", "gamma"):
            pm.load_adapter(os.path.join(srcs_dir, nm), adapter_name=nm)
        pm.eval()
        combos = {
            "w_dare_linear": dict(adapters=["alpha", "beta"], weights=[0.7, 0.3], combination_type="dare_linear",
                                  density=0.5, seed=11),
            "w_dare_linear_neg": dict(adapters=["alpha", "beta"], weights=[0.8, -0.4], combination_type="dare_linear",
                                      density=0.5, seed=16),
            "w_dare_ties": dict(adapters=["alpha", "beta"], weights=[0.7, 0.3], combination_type="dare_ties",
                                density=0.6, seed=12),
            "w_dare_ties_frequency": dict(adapters=["alpha", "beta"], weights=[0.7, 0.3], combination_type="dare_ties",
                                          density=0.6, seed=13, majority_sign_method="frequency"),
            "w_ties_svd": dict(adapters=["alpha", "beta", "gamma"], weights=[0.7, 0.3, 0.5],
                               combination_type="ties_svd", density=0.5),
            "w_dare_linear_svd": dict(adapters=["alpha", "beta", "gamma"], weights=[0.7, 0.3, 0.5],
                                      combination_type="dare_linear_svd", density=0.5, seed=14),
            "w_dare_ties_svd": dict(adapters=["alpha", "beta", "gamma"], weights=[0.7, 0.3, 0.5],
                                    combination_type="dare_ties_svd", density=0.7, seed=15),
            "w_magnitude_prune_svd": dict(adapters=["alpha", "beta", "gamma"], weights=[0.7, 0.3, 0.5],
                                          combination_type="magnitude_prune_svd", density=0.5),
            "w_svd_options": dict(adapters=["alpha", "gamma"], weights=[0.6, 0.9], combination_type="svd",
                                  svd_rank=3, svd_clamp=0.9, svd_full_matrices=False),
        }
        refused = {
            "bad_dare_unequal_ranks": dict(adapters=["alpha", "gamma"], weights=[1.0, 1.0],
                                           combination_type="dare_linear", density=0.5),
            "bad_unknown_type": dict(adapters=["alpha", "beta"], weights=[1.0, 1.0], combination_type="dare"),
        }
        original = merge_utils.random_pruning
        exp, weighted, errors = {}, {}, {}
        for k, (wname, spec) in enumerate(combos.items()):
            torch.manual_seed(seed + 30 + k)  # the new adapter's layers are first built with a random init
            state = {"seeded": False}

            def seeded_random_pruning(tensor, density, rescale, _seed=spec.get("seed", 0), _state=state):
                if not _state["seeded"]:  # the first DARE draw of this call: a known generator state
                    torch.manual_seed(_seed)
                    _state["seeded"] = True
                return original(tensor, density, rescale=rescale)

            merge_utils.random_pruning = seeded_random_pruning
            try:
                kw = {key: v for key, v in spec.items() if key not in ("adapters", "weights", "seed")}
                pm.add_weighted_adapter(spec["adapters"], spec["weights"], wname, **kw)
            finally:
                merge_utils.random_pruning = original
            assert state["seeded"] == ("seed" in spec), (wname, state)
            pm.set_adapter(wname)
            exp[f"logits_{wname}"] = logits_of(pm, ids)
            weighted[wname] = spec
        for wname, spec in refused.items():
            try:
                kw = {key: v for key, v in spec.items() if key not in ("adapters", "weights")}
                pm.add_weighted_adapter(spec["adapters"], spec["weights"], wname, **kw)
                errors[wname] = dict(spec, accepted=True)
            except Exception as e:  # noqa: BLE001
                errors[wname] = dict(spec, accepted=False, error=err(e))
        case = {
            "model": "models/tiny-llama",
            "adapters": {nm: f"../multi_adapter/adapters/{nm}" for nm in ("alpha", "beta", "gamma")},
            "weighted": weighted,
            "refused": errors,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json; logits_<name> for the adapter "
                    "add_weighted_adapter(adapters, weights, name, **options) made, active alone. For the dare types, "
                    "torch.manual_seed(seed) was applied at the merge's first random draw (PEFT's random_pruning), "
                    "so the masks are the draws of a fresh generator seeded with `seed`, in PEFT's order. `refused`: "
                    "what upstream says to the listed calls",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # H3. IA3's add_weighted_adapter (a linear combination of the vectors)
    def case_weighted_ia3(seed=570):
        from peft import IA3Config

        name = "weighted_ia3"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        cfgs = {
            "ia3_a": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
            "ia3_b": IA3Config(target_modules=["q_proj", "v_proj", "up_proj"], feedforward_modules=["up_proj"]),
            "ia3_regex": IA3Config(target_modules=r".*\.o_proj", feedforward_modules=r"^$"),
        }
        pm = get_peft_model(base, cfgs["ia3_a"], adapter_name="ia3_a")
        pm.add_adapter("ia3_b", cfgs["ia3_b"])
        pm.add_adapter("ia3_regex", cfgs["ia3_regex"])
        for i, nm in enumerate(cfgs):
            pm.set_adapter(nm)
            perturb_trainables(pm, seed + 10 + i)
        pm.eval()
        adapters_dir = os.path.join(folder, "adapters")
        pm.save_pretrained(adapters_dir)
        exp = {}
        for nm in cfgs:
            pm.set_adapter(nm)
            exp[f"logits_{nm}"] = logits_of(pm, ids)
        weighted = {"w_ia3": {"adapters": ["ia3_a", "ia3_b"], "weights": [0.6, 0.5]},
                    "w_ia3_neg": {"adapters": ["ia3_b", "ia3_a"], "weights": [1.2, -0.3]}}
        for wname, spec in weighted.items():
            pm.add_weighted_adapter(spec["adapters"], spec["weights"], wname)
            pm.set_adapter(wname)
            exp[f"logits_{wname}"] = logits_of(pm, ids)
            c = pm.peft_config[wname]
            spec["target_modules"] = sorted(c.target_modules)
            spec["feedforward_modules"] = sorted(c.feedforward_modules)
        refused = {}
        try:
            pm.add_weighted_adapter(["ia3_a", "ia3_regex"], [1.0, 1.0], "bad_mixed_types")
            refused["bad_mixed_types"] = {"adapters": ["ia3_a", "ia3_regex"], "accepted": True}
        except Exception as e:  # noqa: BLE001
            refused["bad_mixed_types"] = {"adapters": ["ia3_a", "ia3_regex"], "accepted": False, "error": err(e)}
        case = {
            "model": "models/tiny-llama",
            "adapters": {nm: f"adapters/{nm}" for nm in cfgs},
            "weighted": weighted,
            "refused": refused,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json; logits_<adapter> with that IA3 "
                    "adapter active; logits_<name> for the adapter IA3's add_weighted_adapter(adapters, weights, name) "
                    "made (target_modules / feedforward_modules: what its config holds); refused: upstream's answer "
                    "to combining list targets with a regex string",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # H4. HRA (Householder reflections), with and without Gram-Schmidt
    def case_hra(name, targets, apply_gs, seed):
        from peft import HRAConfig

        return case_single(name, HRAConfig(target_modules=targets, r=4, apply_GS=apply_gs, init_weights=False), seed)

    def case_road(name, kw, seed, model="tiny-llama"):
        # RoAd: the layer's output (bias included) rotated and scaled in pairs; init_weights=False so that it acts
        from peft import RoadConfig

        return case_single(name, RoadConfig(init_weights=False, **kw), seed, model=model)

    def case_road_mixed(seed=850):
        # two RoAd adapters sharing q_proj (names not inside the prefix "road_": upstream warns that such names may be
        # re-initialised when loaded): each alone, both in either order, merged in order, a mixed batch
        from peft import RoadConfig
        from peft.tuners.road import RoadLayer

        name = "road_mixed"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        base_logits = logits_of(base, ids)
        cfgs = {
            "one": RoadConfig(variant="road_1", group_size=8, target_modules=["q_proj", "v_proj"], init_weights=False),
            "two": RoadConfig(variant="road_4", group_size=4, target_modules=["q_proj", "down_proj"], init_weights=False),
        }
        pm = get_peft_model(base, cfgs["one"], adapter_name="one")
        pm.add_adapter("two", cfgs["two"])
        for i, nm in enumerate(cfgs):
            pm.set_adapter(nm)
            perturb_trainables(pm, seed + 10 + i)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapters"))  # adapters/<name>/
        exp = {}
        for nm in cfgs:
            pm.set_adapter(nm)
            exp[f"logits_{nm}"] = logits_of(pm, ids)
        with pm.disable_adapter():
            exp["logits_base"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_base"], base_logits, atol=1e-6)
        q_proj = pm.base_model.model.model.layers[0].self_attn.q_proj
        for names in (["one", "two"], ["two", "one"]):
            pm.base_model.set_adapter(names)
            assert list(q_proj.active_adapters) == names, q_proj.active_adapters
            exp["logits_" + "_".join(names)] = logits_of(pm, ids)
        pm.base_model.set_adapter(["one", "two"])
        pm.merge_adapter()
        assert list(q_proj.merged_adapters) == ["one", "two"], q_proj.merged_adapters
        exp["logits_one_two_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_one_two_unmerged"] = logits_of(pm, ids)
        pm.set_adapter("one")
        mixed = ["one", "__base__", "two"]
        with per_row_adapters(pm, mixed, RoadLayer):
            exp["logits_mixed_batch"] = logits_of(pm, ids)
        case = {
            "model": "models/tiny-llama",
            "adapters": {nm: f"adapters/{nm}" for nm in cfgs},
            "mixed_batch_adapter_names": mixed,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits_<name> (that adapter "
                    "alone), logits_base (disabled), logits_one_two / logits_two_one (both active, applied in that order), "
                    "logits_one_two_merged / logits_one_two_unmerged (both merged in order, then unmerged), "
                    "logits_mixed_batch (per-row adapter_names, \"__base__\" = no adapter)",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    def case_delora(name, kw, seed, model="tiny-llama"):
        # DeLoRA: B diag(lambda / r / (|A_i| |B^i|)) A, input columns scaled by the base weight's column norms (the
        # saved buffer delora_w_norm); init_weights=False so that it acts
        from peft import DeloraConfig

        return case_single(name, DeloraConfig(init_weights=False, **kw), seed, model=model,
                           disabled_is_base=kw.get("bias", "none") == "none")

    def case_miss(name, kw, seed):
        from peft import MissConfig

        return case_single(name, MissConfig(**kw), seed)

    def case_fourierft(seed):
        from peft import FourierFTConfig

        cfg = FourierFTConfig(n_frequency=40, scaling=20.0, random_loc_seed=123, target_modules=["q_proj", "v_proj"],
                              n_frequency_pattern={"v_proj": 25}, init_weights=False)
        return case_single("fourierft", cfg, seed)

    def case_vblora(name, topk, save_only_topk, seed):
        # VB-LoRA: every A/B sub-vector a softmax-weighted sum of the top-k of a shared vector bank
        from peft import VBLoRAConfig

        cfg = VBLoRAConfig(r=4, num_vectors=16, vector_length=8, topk=topk, target_modules=["q_proj", "v_proj", "down_proj"],
                           save_only_topk_weights=save_only_topk)
        return case_single(name, cfg, seed)

    def case_shira(name, r, random_seed, seed):
        # SHiRA: trainable values at r*(in+out) positions of each weight, chosen by PEFT's random mask (a fresh
        # torch.Generator, seeded with random_seed when given: unseeded it starts from the default seed)
        from peft import ShiraConfig
        import peft.tuners.shira.layer as shira_layer

        # its once-only warning about hooks reads nn.Module._backward_pre_hooks, which Debian's torch 1.13 lacks
        shira_layer._warn_once_about_module_hooks = lambda layer: None
        cfg = ShiraConfig(r=r, target_modules=["q_proj", "v_proj", "down_proj"], random_seed=random_seed,
                          init_weights=False)
        return case_single(name, cfg, seed)

    def case_randlora(name, kw, seed):
        # RandLoRA: shared random bases (saved in the file), trainable lambda (r, bases) and gamma (bases, min_dim)
        from peft import RandLoraConfig
        import math
        import peft.tuners.randlora.model as randlora_model

        def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
            # torch >= 2.1's signature (a generator argument), which PEFT uses and Debian's torch 1.13 lacks
            fan = torch.nn.init._calculate_correct_fan(tensor, mode)
            bound = math.sqrt(3.0) * torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
            with torch.no_grad():
                return tensor.uniform_(-bound, bound, generator=generator)

        randlora_model.torch.nn.init.kaiming_uniform_ = kaiming_uniform_
        return case_single(name, RandLoraConfig(target_modules=["q_proj", "v_proj", "down_proj"], **kw), seed)

    def case_train_vblora(seed=680):
        # 8 AdamW steps on VB-LoRA: the logits of every layer and the one shared bank (a parameter PEFT's
        # pm.parameters() yields once) are trained
        from peft import VBLoRAConfig

        name = "train_vblora_adamw"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        cfg = VBLoRAConfig(r=4, num_vectors=16, vector_length=8, topk=2, target_modules=["q_proj", "v_proj", "down_proj"],
                           init_vector_bank_bound=0.1)
        pm = get_peft_model(base, cfg)
        pm.save_pretrained(os.path.join(folder, "adapter_init"))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=0.01)
        losses = []
        pm.train()
        for _ in range(8):
            logits = pm(ids)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        pm.save_pretrained(os.path.join(folder, "adapter_final"))
        pm.eval()
        case = {"model": "models/tiny-llama", "adapter_init": "adapter_init", "adapter_final": "adapter_final",
                "optimizer": {"type": "adamw", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
                "steps": 8,
                "loss": "mean cross-entropy of logits[:, :-1] against input_ids[:, 1:], whole batch each step",
                "what": "VB-LoRA trained from adapter_init (logits and the shared vector bank): losses at each step "
                        "before the update; logits_final: eval logits after training"}
        write_case(folder, case, {"losses": torch.tensor(losses), "logits_final": logits_of(pm, ids)}, ids)
        return {name: ["losses", "logits_final"]}

    def case_boft_butterfly(name, kw, seed):
        # BOFT with several butterfly factors. Upstream builds each factor's block-diagonal matrix with its CUDA
        # extension (fbd_cuda) and, when that does not build (any CPU machine), silently falls back to one factor.
        # The extension's forward is torch.block_diag per factor (fbd_cuda_kernel.cu copies block d of factor n to
        # rows/columns d*H..(d+1)*H of output n); that stands in for it here, so upstream computes what the
        # extension computes.
        from peft import BOFTConfig
        import peft.tuners.boft.layer as boft_layer

        class BlockDiag:
            @staticmethod
            def forward(x):
                return [torch.stack([torch.block_diag(*torch.unbind(f)) for f in torch.unbind(x)])]

            @staticmethod
            def backward(grad, x):
                n, d, h, _ = x.shape
                return [torch.stack([torch.stack([grad[i, j * h:(j + 1) * h, j * h:(j + 1) * h] for j in range(d)])
                                     for i in range(n)])]

        saved = boft_layer._FBD_CUDA
        boft_layer._FBD_CUDA = BlockDiag()
        try:
            return case_single(name, BOFTConfig(init_weights=False, **kw), seed)
        finally:
            boft_layer._FBD_CUDA = saved

    def case_trainable_tokens(name, model, kw, seed):
        # trainable tokens: rows token_indices of the embedding replaced by a trained delta; a model that ties
        # lm_head to the embedding gets the same rows in lm_head (PEFT's tied TrainableTokensLayer)
        from peft import TrainableTokensConfig

        return case_single(name, TrainableTokensConfig(**kw), seed, model=model)

    def case_lora_tokens(name, model, tokens, seed):
        # LoRA with trainable_token_indices: the embedding's rows trained beside the LoRA adapter
        # (TrainableTokensWrapper: <embedding>.token_adapter.trainable_tokens_delta; a tied lm_head follows)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], trainable_token_indices=tokens)
        return case_single(name, cfg, seed, model=model)

    def case_lora_init(name, init, seed):
        # PiSSA / OLoRA: the adapter starts from the base weight's SVD / QR factors and the base keeps only the
        # residual, so "disabled" is the residual model (PEFT redoes this from the original base on load)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=init)
        return case_single(name, cfg, seed, disabled_is_base=False)

    def case_lora_pissa_niter(name, niter, seed):
        # PiSSA by randomized SVD: svd_lowrank draws a Gaussian from the global generator when the adapter is
        # created, and again when it is loaded (the residual base is recomputed), so the case records the seed set
        # right before both (after loading the base, whose construction draws too)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                         init_lora_weights=f"pissa_niter_{niter}")
        made = case_single(name, cfg, seed, disabled_is_base=False, init_seed=seed + 5)
        folder = os.path.join(cases, name)
        ids = input_ids(seed + 1)
        want = load_file(os.path.join(folder, "expected.safetensors"))["logits"]
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        torch.manual_seed(seed + 5)
        again = PeftModel.from_pretrained(base, os.path.join(folder, "adapter"))
        assert torch.allclose(logits_of(again, ids), want, atol=1e-6), "reload with the same seed differs"
        other = PeftModel.from_pretrained(tinyref.load_hf(os.path.join(models, "tiny-llama")), os.path.join(folder, "adapter"))
        assert not torch.allclose(logits_of(other, ids), want, atol=1e-4), "the generator state should matter"
        exact = case_lora_init_factors("pissa")
        approx = case_lora_init_factors(f"pissa_niter_{niter}", seed + 5)
        assert (exact - approx).abs().max() > 1e-4, "randomized SVD equal to the exact one: a weak case"
        return made

    def case_lora_init_factors(init, init_seed=None):
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        if init_seed is not None:
            torch.manual_seed(init_seed)
        pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=init))
        q = pm.base_model.model.model.layers[0].self_attn.q_proj
        return (q.lora_B["default"].weight @ q.lora_A["default"].weight).detach()

    def case_lora_replication(seed=790):
        # layer_replication [[0, 2], [1, 2]] on tiny-llama's two layers: the stack 0 1 1, the copies sharing their
        # base weights, each position with its own LoRA
        name = "lora_layer_replication"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        base.model.config = base.config  # transformers' LlamaModel has the config too (replicate_layers reads it)
        base_logits = logits_of(base, ids)
        layer_map = [[0, 2], [1, 2]]
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], layer_replication=layer_map)
        pm = get_peft_model(base, cfg)
        layers = pm.base_model.model.model.layers
        assert len(layers) == 3
        assert layers[2].self_attn.q_proj.base_layer.weight is layers[1].self_attn.q_proj.base_layer.weight
        assert layers[2].self_attn.q_proj.lora_A["default"].weight is not layers[1].self_attn.q_proj.lora_A["default"].weight
        perturb_trainables(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert not torch.allclose(exp["logits_disabled"], base_logits, atol=1e-4), "the replicated stack is another model"
        # upstream merges although the copies share one base weight (LoraModel._check_merge_allowed looks the option
        # up among the adapter names, so its refusal never fires): each shared weight gets every copy's update
        pm.merge_adapter()
        merged = logits_of(pm, ids)
        pm.unmerge_adapter()
        merge_error = (merged - exp["logits"]).abs().max().item()
        assert merge_error > 1e-3
        assert torch.allclose(logits_of(pm, ids), exp["logits"], atol=1e-5)
        # the folder loads back onto a fresh base (from_pretrained replicates it again)
        fresh = tinyref.load_hf(os.path.join(models, "tiny-llama"))
        fresh.model.config = fresh.config
        again = PeftModel.from_pretrained(fresh, os.path.join(folder, "adapter"))
        assert torch.allclose(logits_of(again, ids), exp["logits"], atol=1e-6)
        # OPT: its layers are at model.decoder.layers, where replicate_layers does not look
        try:
            get_peft_model(tinyref.load_hf(os.path.join(models, "tiny-opt")),
                           LoraConfig(r=4, target_modules=["q_proj"], layer_replication=[[0, 2]]))
            opt_error = None
        except Exception as e:
            opt_error = err(e)
        assert opt_error and "layers" in opt_error
        case = {
            "model": "models/tiny-llama",
            "adapter": "adapter",
            "method": name,
            "layer_replication": layer_map,
            "upstream_merge_max_abs_diff": merge_error,
            "opt_error": opt_error,
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active on the "
                    "replicated stack of layers 0 1 1), logits_disabled (the replicated base). upstream merges into the "
                    "shared base weights, which changes the logits by upstream_merge_max_abs_diff (so no merged "
                    "logits are recorded); opt_error: upstream's error for layer_replication on tiny-opt",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    def case_single(name, cfg, seed, disabled_is_base=True, model="tiny-llama", init_seed=None):
        """One adapter made from `cfg` with perturbed tensors, in the single-adapter case layout. `init_seed`: the
        global generator is seeded with it right before the adapter is created (recorded in case.json)."""
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = tinyref.load_hf(os.path.join(models, model))
        base_logits = logits_of(base, ids)
        if init_seed is not None:
            torch.manual_seed(init_seed)
        pm = get_peft_model(base, cfg)
        perturb_trainables(pm, seed + 10)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        exp = {"logits": logits_of(pm, ids)}
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.allclose(exp["logits_disabled"], base_logits, atol=1e-6) == disabled_is_base
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        case = {
            "model": "models/" + model,
            "adapter": "adapter",
            "method": name,
            "disabled_is_base_model": disabled_is_base,
            **({"init_seed": init_seed} if init_seed is not None else {}),
            "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (adapter active), "
                    "logits_disabled, logits_merged (after merge_adapter), logits_unmerged (after unmerge_adapter), "
                    "logits_merge_and_unload",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    # ---------------------------------------------------------------------------------------------------------------
    # I. configurations upstream accepts or refuses (JSON only)
    def case_config_checks(seed=540):
        name = "config_checks"
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        base_logits = {sub: logits_of(tinyref.load_hf(os.path.join(models, sub)), ids)
                       for sub in ("tiny-llama", "tiny-opt")}

        def build(make, sub, seed_):
            torch.manual_seed(seed_)
            return get_peft_model(tinyref.load_hf(os.path.join(models, sub)), make())

        checks = {}

        def attempt(key, text, make, sub, after=None):
            """Make the config, then get_peft_model on models/<sub>; record where upstream refuses it."""
            entry = {"config": text, "applied_to": f"models/{sub}"}
            stage = "config"
            with warnings.catch_warnings(record=True) as ws:
                warnings.simplefilter("always")
                try:
                    make()
                    stage = "get_peft_model"
                    pm = build(make, sub, seed)
                except Exception as e:  # noqa: BLE001
                    entry.update(accepted=False, refused_by=stage, error_type=type(e).__name__, error=str(e))
                    pm = None
            if pm is not None:
                entry["accepted"] = True
                entry["adapted_modules"] = [n for n, m in pm.base_model.model.named_modules()
                                            if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]
                if after:
                    entry.update(after(pm, sub))
            entry["peft_warnings"] = warning_texts(ws)
            checks[key] = entry

        attempt("lora_all_linear_layers_to_transform",
                'LoraConfig(target_modules="all-linear", layers_to_transform=[0])',
                lambda: LoraConfig(target_modules="all-linear", layers_to_transform=[0]), "tiny-llama")
        attempt("lora_regex_layers_to_transform",
                'LoraConfig(target_modules=".*q_proj", layers_to_transform=[0])',
                lambda: LoraConfig(target_modules=".*q_proj", layers_to_transform=[0]), "tiny-llama")
        attempt("lora_layers_pattern_without_layers_to_transform",
                'LoraConfig(target_modules=["q_proj"], layers_pattern="layers")',
                lambda: LoraConfig(target_modules=["q_proj"], layers_pattern="layers"), "tiny-llama")
        attempt("lora_orthogonal_odd_rank",
                'LoraConfig(r=3, init_lora_weights="orthogonal", target_modules=["q_proj"])',
                lambda: LoraConfig(r=3, init_lora_weights="orthogonal", target_modules=["q_proj"]), "tiny-llama")

        def orthogonal_facts(pm, sub):
            layers = [m for m in pm.modules() if isinstance(m, LoraLayer)]
            a_max = max(m.lora_A["default"].weight.abs().max().item() for m in layers)
            b_max = max(m.lora_B["default"].weight.abs().max().item() for m in layers)
            pm.eval()
            # PEFT: A = (X1 @ Q[0::2]).T and B = X2 @ Q[1::2] with Q orthogonal, so B @ A = X2 Q[1::2] Q[0::2]^T X1^T
            # is zero (up to rounding) although B is not: the initial adapter is a no-op
            ba_max = max((m.lora_B["default"].weight @ m.lora_A["default"].weight).abs().max().item() for m in layers)
            return {"lora_A_max_abs": a_max, "lora_B_max_abs": b_max, "lora_B_nonzero": b_max > 0,
                    "lora_B_matmul_lora_A_max_abs": ba_max,
                    "logits_max_abs_diff_vs_base": max_abs_diff(logits_of(pm, ids), base_logits[sub]),
                    "seed": seed}

        attempt("lora_orthogonal_even_rank",
                'LoraConfig(r=4, init_lora_weights="orthogonal", target_modules=["q_proj"])',
                lambda: LoraConfig(r=4, init_lora_weights="orthogonal", target_modules=["q_proj"]), "tiny-llama",
                orthogonal_facts)

        def loha_facts(pm, sub):
            pm.eval()
            out = {"seed": seed}
            for init in (True, False):
                a = build(lambda init=init: LoHaConfig(target_modules=["q_proj"], use_effective_conv2d=True,
                                                       init_weights=init), sub, seed)
                b = build(lambda init=init: LoHaConfig(target_modules=["q_proj"], use_effective_conv2d=False,
                                                       init_weights=init), sub, seed)
                a.eval()
                b.eval()
                la, lb = logits_of(a, ids), logits_of(b, ids)
                out[f"init_weights_{init}".lower()] = {
                    "logits_max_abs_diff_vs_use_effective_conv2d_false": max_abs_diff(la, lb),
                    "logits_max_abs_diff_vs_base": max_abs_diff(la, base_logits[sub])}
            return out

        attempt("loha_use_effective_conv2d_on_linear",
                'LoHaConfig(target_modules=["q_proj"], use_effective_conv2d=True)',
                lambda: LoHaConfig(target_modules=["q_proj"], use_effective_conv2d=True), "tiny-llama", loha_facts)

        def vera_bias_facts(pm, sub):
            trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
            ref = build(lambda: VeraConfig(target_modules=["q_proj"], bias="vera_only"), sub, seed)
            ref_trainable = [n for n, p in ref.named_parameters() if p.requires_grad]
            return {"trainable_parameters": trainable,
                    "adapter_keys": sorted(peft.get_peft_model_state_dict(pm)),
                    "same_as_vera_only": trainable == ref_trainable
                    and sorted(peft.get_peft_model_state_dict(pm)) == sorted(peft.get_peft_model_state_dict(ref))}

        attempt("vera_bias_vera_lambda_only",
                'VeraConfig(target_modules=["q_proj"], bias="vera_lambda_only")',
                lambda: VeraConfig(target_modules=["q_proj"], bias="vera_lambda_only"), "tiny-opt", vera_bias_facts)

        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "case.json"), "w") as f:
            json.dump({"what": "whether upstream PEFT accepts each configuration: made, then applied with "
                               "get_peft_model to applied_to (seeded with torch.manual_seed(seed) where the init is "
                               "random); refused_by says which step raised, error is str(exception) verbatim",
                       "seed": seed, "checks": checks}, f, indent=2)
            f.write("\n")
        return {name: sorted(checks)}

    # ---------------------------------------------------------------------------------------------------------------
    # J. AdaLoRA's rank allocator: a training run through every phase (warmup, budget schedule, final mask, final
    # fine-tuning) in upstream's documented loop order
    class CausalLMOutput:
        """The two fields PEFT reads of transformers' CausalLMOutputWithPast (AdaLoraModel.forward adds the
        orthogonal regularisation to .loss)."""

        def __init__(self, loss, logits):
            self.loss, self.logits = loss, logits

    def causal_lm_loss(logits, ids):
        """transformers' ForCausalLMLoss without padding: mean cross-entropy of logits[:, :-1] against ids[:, 1:]."""
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 ids[:, 1:].reshape(-1))

    def with_hf_loss(model):
        """tinyref's forward returns logits; with labels, return an output with .loss as a transformers model does."""
        plain = model.forward

        def forward(input_ids, attention_mask=None, labels=None, **kwargs):
            logits = plain(input_ids)
            return logits if labels is None else CausalLMOutput(causal_lm_loss(logits, labels), logits)

        model.forward = forward
        return model

    def adalora_allocator_config(steps, task_type="CAUSAL_LM"):
        # task_type matters: PeftModelForCausalLM.forward calls AdaLoraModel.forward, which adds the orthogonal
        # regularisation to out.loss; a plain PeftModel (task_type None) calls the base model directly and skips it
        from peft import AdaLoraConfig
        return AdaLoraConfig(init_r=6, target_r=2, tinit=2, tfinal=3, deltaT=2, total_step=steps, beta1=0.85,
                             beta2=0.85, orth_reg_weight=0.5, lora_alpha=8, lora_dropout=0.0,
                             target_modules=["v_proj", "o_proj", "up_proj"], task_type=task_type)

    def regularised_without_task_type(seed, ids):
        """Does out.loss hold the orthogonal regularisation when the config has no task_type?"""
        torch.manual_seed(seed)
        pm = get_peft_model(with_hf_loss(tinyref.load_hf(os.path.join(models, "tiny-llama"))),
                            adalora_allocator_config(14, task_type=None))
        out = pm(input_ids=ids, labels=ids)
        return abs(out.loss.item() - causal_lm_loss(out.logits, ids).item()) > 1e-3

    def case_adalora_allocator(seed=600, steps=14):
        name = "adalora_allocator"
        # transformers' deepspeed_config() is None without DeepSpeed; the import stub answers an object, which would
        # send RankAllocator.update_ipt to deepspeed's gradient gather
        import peft.tuners.adalora.layer as adalora_layer
        adalora_layer.deepspeed_config = lambda: None
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = with_hf_loss(tinyref.load_hf(os.path.join(models, "tiny-llama")))
        cfg = adalora_allocator_config(steps)
        pm = get_peft_model(base, cfg)  # PEFT's default init: E = 0, A and B ~ N(0, 0.02)
        model = pm.base_model  # AdaLoraModel
        ra = model.rankallocator
        layer_names = [n[: -len(".lora_A.default")] for n, _ in model.model.named_parameters()
                       if n.endswith(".lora_A.default")]  # module order = the order upstream scores them in
        e_params = {ln: model.model.get_parameter(f"{ln}.lora_E.default") for ln in layer_names}
        pm.save_pretrained(os.path.join(folder, "adapter_init"))
        trainable = [n for n, p in pm.named_parameters() if p.requires_grad]

        # what mask_to_budget computes: the triplet score of each layer (captured from _combine_ipt, called in
        # layer_names order) and the budget it was asked for
        captured = {"scores": [], "budget": None}
        combine, mask_to_budget = ra._combine_ipt, ra.mask_to_budget

        def combine_capture(ipt_E, ipt_AB):
            s = combine(ipt_E, ipt_AB)
            captured["scores"].append(s.detach().clone())
            return s

        def mask_capture(m, budget):
            captured["scores"], captured["budget"] = [], budget
            return mask_to_budget(m, budget)

        ra._combine_ipt, ra.mask_to_budget = combine_capture, mask_capture

        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=0.01)
        T = cfg.total_step - cfg.tfinal
        losses, task_losses, budgets, actions = [], [], [], []
        e_after = {ln: [] for ln in layer_names}
        mask_steps, scores, thresholds, margins = [], {ln: [] for ln in layer_names}, [], []
        pm.train()
        for step in range(steps):
            out = pm(input_ids=ids, labels=ids)  # loss = cross-entropy + orth_reg_weight * regularisation
            loss = out.loss
            losses.append(loss.item())
            task_losses.append(causal_lm_loss(out.logits, ids).item())
            loss.backward()
            opt.step()
            budget, mask_ind = ra.budget_schedule(step)
            captured["budget"] = None
            model.update_and_allocate(step)
            opt.zero_grad()
            action = ("fixed" if step > T else "final" if step == T else "mask" if mask_ind else
                      "warmup" if step <= cfg.tinit else "update")
            actions.append(action)
            budgets.append(budget if step <= T else ra.target_bgt)
            assert (captured["budget"] is not None) == (action in ("mask", "final")), (step, action)
            if captured["budget"] is not None:
                assert captured["budget"] == budgets[-1], (step, captured["budget"], budgets[-1])
                all_scores = torch.cat(captured["scores"])
                k = ra.init_bgt - captured["budget"]
                thr = torch.kthvalue(all_scores, k=k)[0].item()  # the threshold mask_to_budget used
                srt = all_scores.sort().values
                mask_steps.append(step)
                thresholds.append(thr)
                # how far the k-th and (k+1)-th smallest scores are apart, relative: a float difference smaller
                # than this cannot change which entries are masked
                margins.append(((srt[k] - srt[k - 1]) / srt[k]).item())
                for ln, s in zip(layer_names, captured["scores"]):
                    scores[ln].append(s.view(-1))
            for ln in layer_names:
                e_after[ln].append(e_params[ln].detach().view(-1).clone())
        ra._combine_ipt, ra.mask_to_budget = combine, mask_to_budget

        rank_pattern_in_memory = {k: list(v) for k, v in cfg.rank_pattern.items()}
        pm.eval()
        exp = {"losses": torch.tensor(losses, dtype=torch.float64),
               "task_losses": torch.tensor(task_losses, dtype=torch.float64),
               "budgets": torch.tensor(budgets, dtype=torch.int64),
               "mask_steps": torch.tensor(mask_steps, dtype=torch.int64),
               "thresholds": torch.tensor(thresholds, dtype=torch.float32),
               "logits_final": logits_of(pm, ids)}
        for ln in layer_names:
            exp[f"E.{ln}"] = torch.stack(e_after[ln])
            exp[f"score.{ln}"] = torch.stack(scores[ln])
        final_dir = os.path.join(folder, "adapter_final")
        pm.save_pretrained(final_dir)  # E, A, B keep only the rows rank_pattern keeps
        saved_cfg = json.load(open(os.path.join(final_dir, "adapter_config.json")))
        saved_shapes = {k: list(v.shape) for k, v in load_file(os.path.join(final_dir,
                                                                            "adapter_model.safetensors")).items()}
        # upstream loads its own folder with the truncated ranks and computes the same logits
        torch.manual_seed(seed + 50)
        back = peft.PeftModel.from_pretrained(with_hf_loss(tinyref.load_hf(os.path.join(models, "tiny-llama"))),
                                              final_dir)
        back.eval()
        exp["logits_reloaded"] = logits_of(back, ids)
        reload_diff = max_abs_diff(exp["logits_reloaded"], exp["logits_final"])
        assert reload_diff < 1e-5, reload_diff
        kept = {k: int(sum(v)) for k, v in saved_cfg["rank_pattern"].items()}
        case = {
            "model": "models/tiny-llama",
            "adapter_init": "adapter_init",
            "adapter_final": "adapter_final",
            "config": {"init_r": cfg.init_r, "target_r": cfg.target_r, "tinit": cfg.tinit, "tfinal": cfg.tfinal,
                       "deltaT": cfg.deltaT, "total_step": cfg.total_step, "beta1": cfg.beta1, "beta2": cfg.beta2,
                       "orth_reg_weight": cfg.orth_reg_weight, "lora_alpha": cfg.lora_alpha,
                       "target_modules": sorted(cfg.target_modules)},
            "optimizer": {"type": "adamw", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
            "steps": steps,
            "loop": "for step in range(steps): out = model(input_ids=ids, labels=ids); out.loss.backward(); "
                    "optimizer.step(); model.base_model.update_and_allocate(step); optimizer.zero_grad()",
            "trainable_parameters": trainable,
            "layers": layer_names,
            "initial_budget": ra.init_bgt,
            "target_budget": ra.target_bgt,
            "actions": actions,
            "threshold_margins": margins,
            "rank_pattern_in_memory": rank_pattern_in_memory,
            "rank_pattern_saved": saved_cfg["rank_pattern"],
            "kept_ranks": kept,
            "saved_shapes": saved_shapes,
            "reloaded_logits_max_abs_diff": reload_diff,
            "task_type_none_adds_regularisation": regularised_without_task_type(seed, ids),
            "what": "AdaLoRA training from adapter_init/ with `loop` on the whole batch in input_ids.json, whole-batch "
                    "AdamW, no schedule, no clipping. losses: out.loss of each step (cross-entropy plus orth_reg_weight "
                    "times the mean Frobenius norm of A A^T - I and B^T B - I over every lora_A and lora_B), computed "
                    "before that step's update; task_losses: the cross-entropy alone. budgets: the budget of each step "
                    "(RankAllocator.budget_schedule; target_budget after the final mask). actions: what "
                    "update_and_allocate(step) did: warmup (step <= tinit: sensitivity EMA only), update (EMA, no "
                    "mask: step % deltaT != 0), mask (EMA, then the entries of E whose score <= threshold set to 0), "
                    "final (step == total_step - tfinal: no EMA update, mask to target_budget, rank_pattern fixed, "
                    "EMA reset), fixed (after it: E masked again by the fixed rank_pattern). E.<layer>: [steps, init_r] "
                    "lora_E after that step's update_and_allocate. score.<layer>: [len(mask_steps), init_r] the triplet "
                    "score (exp_avg_ipt * exp_avg_unc of E plus the row means over A and column means over B) at each "
                    "step in mask_steps; thresholds: the kthvalue (k = initial_budget - budget) those steps masked at; "
                    "threshold_margins: (s[k] - s[k-1]) / s[k] over the sorted scores. logits_final: eval logits after "
                    "training; logits_reloaded: upstream's from_pretrained of adapter_final/ (truncated ranks). "
                    "rank_pattern_in_memory: config.rank_pattern after the run (keys <module>.lora_E.default); "
                    "save_pretrained strips the adapter name (rank_pattern_saved, also in adapter_final/) and keeps "
                    "only the rows the pattern keeps",
        }
        write_case(folder, case, exp, ids)
        return {name: sorted(exp)}

    def check_adalora_folder(folder):
        """Load a folder peft.cpp saved after the adalora_allocator run with upstream; compare its logits."""
        ref = os.path.join(cases, "adalora_allocator")
        ids = torch.tensor(json.load(open(os.path.join(ref, "input_ids.json"))))
        want = load_file(os.path.join(ref, "expected.safetensors"))["logits_final"]
        pm = peft.PeftModel.from_pretrained(tinyref.load_hf(os.path.join(models, "tiny-llama")), folder)
        pm.eval()
        got = logits_of(pm, ids)
        shapes = {k: list(v.shape) for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}
        print(json.dumps({"rank_pattern": pm.peft_config["default"].rank_pattern, "shapes": shapes,
                          "logits_max_abs_diff_vs_upstream_run": max_abs_diff(got, want)}, indent=1))

    def tied_llama_case(name, module, seed):
        def run():
            write_tied_llama()
            return case_mts(name, "tiny-llama-tied", module, seed)
        return run

    all_cases = {
        "several_active": case_several_active,
        "mts_tied_opt": lambda: case_mts("mts_tied_opt", "tiny-opt", "lm_head", 400),
        "mts_embed_opt": lambda: case_mts("mts_embed_opt", "tiny-opt", "embed_tokens", 410),
        "mts_tied_llama": tied_llama_case("mts_tied_llama", "lm_head", 420),
        "mts_tied_llama_embed": tied_llama_case("mts_tied_llama_embed", "embed_tokens", 430),
        "oft_coft": case_oft_coft,
        "oft_module_dropout": case_oft_module_dropout,
        "vera_bias_opt": case_vera_bias_opt,
        "lora_layer_filter": case_lora_layer_filter,
        "lora_target_parameters": case_lora_target_parameters,
        "config_checks": case_config_checks,
        "weighted_more": case_weighted_more,
        "weighted_ia3": case_weighted_ia3,
        "hra": lambda: case_hra("hra", ["q_proj", "v_proj"], False, 580),
        "hra_gs": lambda: case_hra("hra_gs", ["q_proj", "k_proj", "down_proj"], True, 590),
        "road": lambda: case_road("road", dict(variant="road_1", group_size=8, target_modules=["q_proj", "v_proj"]), 820),
        "road_2": lambda: case_road("road_2", dict(variant="road_2", group_size=4,
                                                   target_modules=["q_proj", "k_proj", "down_proj"]), 830),
        "road_4_opt": lambda: case_road("road_4_opt", dict(variant="road_4", group_size=16,
                                                           target_modules=["q_proj", "v_proj", "fc1"]), 840, "tiny-opt"),
        "road_mixed": case_road_mixed,
        "delora": lambda: case_delora("delora", dict(r=4, target_modules=["q_proj", "v_proj"]), 860),
        "delora_pattern": lambda: case_delora("delora_pattern", dict(
            r=4, delora_lambda=6, module_dropout=0.1, rank_pattern={"v_proj": 2}, lambda_pattern={"down_proj": 3},
            target_modules=["q_proj", "v_proj", "down_proj"], modules_to_save=["lm_head"]), 870),
        "delora_opt": lambda: case_delora("delora_opt", dict(r=3, bias="delora_only",
                                                             target_modules=["q_proj", "v_proj", "fc1"]), 880, "tiny-opt"),
        "miss": lambda: case_miss("miss", dict(r=5, target_modules=["q_proj", "down_proj"], init_weights=False), 600),
        "miss_bat": lambda: case_miss("miss_bat", dict(r=4, target_modules=["q_proj", "o_proj"], init_weights="bat"), 610),
        "fourierft": lambda: case_fourierft(630),
        "vblora": lambda: case_vblora("vblora", 2, False, 660),
        "vblora_topk": lambda: case_vblora("vblora_topk", 3, True, 670),
        "train_vblora_adamw": case_train_vblora,
        "shira": lambda: case_shira("shira", 2, 42, 690),
        "shira_noseed": lambda: case_shira("shira_noseed", 1, None, 700),
        "randlora": lambda: case_randlora("randlora", dict(r=4, randlora_alpha=8, projection_prng_key=7), 710),
        "randlora_sparse": lambda: case_randlora("randlora_sparse", dict(r=5, randlora_alpha=20, sparse=True), 720),
        "lora_pissa": lambda: case_lora_init("lora_pissa", "pissa", 640),
        "lora_olora": lambda: case_lora_init("lora_olora", "olora", 650),
        "miss_mini": lambda: case_miss("miss_mini", dict(r=4, mini_r=8, target_modules=["q_proj", "v_proj"],
                                                         init_weights="mini"), 620),
        "adalora_allocator": case_adalora_allocator,
        "trainable_tokens": lambda: case_trainable_tokens(
            "trainable_tokens", "tiny-llama", dict(token_indices=[4, 13, 59, 95]), 750),
        "trainable_tokens_tied": lambda: case_trainable_tokens(
            "trainable_tokens_tied", "tiny-opt", dict(token_indices=[1, 4, 60], init_weights=False), 760),
        "lora_tokens": lambda: case_lora_tokens("lora_tokens", "tiny-llama", [6, 44, 81], 770),
        "lora_tokens_tied": lambda: case_lora_tokens("lora_tokens_tied", "tiny-opt", {"embed_tokens": [1, 4, 60]}, 780),
        "boft_butterfly2": lambda: case_boft_butterfly("boft_butterfly2", dict(
            boft_block_size=4, boft_n_butterfly_factor=2, target_modules=["q_proj", "v_proj", "down_proj"]), 730),
        "lora_pissa_niter": lambda: case_lora_pissa_niter("lora_pissa_niter", 2, 800),
        "lora_layer_replication": case_lora_replication,
        "boft_butterfly3": lambda: case_boft_butterfly("boft_butterfly3", dict(
            boft_block_size=0, boft_block_num=8, boft_n_butterfly_factor=3, target_modules=["q_proj", "down_proj"]), 740),
    }
    if a.check_adalora_folder:
        check_adalora_folder(os.path.abspath(a.check_adalora_folder))
        return
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
