#!/usr/bin/python3
"""A random Llama checkpoint of a given shape, as Hugging Face saves one: config.json and model.safetensors, or
shards plus model.safetensors.index.json. For measuring loads (bench/load-memory.sh); the weights are random
(normal, std 0.02; norms 1), written one tensor at a time, so a model larger than memory can be made.

Llama-3-8B's shape in bf16 shards of 5 GB (16 GB on disk):
  scripts/make-synthetic-checkpoint.py --out /tmp/llama8b --hidden 4096 --layers 32 --heads 32 --kv-heads 8 \\
      --intermediate 14336 --vocab 128256 --dtype bfloat16 --shard-gb 5
"""
import argparse
import json
import os
import struct

import torch

DTYPES = {"float32": (torch.float32, "F32"), "bfloat16": (torch.bfloat16, "BF16")}


def tensors(a):
    """(name, shape) in the order transformers writes them."""
    hd = a.hidden // a.heads
    out = [("model.embed_tokens.weight", [a.vocab, a.hidden])]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", [a.heads * hd, a.hidden]),
                (p + "self_attn.k_proj.weight", [a.kv_heads * hd, a.hidden]),
                (p + "self_attn.v_proj.weight", [a.kv_heads * hd, a.hidden]),
                (p + "self_attn.o_proj.weight", [a.hidden, a.heads * hd]),
                (p + "mlp.gate_proj.weight", [a.intermediate, a.hidden]),
                (p + "mlp.up_proj.weight", [a.intermediate, a.hidden]),
                (p + "mlp.down_proj.weight", [a.hidden, a.intermediate]),
                (p + "input_layernorm.weight", [a.hidden]),
                (p + "post_attention_layernorm.weight", [a.hidden])]
    out.append(("model.norm.weight", [a.hidden]))
    if not a.tied:
        out.append(("lm_head.weight", [a.vocab, a.hidden]))
    return out


def write_shard(path, items, a, gen):
    dtype, name = DTYPES[a.dtype]
    esize = torch.tensor([], dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in items:
        n = esize
        for d in shape:
            n *= d
        header[key] = {"dtype": name, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for key, shape in items:
            if len(shape) == 1:
                t = torch.ones(shape, dtype=dtype)
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
            f.write(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--tied", action="store_true", help="tie lm_head to the embedding (no lm_head.weight)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    ap.add_argument("--shard-gb", type=float, default=0, help="shard size (0: one model.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    gen = torch.Generator().manual_seed(a.seed)
    esize = torch.tensor([], dtype=DTYPES[a.dtype][0]).element_size()
    items = tensors(a)
    shards, cur, size = [], [], 0
    for key, shape in items:
        n = esize
        for d in shape:
            n *= d
        if a.shard_gb > 0 and cur and size + n > a.shard_gb * 1e9:
            shards.append(cur)
            cur, size = [], 0
        cur.append((key, shape))
        size += n
    shards.append(cur)
    total = 0
    if len(shards) == 1:
        total = write_shard(os.path.join(a.out, "model.safetensors"), shards[0], a, gen)
    else:
        weight_map = {}
        for i, s in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            total += write_shard(os.path.join(a.out, fname), s, a, gen)
            weight_map.update({key: fname for key, _ in s})
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": a.vocab,
              "hidden_size": a.hidden, "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
              "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": a.hidden // a.heads,
              "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "hidden_act": "silu",
              "tie_word_embeddings": a.tied, "attention_bias": False, "mlp_bias": False, "torch_dtype": a.dtype,
              "bos_token_id": 1, "eos_token_id": 2}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"{a.out}: {len(items)} tensors, {total / 1e9:.2f} GB in {len(shards)} file(s)")


if __name__ == "__main__":
    main()
