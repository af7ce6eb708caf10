#!/usr/bin/env python3
"""Golden data for the Llama-family variants: Qwen3 (per-head q/k RMSNorm, head_dim apart from hidden/heads),
Mistral (sliding-window attention), Phi-3 (fused qkv_proj / gate_up_proj, sliding window) and the rope_scaling types (linear, dynamic, yarn, llama3,
longrope), and for
GPT-2 (transformers' Conv1D layers, fused c_attn, learned positions, gelu_new, tied lm_head), Phi-3 with a partial rotary
embedding, GPT-NeoX (query_key_value laid out per head, rotary_pct, parallel and sequential residuals), Gemma 2 and Gemma 3
text (scaled embeddings, (1 + w) RMSNorm, four norms per layer, soft-capping, sliding-window layers, Gemma 3's q/k norms and local
rope) and Qwen3 with use_sliding_window (layers from max_window_layers on), each as a tiny random
checkpoint in Hugging Face's layout with a LoRA adapter from upstream PEFT on top (GPT-2 also an IA3 one: gpt2_ia3).

usage: python3 tests/data/golden/gen_arch.py --oracle /tmp/oracle [--only CASE[,CASE]]

The reference below is written from transformers' modeling code (LlamaForCausalLM with Qwen3Attention's q_norm/k_norm,
MistralAttention's sliding-window mask, and modeling_rope_utils' _compute_*_parameters for the rotary frequencies;
GPT2LMHeadModel with pytorch_utils.Conv1D, which stands in for the stubbed transformers class before PEFT is imported,
so that PEFT sees Conv1D layers and sets fan_in_fan_out), eager attention in float32. --oracle is a prepared copy of shared/oracle (its setup.sh run first; use
/usr/bin/python3): PEFT comes from there. Writes models/tiny-<name> and cases/arch_<name>/ (case.json, input_ids.json,
expected.safetensors with logits (the base model) and logits_lora (the adapter in adapter/ active), adapter/).
Everything is seeded and single-threaded, so two runs write the same files.
"""
import argparse
import json
import math
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = {
    "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
}

GPT2 = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 96, "n_embd": 32, "n_layer": 2, "n_head": 4,
    "n_positions": 64, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True, "tie_word_embeddings": True,
    "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
}

NEOX = {
    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": 96, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "rotary_pct": 0.25,
    "rotary_emb_base": 10000, "max_position_embeddings": 64, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
    "hidden_act": "gelu", "attention_bias": True, "tie_word_embeddings": False, "torch_dtype": "float32",
    "bos_token_id": 1, "eos_token_id": 2,
}

CASES = {
    # Qwen3: head_dim 16 (hidden 32 / 4 heads would be 8), q/k norms, attention_bias on q/k/v/o
    "qwen3": dict(BASE, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=16, attention_bias=True,
                  use_sliding_window=False, sliding_window=None, max_window_layers=2),
    # Mistral: a window of 4 over 9 tokens
    "mistral": dict(BASE, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=4),
    # Phi-3: fused qkv_proj and gate_up_proj (PEFT targets them by those names), a sliding window of 5
    "phi3": dict(BASE, architectures=["Phi3ForCausalLM"], model_type="phi3", sliding_window=5, partial_rotary_factor=1.0,
                 original_max_position_embeddings=64, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                 pad_token_id=0),
    "rope_linear": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama",
                        rope_scaling={"type": "linear", "factor": 2.5}),
    # dynamic NTK: positions past max_position_embeddings (6) change the base
    "rope_dynamic": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", max_position_embeddings=6,
                         rope_scaling={"rope_type": "dynamic", "factor": 3.0}),
    "rope_yarn": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", rope_theta=500.0,
                      max_position_embeddings=16,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 8.0, "beta_slow": 0.5}),
    "rope_llama3": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", rope_theta=500.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    # GPT-2: GPT2Config's own names (n_embd, ...), n_inner null (4 * n_embd), lm_head tied to wte
    "gpt2": GPT2,
    "gpt2_ia3": GPT2,
    # Phi-3 rotating half of each head (partial_rotary_factor 0.5)
    "phi3_partial": dict(BASE, architectures=["Phi3ForCausalLM"], model_type="phi3", partial_rotary_factor=0.5,
                         original_max_position_embeddings=64, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                         pad_token_id=0),
    # GPT-NeoX: a quarter of each head rotates (rotary_pct 0.25 of 8: 2), the parallel residual; and half with the
    # sequential residual
    "gpt_neox": dict(NEOX),
    "gpt_neox_seq": dict(NEOX, rotary_pct=0.5, use_parallel_residual=False, rotary_emb_base=500.0),
    # Gemma 2: head_dim 16 apart from hidden/heads, query_pre_attn_scalar 24, both soft-caps small enough to act, layer 0
    # sliding (window 4 over 9 tokens), layer 1 global, tied lm_head
    "gemma2": dict(BASE, architectures=["Gemma2ForCausalLM"], model_type="gemma2", head_dim=16, hidden_act=None,
                   hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                   final_logit_softcapping=3.0, sliding_window=4, tie_word_embeddings=True, attention_bias=False),
    # Gemma 3 (text): q/k norms, 3 layers with sliding_window_pattern 3 (layers 0 and 1 slide, with rope theta 10000 and
    # no scaling; layer 2 global: theta 1e6 with linear scaling 2), no soft-caps
    "gemma3": dict(BASE, architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", num_hidden_layers=3, head_dim=16,
                   hidden_act=None, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16,
                   attn_logit_softcapping=None, final_logit_softcapping=None, sliding_window=4, sliding_window_pattern=3,
                   rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
                   tie_word_embeddings=True, attention_bias=False),
    # Qwen3 with use_sliding_window: layers from max_window_layers (1) on slide (window 4)
    "qwen3_sliding": dict(BASE, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=16, attention_bias=True,
                          use_sliding_window=True, sliding_window=4, max_window_layers=1),
    # LongRoPE: 9 tokens past original_max_position_embeddings 8 use long_factor; with 16 they use short_factor (both:
    # attention factor from max_position_embeddings / original)
    "rope_longrope": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", max_position_embeddings=32,
                          original_max_position_embeddings=8,
                          rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 2.1, 3.0],
                                        "long_factor": [1.5, 2.8, 4.4, 7.9]}),
    "rope_longrope_short": dict(BASE, architectures=["LlamaForCausalLM"], model_type="llama", max_position_embeddings=32,
                                original_max_position_embeddings=16,
                                rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 2.1, 3.0],
                                              "long_factor": [1.5, 2.8, 4.4, 7.9]}),
}

# the adapter of each case (LoRA on the attention and MLP projections unless listed)
ADAPTERS = {
    "phi3": ("lora", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "gpt2": ("lora", ["c_attn", "c_proj", "c_fc"]),
    "gpt2_ia3": ("ia3", ["c_attn", "mlp.c_proj", "c_fc"]),
    "phi3_partial": ("lora", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "gpt_neox": ("lora", ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
    "gpt_neox_seq": ("lora", ["query_key_value", "dense_4h_to_h"]),
}


def build_reference(torch, Conv1D):
    from torch import nn
    import torch.nn.functional as F

    class AttrDict(dict):
        def __getattr__(self, k):
            try:
                return self[k]
            except KeyError:
                raise AttributeError(k) from None

        def to_dict(self):
            return dict(self)

    class RMSNorm(nn.Module):
        def __init__(self, d, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))
            self.eps = eps

        def forward(self, x):
            dt = x.dtype
            x = x.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * x.to(dt)

    class GemmaRMSNorm(nn.Module):
        """Gemma's: (1 + w), multiplied in float32 before the cast back."""

        def __init__(self, d, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(d))
            self.eps = eps

        def forward(self, x):
            out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
            return (out * (1.0 + self.weight.float())).type_as(x)

    def is_gemma(c):
        return c["model_type"] in ("gemma2", "gemma3_text")

    def norm_of(c, d):
        return GemmaRMSNorm(d, c["rms_norm_eps"]) if is_gemma(c) else RMSNorm(d, c["rms_norm_eps"])

    def slides(c, i):
        """transformers' layer_types: whether layer i has the sliding window."""
        if not c.get("sliding_window"):
            return False
        if c["model_type"] == "gemma2":
            return (i + 1) % 2 != 0
        if c["model_type"] == "gemma3_text":
            return (i + 1) % c["sliding_window_pattern"] != 0
        if c["model_type"] in ("qwen2", "qwen3"):
            return bool(c.get("use_sliding_window")) and i >= c["max_window_layers"]
        return c["model_type"] in ("mistral", "phi3")

    def head_dim_of(c):
        return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]

    def rot_dim(c):
        """The rotated features of a head: int(head_dim * partial_rotary_factor) (GPT-NeoX: rotary_pct)."""
        if c["model_type"] == "gpt_neox":
            return int(head_dim_of(c) * c["rotary_pct"])
        return int(head_dim_of(c) * c.get("partial_rotary_factor", 1.0))

    def default_inv_freq(c):
        dim = rot_dim(c)
        return 1.0 / (c["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

    def rope_parameters(c, seq_len):
        """inv_freq and attention factor as modeling_rope_utils computes them (seq_len: max position + 1, a tensor)."""
        rs = c.get("rope_scaling") or {}
        kind = rs.get("rope_type", rs.get("type", "default"))
        dim = rot_dim(c)
        if kind == "default":
            return default_inv_freq(c), 1.0
        if kind == "longrope":  # _compute_longrope_parameters, with the dynamic update's choice of factors
            if "original_max_position_embeddings" in c:
                orig = c["original_max_position_embeddings"]
                fac = c["max_position_embeddings"] / orig
            else:
                orig, fac = c["max_position_embeddings"], rs.get("factor")
            att = rs.get("attention_factor")
            if att is None:
                att = 1.0 if fac <= 1.0 else math.sqrt(1 + math.log(fac) / math.log(orig))
            ext = torch.tensor(rs["long_factor"] if bool(seq_len > orig) else rs["short_factor"], dtype=torch.float32)
            shape = torch.arange(0, dim, 2, dtype=torch.int64, device=None).float() / dim
            return 1.0 / (ext * c["rope_theta"] ** shape), att
        factor = rs["factor"]
        if kind == "linear":
            return default_inv_freq(c) / factor, 1.0
        if kind == "dynamic":
            maxp = c["max_position_embeddings"]
            if not bool(seq_len > maxp):  # LlamaRotaryEmbedding keeps the original frequencies up to maxp
                return default_inv_freq(c), 1.0
            base = c["rope_theta"] * ((factor * seq_len / maxp) - (factor - 1)) ** (dim / (dim - 2))
            return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0
        if kind == "llama3":
            inv = default_inv_freq(c)
            low, high, old = rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
            low_wavelen, high_wavelen = old / low, old / high
            wavelen = 2 * math.pi / inv
            inv_l = torch.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
            medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
            return torch.where(medium, smoothed, inv_l), 1.0
        if kind == "yarn":
            base, maxp = c["rope_theta"], c["max_position_embeddings"]
            att = rs.get("attention_factor")
            if att is None:
                att = 0.1 * math.log(factor) + 1.0
            beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

            def corr_dim(rot):
                return (dim * math.log(maxp / (rot * 2 * math.pi))) / (2 * math.log(base))

            lo = max(math.floor(corr_dim(beta_fast)), 0)
            hi = min(math.ceil(corr_dim(beta_slow)), dim - 1)
            if lo == hi:
                hi += 0.001
            ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
            pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
            extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
            ef = 1 - ramp
            return inter * (1 - ef) + extra * ef, att
        raise ValueError(kind)

    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    def rope(x, cos, sin):
        """Phi3's / GPTNeoX's apply_rotary_pos_emb: the first cos.shape[-1] features rotate, the rest pass."""
        r = cos.shape[-1]
        x_rot, x_pass = x[..., :r], x[..., r:]
        return torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1)

    class Attention(nn.Module):
        def __init__(self, c, i):
            super().__init__()
            self.c, self.i = c, i
            self.h, self.kvh, self.hd = c["num_attention_heads"], c["num_key_value_heads"], head_dim_of(c)
            d, bias = c["hidden_size"], c.get("attention_bias", False)
            if c["model_type"] == "phi3":  # Phi3Attention: one projection, split as q | k | v
                self.qkv_proj = nn.Linear(d, (self.h + 2 * self.kvh) * self.hd, bias=False)
            else:
                self.q_proj = nn.Linear(d, self.h * self.hd, bias=bias)
                self.k_proj = nn.Linear(d, self.kvh * self.hd, bias=bias)
                self.v_proj = nn.Linear(d, self.kvh * self.hd, bias=bias)
            self.o_proj = nn.Linear(self.h * self.hd, d, bias=bias)
            if c["model_type"] in ("qwen3", "gemma3_text"):
                self.q_norm = norm_of(c, self.hd)
                self.k_norm = norm_of(c, self.hd)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            if self.c["model_type"] == "phi3":
                qkv = self.qkv_proj(x)
                qp, kp = self.h * self.hd, self.kvh * self.hd
                q, k, v = qkv[..., :qp], qkv[..., qp:qp + kp], qkv[..., qp + kp:]
                q, k = q.reshape(B, T, self.h, self.hd), k.reshape(B, T, self.kvh, self.hd)
                v = v.reshape(B, T, self.kvh, self.hd).transpose(1, 2)
            else:
                q = self.q_proj(x).view(B, T, self.h, self.hd)
                k = self.k_proj(x).view(B, T, self.kvh, self.hd)
                v = self.v_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
            if self.c["model_type"] in ("qwen3", "gemma3_text"):
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            rep = self.h // self.kvh
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            if is_gemma(self.c):  # query_pre_attn_scalar, then the soft-cap before the mask
                s = (q @ k.transpose(2, 3)) * self.c["query_pre_attn_scalar"] ** -0.5
                if self.c.get("attn_logit_softcapping"):
                    cap = self.c["attn_logit_softcapping"]
                    s = torch.tanh(s / cap) * cap
            else:
                s = q @ k.transpose(2, 3) / math.sqrt(self.hd)
            qi, ki = torch.arange(T)[:, None], torch.arange(T)[None, :]
            allowed = ki <= qi
            if slides(self.c, self.i):
                allowed = allowed & (ki > qi - self.c["sliding_window"])
            s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
            p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
            return self.o_proj((p @ v).transpose(1, 2).reshape(B, T, -1))

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            d, i = c["hidden_size"], c["intermediate_size"]
            self.fused = c["model_type"] == "phi3"
            self.gemma = is_gemma(c)
            if self.fused:  # Phi3MLP: gate | up in one projection
                self.gate_up_proj = nn.Linear(d, 2 * i, bias=False)
            else:
                self.gate_proj = nn.Linear(d, i, bias=False)
                self.up_proj = nn.Linear(d, i, bias=False)
            self.down_proj = nn.Linear(i, d, bias=False)

        def forward(self, x):
            if self.fused:
                gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
                return self.down_proj(up * F.silu(gate))
            if self.gemma:  # gelu_pytorch_tanh
                return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self, c, i):
            super().__init__()
            self.gemma = is_gemma(c)
            self.self_attn = Attention(c, i)
            self.mlp = MLP(c)
            self.input_layernorm = norm_of(c, c["hidden_size"])
            self.post_attention_layernorm = norm_of(c, c["hidden_size"])
            if self.gemma:
                self.pre_feedforward_layernorm = norm_of(c, c["hidden_size"])
                self.post_feedforward_layernorm = norm_of(c, c["hidden_size"])

        def forward(self, x, cos, sin):
            if self.gemma:  # a norm before and after attention and MLP each
                x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin))
                return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Model(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c
            self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
            self.layers = nn.ModuleList([Layer(c, i) for i in range(c["num_hidden_layers"])])
            self.norm = norm_of(c, c["hidden_size"])

        def forward(self, ids):
            pos = torch.arange(ids.shape[1])[None, :]

            def cos_sin(c):
                inv, att = rope_parameters(c, torch.max(pos) + 1)
                freqs = (inv[None, :, None].float() @ pos[:, None, :].float()).transpose(1, 2)
                emb = torch.cat((freqs, freqs), dim=-1)
                return (emb.cos() * att)[:, None], (emb.sin() * att)[:, None]

            cs = cos_sin(self.c)
            # Gemma 3's sliding layers: rope_local_base_freq, no scaling
            local = cos_sin(dict(self.c, rope_theta=self.c["rope_local_base_freq"], rope_scaling=None)) \
                if self.c.get("rope_local_base_freq") else cs
            x = self.embed_tokens(ids)
            if is_gemma(self.c):  # times sqrt(hidden_size), in the embeddings' dtype
                x = x * torch.tensor(self.c["hidden_size"] ** 0.5, dtype=x.dtype)
            for i, layer in enumerate(self.layers):
                x = layer(x, *(local if slides(self.c, i) else cs))
            return self.norm(x)

    class ForCausalLM(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.config = AttrDict(c)
            self.model = Model(c)
            self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
            if is_gemma(c) and c.get("tie_word_embeddings"):
                self.lm_head.weight = self.model.embed_tokens.weight

        def forward(self, input_ids, attention_mask=None, **kwargs):
            logits = self.lm_head(self.model(input_ids))
            if self.config.get("final_logit_softcapping"):
                cap = self.config["final_logit_softcapping"]
                logits = torch.tanh(logits / cap) * cap
            return logits

        def prepare_inputs_for_generation(self, input_ids, **kwargs):
            return {"input_ids": input_ids}

        def get_output_embeddings(self):
            return self.lm_head

        def get_input_embeddings(self):
            return self.model.embed_tokens

    class NeoXAttention(nn.Module):
        def __init__(self, c):
            super().__init__()
            d = c["hidden_size"]
            self.h, self.hd = c["num_attention_heads"], d // c["num_attention_heads"]
            self.query_key_value = nn.Linear(d, 3 * d, bias=c.get("attention_bias", True))
            self.dense = nn.Linear(d, d, bias=c.get("attention_bias", True))

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            qkv = self.query_key_value(x).view(B, T, -1, 3 * self.hd).transpose(1, 2)
            q, k, v = qkv.chunk(3, dim=-1)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            s = (q @ k.transpose(2, 3)) * self.hd ** -0.5
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
            s = s.masked_fill(~causal, torch.finfo(s.dtype).min)
            p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
            return self.dense((p @ v).transpose(1, 2).reshape(B, T, -1))

    class NeoXMLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dense_h_to_4h = nn.Linear(c["hidden_size"], c["intermediate_size"])
            self.dense_4h_to_h = nn.Linear(c["intermediate_size"], c["hidden_size"])

        def forward(self, x):
            return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))

    class NeoXLayer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.parallel = c["use_parallel_residual"]
            self.input_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
            self.post_attention_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
            self.attention = NeoXAttention(c)
            self.mlp = NeoXMLP(c)

        def forward(self, x, cos, sin):
            a = self.attention(self.input_layernorm(x), cos, sin)
            if self.parallel:
                return self.mlp(self.post_attention_layernorm(x)) + a + x
            a = a + x
            return self.mlp(self.post_attention_layernorm(a)) + a

    class NeoXModel(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c
            self.embed_in = nn.Embedding(c["vocab_size"], c["hidden_size"])
            self.layers = nn.ModuleList([NeoXLayer(c) for _ in range(c["num_hidden_layers"])])
            self.final_layer_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

        def forward(self, ids):
            pos = torch.arange(ids.shape[1])[None, :]
            dim = rot_dim(self.c)
            inv = 1.0 / (self.c["rotary_emb_base"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
            freqs = (inv[None, :, None].float() @ pos[:, None, :].float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[:, None], emb.sin()[:, None]
            x = self.embed_in(ids)
            for layer in self.layers:
                x = layer(x, cos, sin)
            return self.final_layer_norm(x)

    class NeoXForCausalLM(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.config = AttrDict(c)
            self.gpt_neox = NeoXModel(c)
            self.embed_out = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

        def forward(self, input_ids, attention_mask=None, **kwargs):
            return self.embed_out(self.gpt_neox(input_ids))

        def prepare_inputs_for_generation(self, input_ids, **kwargs):
            return {"input_ids": input_ids}

        def get_output_embeddings(self):
            return self.embed_out

        def get_input_embeddings(self):
            return self.gpt_neox.embed_in

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    class GPT2Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            d = c["n_embd"]
            self.h = c["n_head"]
            self.c_attn = Conv1D(3 * d, d)
            self.c_proj = Conv1D(d, d)

        def forward(self, x):
            B, T, D = x.shape
            q, k, v = self.c_attn(x).split(D, dim=2)
            q, k, v = [t.view(B, T, self.h, D // self.h).transpose(1, 2) for t in (q, k, v)]
            w = q @ k.transpose(-1, -2) / torch.full([], v.size(-1) ** 0.5, dtype=q.dtype)
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
            w = torch.where(causal, w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype))
            p = F.softmax(w, dim=-1)
            return self.c_proj((p @ v).transpose(1, 2).reshape(B, T, D))

    class GPT2MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            d = c["n_embd"]
            inner = c["n_inner"] or 4 * d
            self.c_fc = Conv1D(inner, d)
            self.c_proj = Conv1D(d, inner)

        def forward(self, x):
            return self.c_proj(gelu_new(self.c_fc(x)))

    class GPT2Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            d, eps = c["n_embd"], c["layer_norm_epsilon"]
            self.ln_1 = nn.LayerNorm(d, eps=eps)
            self.attn = GPT2Attention(c)
            self.ln_2 = nn.LayerNorm(d, eps=eps)
            self.mlp = GPT2MLP(c)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT2Model(nn.Module):
        def __init__(self, c):
            super().__init__()
            d = c["n_embd"]
            self.wte = nn.Embedding(c["vocab_size"], d)
            self.wpe = nn.Embedding(c["n_positions"], d)
            self.h = nn.ModuleList([GPT2Block(c) for _ in range(c["n_layer"])])
            self.ln_f = nn.LayerNorm(d, eps=c["layer_norm_epsilon"])

        def forward(self, ids):
            pos = torch.arange(ids.shape[1])[None, :]
            x = self.wte(ids) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.ln_f(x)

    class GPT2LMHeadModel(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.config = AttrDict(c)
            self.transformer = GPT2Model(c)
            self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied

        def forward(self, input_ids, attention_mask=None, **kwargs):
            return self.lm_head(self.transformer(input_ids))

        def prepare_inputs_for_generation(self, input_ids, **kwargs):
            return {"input_ids": input_ids}

        def get_output_embeddings(self):
            return self.lm_head

        def get_input_embeddings(self):
            return self.transformer.wte

    return lambda c: {"gpt2": GPT2LMHeadModel, "gpt_neox": NeoXForCausalLM}.get(c["model_type"], ForCausalLM)(c)


def make_conv1d(torch):
    """transformers.pytorch_utils.Conv1D: y = x W + b, W (in, out)."""
    from torch import nn

    class Conv1D(nn.Module):
        def __init__(self, nf, nx):
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.empty(nx, nf))
            self.bias = nn.Parameter(torch.zeros(nf))
            nn.init.normal_(self.weight, std=0.02)

        def forward(self, x):
            size_out = x.size()[:-1] + (self.nf,)
            x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
            return x.view(size_out)

    return Conv1D


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT writes target_modules (a set) in hash order: fix the hash seed so adapter_config.json is the same each run
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", required=True, help="prepared copy of shared/oracle")
    ap.add_argument("--golden", default=HERE, help="golden folder holding models/ and cases/ (default: this folder)")
    ap.add_argument("--only", default="", metavar="CASE[,CASE]")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.oracle))
    import oracle_env  # noqa: F401  (must come before peft)
    import torch
    import transformers.pytorch_utils as pytorch_utils  # a stub module: give it the real Conv1D before PEFT imports it
    Conv1D = make_conv1d(torch)
    pytorch_utils.Conv1D = Conv1D
    from peft import IA3Config, LoraConfig, get_peft_model
    for mod in list(sys.modules.values()):  # modules that bound the stub's Conv1D before (oracle_env imports PEFT)
        if getattr(mod, "__name__", "").startswith("peft") and getattr(mod, "Conv1D", None) is not None:
            mod.Conv1D = Conv1D
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    ForCausalLM = build_reference(torch, Conv1D)
    only = [x for x in a.only.split(",") if x]
    for i, (name, config) in enumerate(CASES.items()):
        if only and name not in only:
            continue
        seed = 900 + 10 * i
        torch.manual_seed(seed)
        model = ForCausalLM(config)
        with torch.no_grad():  # visible, non-trivial norm weights and biases
            for n, p in model.named_parameters():
                if n.endswith("norm.weight") or (".ln_" in n and n.endswith(".weight")):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif n.endswith(".bias"):
                    p.copy_(0.02 * torch.randn_like(p))
                elif p.dim() == 2:
                    p.copy_(0.08 * torch.randn_like(p))
        mdir = os.path.join(a.golden, "models", f"tiny-{name.replace('_', '-')}")
        os.makedirs(mdir, exist_ok=True)
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        if config.get("tie_word_embeddings"):
            sd.pop("lm_head.weight", None)  # tied: not in the checkpoint (as transformers saves it)
        save_file(sd, os.path.join(mdir, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(mdir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        ids = torch.randint(3, 96, (3, 9), generator=torch.Generator().manual_seed(seed + 1))
        model.eval()
        with torch.no_grad():
            exp = {"logits": model(ids).detach().clone()}
        kind, targets = ADAPTERS.get(name, ("lora", ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]))
        if kind == "ia3":
            pm = get_peft_model(model, IA3Config(target_modules=targets, feedforward_modules=["mlp.c_proj"],
                                                 init_ia3_weights=False))
        else:
            pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        pm.eval()
        folder = os.path.join(a.golden, "cases", f"arch_{name}")
        shutil.rmtree(folder, ignore_errors=True)
        pm.save_pretrained(os.path.join(folder, "adapter"))
        with torch.no_grad():
            exp["logits_lora"] = pm(ids).detach().clone()
        with open(os.path.join(folder, "case.json"), "w") as f:
            json.dump({"model": os.path.relpath(mdir, a.golden), "adapter": "adapter",
                       "what": "eval-mode logits [batch, seq, vocab] float32 for input_ids.json: logits (the base "
                               "model), logits_lora (the LoRA adapter in adapter/ active)"}, f, indent=2)
            f.write("\n")
        with open(os.path.join(folder, "input_ids.json"), "w") as f:
            json.dump(ids.tolist(), f)
        save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(folder, "expected.safetensors"))
        print(name, "->", os.path.relpath(mdir, a.golden), os.path.relpath(folder, a.golden))


if __name__ == "__main__":
    main()
