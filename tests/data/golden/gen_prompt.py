#!/usr/bin/env python3
"""Golden data for prompt learning: PEFT's PROMPT_TUNING, P_TUNING and PREFIX_TUNING on tiny-llama and tiny-opt.

usage: python3 tests/data/golden/gen_prompt.py --oracle /tmp/oracle [--only CASE[,CASE]]

Upstream PEFT's PeftModelForCausalLM does the work (its forward puts the virtual tokens in front of the input embeddings,
or builds prefix tuning's past_key_values and prepends ones to the attention mask; get_prompt_embedding_to_save and
save_pretrained write the folders). The oracle's tiny models take only input_ids, so this script gives them the part of
transformers' LlamaForCausalLM / OPTForCausalLM forward that prompt learning reaches: inputs_embeds, attention_mask
(padding), past_key_values (the keys and values of earlier positions, used as they are, not rotated again),
position_ids (transformers' default: the cache position, past length + arange), labels (the shifted mean
cross-entropy, -100 ignored), and transformers' DynamicCache (per layer (key, value)) that get_prompt builds.
--oracle is a prepared copy of shared/oracle (setup.sh run first; use /usr/bin/python3).

Cases (cases/<name>/: case.json, input_ids.json, adapter/ (PEFT's save_pretrained), expected.safetensors,
encoder.safetensors = the prompt encoder's own state dict with PEFT's names, before saving):
  prompt_tuning         tiny-llama, 6 virtual tokens, RANDOM init, perturbed
  prompt_tuning_text    tiny-llama, 7 virtual tokens from prompt_tuning_init_text through the tokenizer in tokenizer/
                        (a character-level tokenizer.json; the stub AutoTokenizer implements the same rule):
                        its 4 ids repeated and cut to 7, as PEFT does; not perturbed
  prompt_tuning_opt     tiny-opt (tied lm_head), 5 virtual tokens, perturbed
  prefix_tuning         tiny-llama (grouped-query: PEFT's token_dim becomes 2 kv heads x 8 = 16), 4 virtual tokens
  prefix_tuning_proj    tiny-llama, prefix_projection with encoder_hidden_size 24 (the file holds the projection's output)
  prefix_tuning_opt     tiny-opt, 3 virtual tokens
  p_tuning_mlp          tiny-llama, MLP encoder (encoder_hidden_size 20)
  p_tuning_lstm         tiny-llama, LSTM encoder (2 layers, encoder_hidden_size 12)
Expected: logits (adapter active; prompt tuning and P-tuning cover the virtual tokens too: [3, nvt + 9, 96]),
logits_disabled (the base model), logits_padded (input_ids_padded.json with attention_mask_padded: right padding; only
positions with mask 1 are meaningful), logits_loaded (upstream's from_pretrained of adapter/: the folder holds the
encoder's output, so equal to logits), and training: losses (4 AdamW steps, lr 1e-2, on the whole batch with
labels = input_ids; PEFT prepends -100 labels for virtual tokens) and logits_final (eval, after training).
Everything is seeded and single-threaded, so two runs write the same files.
"""
import argparse
import json
import math
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = {
    "prompt_tuning": ("tiny-llama", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 6}),
    "prompt_tuning_text": ("tiny-llama", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 7,
                                          "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "be kind"}),
    "prompt_tuning_opt": ("tiny-opt", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 5}),
    "prefix_tuning": ("tiny-llama", {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}),
    "prefix_tuning_proj": ("tiny-llama", {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "prefix_projection": True,
                                          "encoder_hidden_size": 24}),
    "prefix_tuning_opt": ("tiny-opt", {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3}),
    "p_tuning_mlp": ("tiny-llama", {"peft_type": "P_TUNING", "num_virtual_tokens": 5, "encoder_hidden_size": 20}),
    "p_tuning_lstm": ("tiny-llama", {"peft_type": "P_TUNING", "num_virtual_tokens": 5, "encoder_hidden_size": 12,
                                     "encoder_reparameterization_type": "LSTM", "encoder_num_layers": 2}),
}

# the character-level tokenizer of prompt_tuning_text: "<s>" = 1 first, then one id per character (a-z: 10.., space: 36)
VOCAB = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(ord("a") + i): 10 + i for i in range(26)}, " ": 36}


def tokenizer_json():
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2)]],
        "normalizer": None, "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": VOCAB, "merges": []},
    }


def setup(oracle):
    sys.path.insert(0, os.path.abspath(oracle))
    import oracle_env  # noqa: F401  (must come before peft)
    import torch
    import torch.nn.functional as F
    import peft
    import peft.peft_model as pm
    import tinyref

    torch.set_num_threads(1)

    class DynamicCache:
        """transformers' DynamicCache, as get_prompt builds it: per layer (key, value), (B, kv_heads, nvt, head_dim)."""

        def __init__(self, data=None, config=None):
            self.layers = [(kv[0], kv[1]) for kv in (data or [])]

        def get_seq_length(self):
            return self.layers[0][0].shape[2] if self.layers else 0

    pm.DynamicCache = DynamicCache

    class Out:
        def __init__(self, logits, loss):
            self.logits, self.loss = logits, loss

    def loss_of(logits, labels):
        if labels is None:
            return None
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100)

    def masks(B, T, P, attention_mask):
        if attention_mask is None:
            attention_mask = torch.ones(B, P + T)
        assert attention_mask.shape == (B, P + T), attention_mask.shape
        causal = torch.arange(P + T)[None, :] <= (P + torch.arange(T))[:, None]  # (T, P+T)
        allowed = causal[None] & attention_mask.bool()[:, None, :]  # (B, T, P+T)
        return attention_mask, allowed[:, None]

    def llama_attention(a, x, pos, allowed, past):
        B, T, _ = x.shape
        q = a.q_proj(x).view(B, T, a.h, a.hd).transpose(1, 2)
        k = a.k_proj(x).view(B, T, a.kvh, a.hd).transpose(1, 2)
        v = a.v_proj(x).view(B, T, a.kvh, a.hd).transpose(1, 2)
        inv = 1.0 / (a.theta ** (torch.arange(0, a.hd, 2, dtype=torch.int64).float() / a.hd))
        fr = pos[:, :, None].float() * inv[None, None, :]  # (B, T, hd/2)
        emb = torch.cat((fr, fr), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]
        q = q * cos + tinyref.rotate_half(q) * sin
        k = k * cos + tinyref.rotate_half(k) * sin
        if past is not None:  # the cache holds earlier keys as they were stored (the prefix: as the encoder made them)
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        rep = a.h // a.kvh
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = q @ k.transpose(2, 3) / math.sqrt(a.hd)
        s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
        p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        return a.o_proj((p @ v).transpose(1, 2).reshape(B, T, -1))

    def llama_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None,
                      position_ids=None, labels=None, **kwargs):
        m = self.model
        x = m.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = past_key_values.layers if past_key_values is not None else None
        P = past[0][0].shape[2] if past else 0
        attention_mask, allowed = masks(B, T, P, attention_mask)
        if position_ids is None:  # transformers: position_ids = cache_position = past length + arange
            position_ids = (P + torch.arange(T))[None].expand(B, T)
        for i, l in enumerate(m.layers):
            x = x + llama_attention(l.self_attn, l.input_layernorm(x), position_ids, allowed, past[i] if past else None)
            x = x + l.mlp(l.post_attention_layernorm(x))
        logits = self.lm_head(m.norm(x))
        return Out(logits, loss_of(logits, labels))

    def opt_attention(a, x, allowed, past):
        B, T, d = x.shape
        q = (a.q_proj(x) * a.hd ** -0.5).view(B, T, a.h, a.hd).transpose(1, 2)
        k = a.k_proj(x).view(B, T, a.h, a.hd).transpose(1, 2)
        v = a.v_proj(x).view(B, T, a.h, a.hd).transpose(1, 2)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        s = (q @ k.transpose(2, 3)).masked_fill(~allowed, torch.finfo(q.dtype).min)
        p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        return a.out_proj((p @ v).transpose(1, 2).reshape(B, T, d))

    def opt_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None,
                    position_ids=None, labels=None, **kwargs):
        d = self.model.decoder
        x = d.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = past_key_values.layers if past_key_values is not None else None
        P = past[0][0].shape[2] if past else 0
        attention_mask, allowed = masks(B, T, P, attention_mask)
        if position_ids is None:  # OPTLearnedPositionalEmbedding: from the mask over past + new, the new part
            position_ids = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1).long()[:, P:]
        x = x + torch.nn.functional.embedding(position_ids + 2, d.embed_positions.weight)
        for i, l in enumerate(d.layers):
            x = x + opt_attention(l.self_attn, l.self_attn_layer_norm(x), allowed, past[i] if past else None)
            x = x + l.fc2(F.relu(l.fc1(l.final_layer_norm(x))))
        logits = self.lm_head(d.final_layer_norm(x))
        return Out(logits, loss_of(logits, labels))

    tinyref.LlamaForCausalLM.forward = llama_forward
    tinyref.OPTForCausalLM.forward = opt_forward
    tinyref.LlamaForCausalLM.get_input_embeddings = lambda self: self.model.embed_tokens
    tinyref.OPTForCausalLM.get_input_embeddings = lambda self: self.model.decoder.embed_tokens
    tinyref.LlamaForCausalLM._tied_weights_keys = ["lm_head.weight"]
    tinyref.OPTForCausalLM._tied_weights_keys = ["lm_head.weight"]
    for cls in (tinyref.LlamaForCausalLM, tinyref.OPTForCausalLM):
        cls.device = property(lambda self: torch.device("cpu"))  # (a transformers model knows its device)
        cls.prepare_inputs_for_generation = lambda self, input_ids, **kw: {"input_ids": input_ids, **kw}

    class AutoTokenizer:
        """The stub of transformers' AutoTokenizer for TEXT init: the rule of tokenizer_json()."""

        @staticmethod
        def from_pretrained(path, **kwargs):
            with open(os.path.join(path, "tokenizer.json")) as f:
                vocab = json.load(f)["model"]["vocab"]
            return lambda text: {"input_ids": [vocab["<s>"]] + [vocab.get(c, vocab["<unk>"]) for c in text]}

    import transformers
    transformers.AutoTokenizer = AutoTokenizer
    return torch, peft, tinyref


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", required=True, help="prepared copy of shared/oracle")
    ap.add_argument("--golden", default=HERE, help="golden folder holding models/ and cases/ (default: this folder)")
    ap.add_argument("--only", default="", metavar="CASE[,CASE]")
    a = ap.parse_args()
    torch, peft, tinyref = setup(a.oracle)
    from safetensors.torch import save_file

    only = [c for c in a.only.split(",") if c]
    for c in only:
        if c not in CASES:
            sys.exit(f"unknown case {c} (known: {', '.join(CASES)})")
    ids = torch.tensor(json.load(open(os.path.join(a.golden, "cases", "lora", "input_ids.json"))))
    B, T = ids.shape
    padded_mask = torch.ones(B, T, dtype=torch.long)
    padded_mask[1, 6:] = 0
    padded_mask[2, 4:] = 0
    padded = ids.masked_fill(padded_mask == 0, 0)

    for seed, (name, (model_name, cfg)) in enumerate(CASES.items()):
        if only and name not in only:
            continue
        folder = os.path.join(a.golden, "cases", name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        mdir = os.path.join(a.golden, "models", model_name)
        cfg = dict(cfg, task_type="CAUSAL_LM")
        if cfg.get("prompt_tuning_init") == "TEXT":
            tdir = os.path.join(folder, "tokenizer")
            os.makedirs(tdir)
            with open(os.path.join(tdir, "tokenizer.json"), "w") as f:
                json.dump(tokenizer_json(), f, indent=2)
                f.write("\n")
            cfg["tokenizer_name_or_path"] = "tokenizer"
        torch.manual_seed(1000 + seed)
        base = tinyref.load_hf(mdir)
        base.eval()
        peft_config = peft.get_peft_config(cfg) if hasattr(peft, "get_peft_config") else None
        cwd = os.getcwd()
        os.chdir(folder)  # (tokenizer_name_or_path is relative to the case folder)
        try:
            model = peft.get_peft_model(base, peft_config)
        finally:
            os.chdir(cwd)
        enc = model.prompt_encoder["default"]
        g = torch.Generator().manual_seed(2000 + seed)
        with torch.no_grad():
            if cfg.get("prompt_tuning_init") != "TEXT":
                for _, p in sorted(enc.named_parameters()):
                    p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))
        enc_state = {k: v.detach().clone().contiguous() for k, v in enc.state_dict().items()}
        model.eval()
        exp = {}
        with torch.no_grad():
            exp["logits"] = model(input_ids=ids).logits
            exp["logits_padded"] = model(input_ids=padded, attention_mask=padded_mask).logits
            with model.disable_adapter():
                exp["logits_disabled"] = model(input_ids=ids).logits
        model.save_pretrained(os.path.join(folder, "adapter"))
        save_file(enc_state, os.path.join(folder, "encoder.safetensors"))
        # upstream's from_pretrained of the folder (inference mode: the table holds the encoder's output)
        base2 = tinyref.load_hf(mdir)
        base2.eval()
        loaded = peft.PeftModel.from_pretrained(base2, os.path.join(folder, "adapter"))
        loaded.eval()
        with torch.no_grad():
            exp["logits_loaded"] = loaded(input_ids=ids).logits
        # training: 4 AdamW steps from the perturbed encoder on the whole batch
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
        save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(folder, "expected.safetensors"))
        pc = model.peft_config["default"]
        facts = {
            "model": model_name, "config": cfg,
            "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
            "encoder_keys": sorted(enc_state),
            "num_virtual_tokens": pc.num_virtual_tokens, "token_dim": pc.token_dim,
            "num_attention_heads": pc.num_attention_heads, "num_layers": pc.num_layers,
            "padded_mask": padded_mask.tolist(),
            "expected": {
                "logits": "eval logits, adapter active (prompt/P-tuning: virtual tokens first)",
                "logits_disabled": "inside disable_adapter(): the base model",
                "logits_padded": "input_ids_padded with padded_mask (right padding)",
                "logits_loaded": "PeftModel.from_pretrained(adapter/)",
                "losses": "4 AdamW steps (lr 1e-2, wd 0.01), labels = input_ids",
                "logits_final": "eval logits after training",
            },
        }
        with open(os.path.join(folder, "case.json"), "w") as f:
            json.dump(facts, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(folder, "input_ids.json"), "w") as f:
            json.dump(ids.tolist(), f)
        with open(os.path.join(folder, "input_ids_padded.json"), "w") as f:
            json.dump(padded.tolist(), f)
        print(name, "->", os.path.relpath(folder, a.golden), [tuple(v.shape) for v in exp.values()])


if __name__ == "__main__":
    main()
