#!/usr/bin/env python3
"""Golden cases from upstream PEFT on a bfloat16 base: frozen weights in bfloat16, adapters float32 (PEFT's
autocast_adapter_dtype=True, the default), as peft.cpp's `--dtype bf16` loads them.

usage: python3 tests/data/golden/gen_bf16.py --oracle /tmp/oracle [--only CASE[,CASE]]

--oracle is a prepared copy of shared/oracle (setup.sh run; /usr/bin/python3). The script imports it as gen_extra.py
does (gen_extra.setup), LOADS models/tiny-llama (float32; never rewritten) and converts it with .to(torch.bfloat16)
(round to nearest even, as peft.cpp's load converts), then writes these folders under cases/:

  bf16_lora   LoRA r 4, alpha 8 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, init_lora_weights
              False, every adapter tensor perturbed (float32). Expected (eval mode, bfloat16 logits as the model
              returns them): logits, logits_disabled, logits_merged (merge_adapter: the float32 delta added into the
              bfloat16 weights), logits_unmerged, logits_merge_and_unload. Training (train mode, dropout 0):
              loss (mean cross-entropy of logits[:, :-1].float() against input_ids[:, 1:], as transformers' loss
              upcasts) and grad.<key> for every tensor of adapter/adapter_model.safetensors (float32 gradients of
              that loss, named as the file names them); loss_f32 and grad_f32.<key>, the same on the float32
              base (how far bfloat16 itself moves them: the scale of the test's tolerance); then losses: 4 AdamW steps (lr 1e-3, betas 0.9/0.999, eps
              1e-8, weight decay 0.01) from the saved adapter, the loss of each step before its update.
  bf16_dora   the same with use_dora=True on q_proj and v_proj (magnitude vectors float32 too); forward only.

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


def patch_attention_dtype(torch, tinyref):
    """tinyref's attention applies float32 cos/sin (right for float32 only); transformers' LlamaRotaryEmbedding
    returns them in the activations' dtype, and eager attention adds a mask in that dtype, softmaxes in float32 and
    goes back (modeling_llama.py). Put the same math, dtype-faithful, in its place (float32: unchanged)."""
    import math
    import torch.nn.functional as F

    def llama_attention_forward(self, x, pos):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        inv = 1.0 / (self.theta ** (torch.arange(0, self.hd, 2, dtype=torch.int64).float() / self.hd))
        fr = pos[:, None].float() * inv[None, :]
        emb = torch.cat((fr, fr), dim=-1)
        cos, sin = emb.cos()[None, None].to(q.dtype), emb.sin()[None, None].to(q.dtype)
        q = q * cos + tinyref.rotate_half(q) * sin
        k = k * cos + tinyref.rotate_half(k) * sin
        rep = self.h // self.kvh
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.hd))
        mask = torch.full((T, T), torch.finfo(q.dtype).min, dtype=q.dtype).triu(1)
        p = F.softmax(s + mask, dim=-1, dtype=torch.float32).to(q.dtype)
        o = (p @ v).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(o)

    tinyref.LlamaAttention.forward = llama_attention_forward


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", required=True, help="prepared copy of shared/oracle")
    ap.add_argument("--golden", default=HERE, help="golden folder holding models/ and cases/ (default: this folder)")
    ap.add_argument("--only", default="", metavar="CASE[,CASE]")
    a = ap.parse_args()

    import gen_extra

    torch, peft, tinyref = gen_extra.setup(a.oracle)
    import torch.nn.functional as F

    patch_attention_dtype(torch, tinyref)
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    golden = os.path.abspath(a.golden)
    models = os.path.join(golden, "models")
    cases = os.path.join(golden, "cases")

    def input_ids(seed):
        return torch.randint(3, 96, (3, 9), generator=torch.Generator().manual_seed(seed))

    def perturb_trainables(model, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    assert p.dtype == torch.float32, (n, p.dtype)
                    p.add_(0.05 * torch.randn(p.shape, generator=g))

    def logits_of(model, ids):
        with torch.no_grad():
            return model(ids).detach().clone()

    def loss_of(logits, ids):
        V = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, V), ids[:, 1:].reshape(-1))

    def write_case(folder, case, expected, ids):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "case.json"), "w") as f:
            json.dump(case, f, indent=2)
            f.write("\n")
        with open(os.path.join(folder, "input_ids.json"), "w") as f:
            json.dump(ids.tolist(), f)
        save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(folder, "expected.safetensors"))

    def bf16_base():
        return tinyref.load_hf(os.path.join(models, "tiny-llama")).to(torch.bfloat16)

    def case_lora(name, seed, cfg, train):
        folder = os.path.join(cases, name)
        shutil.rmtree(folder, ignore_errors=True)
        ids = input_ids(seed + 1)
        torch.manual_seed(seed)
        base = bf16_base()
        base_logits = logits_of(base, ids)
        pm = get_peft_model(base, cfg)
        perturb_trainables(pm, seed + 2)
        pm.eval()
        pm.save_pretrained(os.path.join(folder, "adapter"))
        exp = {"logits": logits_of(pm, ids)}
        assert exp["logits"].dtype == torch.bfloat16
        with pm.disable_adapter():
            exp["logits_disabled"] = logits_of(pm, ids)
        assert torch.equal(exp["logits_disabled"], base_logits)
        if train:
            # one loss and its gradients, train mode (dropout 0), before anything moves
            pm.train()
            loss = loss_of(pm(ids), ids)
            loss.backward()
            exp["loss"] = loss.detach().reshape(1)
            from safetensors.torch import load_file
            saved = load_file(os.path.join(folder, "adapter", "adapter_model.safetensors"))
            params = {n.replace(".default", ""): p for n, p in pm.named_parameters() if p.requires_grad}
            assert sorted(params) == sorted(saved), (sorted(params)[:3], sorted(saved)[:3])
            for k, p in params.items():
                assert p.grad is not None and p.grad.dtype == torch.float32, k
                exp["grad." + k] = p.grad.detach().clone()
            # the same loss and gradients on the float32 base: how far bfloat16 itself moves them
            pm32 = get_peft_model(tinyref.load_hf(os.path.join(models, "tiny-llama")), cfg)
            from peft import set_peft_model_state_dict
            set_peft_model_state_dict(pm32, saved)
            pm32.train()
            loss32 = loss_of(pm32(ids), ids)
            loss32.backward()
            exp["loss_f32"] = loss32.detach().reshape(1)
            for n, p in pm32.named_parameters():
                if p.requires_grad:
                    exp["grad_f32." + n.replace(".default", "")] = p.grad.detach().clone()
            # a few AdamW steps from there
            opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999),
                                    eps=1e-8, weight_decay=0.01)
            opt.zero_grad()
            losses = []
            for _ in range(4):
                loss = loss_of(pm(ids), ids)
                losses.append(loss.item())
                loss.backward()
                opt.step()
                opt.zero_grad()
            exp["losses"] = torch.tensor(losses, dtype=torch.float32)
            # back to the saved adapter for the merge states
            pm = get_peft_model(bf16_base(), cfg)
            set_peft_model_state_dict(pm, saved)
            pm.eval()
            assert torch.equal(logits_of(pm, ids), exp["logits"])
        pm.merge_adapter()
        exp["logits_merged"] = logits_of(pm, ids)
        pm.unmerge_adapter()
        exp["logits_unmerged"] = logits_of(pm, ids)
        exp["logits_merge_and_unload"] = logits_of(pm.merge_and_unload(), ids)
        case = {
            "model": "models/tiny-llama",
            "dtype": "bfloat16",
            "adapter": "adapter",
            "method": "lora",
            "what": "upstream PEFT on tiny-llama converted to bfloat16 (adapter tensors float32): eval-mode logits "
                    "[batch, seq, vocab] bfloat16 for input_ids.json: logits, logits_disabled, logits_merged, "
                    "logits_unmerged, logits_merge_and_unload" +
                    ("; train mode: loss = mean cross-entropy of logits[:, :-1].float() against input_ids[:, 1:], "
                     "grad.<key> = its float32 gradient for each tensor of adapter_model.safetensors, losses = 4 "
                     "AdamW steps from the saved adapter (the loss before each update); loss_f32, grad_f32.<key>: the same "
                     "loss and gradients with the float32 base" if train else ""),
        }
        if train:
            case["optimizer"] = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
        write_case(folder, case, exp, ids)

    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    todo = {
        "bf16_lora": lambda: case_lora("bf16_lora", 900, LoraConfig(target_modules=all_linear, r=4, lora_alpha=8,
                                                                    lora_dropout=0.0, init_lora_weights=False), True),
        "bf16_dora": lambda: case_lora("bf16_dora", 910, LoraConfig(target_modules=["q_proj", "v_proj"], r=4,
                                                                    lora_alpha=8, use_dora=True,
                                                                    init_lora_weights=False), False),
    }
    only = [c for c in a.only.split(",") if c]
    for c in only:
        if c not in todo:
            sys.exit(f"unknown case {c}; cases: {', '.join(todo)}")
    for name, fn in todo.items():
        if not only or name in only:
            fn()
            print("wrote", name)


if __name__ == "__main__":
    main()
