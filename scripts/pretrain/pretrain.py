#!/usr/bin/python3
"""Pretrain the small default model of peft.cpp on the King James Bible.

    /usr/bin/python3 scripts/pretrain/pretrain.py --out models/kjv-llama [--steps N] [--seed S]

Uses only what Debian ships: python3-torch (1.13, CPU), the `bible` program (package bible-kjv) and its
text (bible-kjv-text). It
  1. extracts the whole KJV with `bible -f gen1:1-rev22:21` (one verse per line), drops the verse
     references and keeps one verse per line, one chapter per document;
  2. holds out every 50th chapter as the validation split;
  3. trains a byte-level BPE tokenizer (bpe.py) on the training chapters;
  4. pretrains a small Llama (the forward below follows Hugging Face's LlamaForCausalLM: RMSNorm,
     rotate_half rotary embeddings, SiLU-gated MLP, causal attention, tied embeddings) in float32;
  5. writes a Hugging Face checkpoint folder: config.json, generation_config.json, model.safetensors
     (bfloat16), tokenizer.json, tokenizer_config.json and a README.md model card.

Everything is seeded and the data order is fixed, so the same command gives the same folder (on the
same torch build and thread count: float sums can differ across BLAS builds).
"""

import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PAD, BOS, EOS, END = "<pad>", "<s>", "</s>", "<|end|>"
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
VAL_EVERY = 50  # every 50th chapter (0, 50, 100, ...) is validation


# ---------------------------------------------------------------- data

def extract_kjv(bible_cmd="bible"):
    """[(book, chapter, [verse texts])] for the whole KJV, in canonical order."""
    out = subprocess.run([bible_cmd, "-f", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters = []
    ref = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
    for line in out.splitlines():
        m = ref.match(line)
        if not m:
            raise ValueError(f"unexpected line from bible: {line!r}")
        book, chap, text = m.group(1), int(m.group(2)), " ".join(m.group(4).split())
        if not chapters or chapters[-1][0] != book or chapters[-1][1] != chap:
            chapters.append((book, chap, []))
        chapters[-1][2].append(text)
    nverses = sum(len(c[2]) for c in chapters)
    if len(chapters) != 1189 or nverses != 31102:
        raise ValueError(f"expected 1189 chapters and 31102 verses, got {len(chapters)} and {nverses}")
    return chapters


def chapter_text(verses):
    return "\n".join(verses)


def encode_chapter(enc, verses):
    """Token ids per verse; joined they equal enc.encode(chapter_text(verses)) (checked on a sample)."""
    return [enc.encode(v + ("\n" if i + 1 < len(verses) else "")) for i, v in enumerate(verses)]


def build_stream(chapter_ids, bos, eos):
    """Training stream: <s> verse... </s> per chapter; returns (tokens, verse start positions)."""
    tokens, starts = [], []
    for verses in chapter_ids:
        tokens.append(bos)
        for v in verses:
            starts.append(len(tokens))
            tokens.extend(v)
        tokens.append(eos)
    return torch.tensor(tokens, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def build_val(chapter_ids, bos, eos, seq_len):
    """Validation sequences of at most seq_len+1 tokens: <s> then whole verses, </s> after a chapter's last."""
    seqs = []
    for verses in chapter_ids:
        cur = [bos]
        for i, v in enumerate(verses):
            v = v + ([eos] if i + 1 == len(verses) else [])
            if len(cur) + len(v) > seq_len + 1 and len(cur) > 1:
                seqs.append(cur)
                cur = [bos]
            cur.extend(v[:seq_len])
        seqs.append(cur)
    return seqs


# ---------------------------------------------------------------- model (Hugging Face Llama semantics)

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions, head_dim, theta, dtype):
    # as transformers' LlamaRotaryEmbedding: inv_freq in float32, emb = cat(freqs, freqs)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kvh, self.dh = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        d = c["hidden_size"]
        self.q_proj = nn.Linear(d, self.h * self.dh, bias=False)
        self.k_proj = nn.Linear(d, self.kvh * self.dh, bias=False)
        self.v_proj = nn.Linear(d, self.kvh * self.dh, bias=False)
        self.o_proj = nn.Linear(self.h * self.dh, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.h, self.dh).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kvh, self.dh).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kvh, self.dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kvh != self.h:
            k = k.repeat_interleave(self.h // self.kvh, dim=1)
            v = v.repeat_interleave(self.h // self.kvh, dim=1)
        att = (q * (1.0 / math.sqrt(self.dh))) @ k.transpose(-1, -2)
        att = torch.softmax(att.masked_fill_(mask, float("-inf")), dim=-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, s, self.h * self.dh))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(d, i, bias=False)
        self.up_proj = nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([DecoderLayer(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        assert c["tie_word_embeddings"]
        self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, gen):
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                continue
            with torch.no_grad():
                s = std
                if name.endswith(("o_proj.weight", "down_proj.weight")):  # residual outputs, as GPT-2 scales them
                    s = std / math.sqrt(2 * self.c["num_hidden_layers"])
                p.copy_(torch.randn(p.shape, generator=gen) * s)

    def forward(self, ids):
        s = ids.shape[1]
        h = self.model.embed_tokens(ids)
        cos, sin = rope_cos_sin(torch.arange(s), self.c["head_dim"], self.c["rope_theta"], h.dtype)
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)  # True above the diagonal: masked
        for layer in self.model.layers:
            h = layer(h, cos, sin, mask)
        return self.lm_head(self.model.norm(h))


# ---------------------------------------------------------------- safetensors

ST_DTYPES = {torch.bfloat16: ("BF16", torch.int16), torch.float32: ("F32", torch.float32)}


def save_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        st_dtype, view_as = ST_DTYPES[t.dtype]
        data = t.view(view_as).numpy().tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = metadata or {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = bytearray(raw[8 + n + a:8 + n + b])
        if info["dtype"] == "BF16":
            t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16)
        elif info["dtype"] == "F32":
            t = torch.frombuffer(buf, dtype=torch.float32)
        else:
            raise ValueError(f"{path}: dtype {info['dtype']} not handled")
        out[name] = t.reshape(info["shape"]).clone()
    return out


def load_model(folder, dtype=torch.float32):
    """The model in `folder` (written by this script) in this script's Llama implementation."""
    with open(os.path.join(folder, "config.json")) as f:
        c = json.load(f)
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    m = LlamaForCausalLM(c)
    sd = load_safetensors(os.path.join(folder, "model.safetensors"))
    missing = set(k for k in m.state_dict() if k != "lm_head.weight") - set(sd)
    assert not missing, missing
    m.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=False)
    return m.to(dtype).eval()


# ---------------------------------------------------------------- training

def lr_at(step, total, peak, warmup, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def evaluate(model, seqs, batch=32):
    """Mean token cross-entropy over the validation sequences (all predicted tokens count once)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch):
        chunk = seqs[i:i + batch]
        n = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), n, dtype=torch.long)
        tgt = torch.full((len(chunk), n - 1), -100, dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s)
            tgt[j, :len(s) - 1] = torch.tensor(s[1:])
        logits = model(ids[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100,
                                 reduction="sum").item()
        count += (tgt != -100).sum().item()
    model.train()
    return total / count


@torch.no_grad()
def sample(model, enc, prompt, bos, eos, n=40):
    ids = [bos] + enc.encode(prompt)
    model.eval()
    for _ in range(n):
        nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
        if nxt == eos:
            break
        ids.append(nxt)
    model.train()
    return enc.decode(ids[1:])


def main():
    # Large tensors come from mmap and go back to the kernel on free, so every step page-faults its
    # activations in again; keeping them in the heap makes this CPU training ~2x faster.
    if os.environ.get("MALLOC_MMAP_MAX_") is None:
        env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint folder to write (e.g. models/kjv-llama)")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate-size", type=int, default=704)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--log", default=None, help="progress log file (default: OUT/pretrain-log.txt)")
    ap.add_argument("--bible", default="bible", help="the bible program (package bible-kjv)")
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many training steps, write nothing")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out.rstrip("/")
    log_path = args.log or os.path.join(out, "pretrain-log.txt")
    if not args.time_steps:
        os.makedirs(out, exist_ok=True)
    logf = open(log_path, "w") if not args.time_steps else None
    t_start = time.time()

    def log(msg):
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        print(line, flush=True)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    log(f"pretrain.py {' '.join(sys.argv[1:])}  (torch {torch.__version__}, {args.threads} threads)")

    # 1-2. text and split
    chapters = extract_kjv(args.bible)
    train_ch = [c for i, c in enumerate(chapters) if i % VAL_EVERY != 0]
    val_ch = [c for i, c in enumerate(chapters) if i % VAL_EVERY == 0]
    train_chars = sum(len(chapter_text(c[2])) for c in train_ch)
    log(f"KJV: {len(chapters)} chapters; train {len(train_ch)} ({train_chars} chars), validation {len(val_ch)}")

    # 3. tokenizer
    n_merges_target = args.vocab_size
    vocab, merges = bpe.train_bpe((chapter_text(c[2]) for c in train_ch), n_merges_target, SPECIAL_TOKENS, log=log)
    enc = bpe.Encoder(vocab, merges)
    bos, eos, pad = vocab[BOS], vocab[EOS], vocab[PAD]
    train_ids = [encode_chapter(enc, c[2]) for c in train_ch]
    val_ids = [encode_chapter(enc, c[2]) for c in val_ch]
    for c, ids in list(zip(train_ch, train_ids))[:40:7]:  # per-verse encoding == whole-chapter encoding
        assert sum(ids, []) == enc.encode(chapter_text(c[2]))
    stream, starts = build_stream(train_ids, bos, eos)
    val_seqs = build_val(val_ids, bos, eos, args.seq_len)
    n_val_tokens = sum(len(s) - 1 for s in val_seqs)
    log(f"tokens: train {len(stream)} ({train_chars / len(stream):.2f} chars/token), validation {n_val_tokens} "
        f"in {len(val_seqs)} sequences")

    # 4. model
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(vocab),
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden_size // args.heads,
        "max_position_embeddings": args.seq_len,  # the positions it was trained on
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "bos_token_id": bos,
        "eos_token_id": [eos, vocab[END]],
        "pad_token_id": pad,
        "use_cache": True,
    }
    gen = torch.Generator().manual_seed(args.seed)
    model = LlamaForCausalLM(cfg)
    model.init_weights(gen)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters ({n_params - cfg['vocab_size'] * cfg['hidden_size']} without the embedding)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    data_gen = torch.Generator().manual_seed(args.seed + 1000)
    usable = starts[starts + args.seq_len <= len(stream)]
    L = args.seq_len
    steps = args.time_steps or args.steps
    model.train()
    history = []
    t_train = time.time()
    ema = None
    for step in range(steps):
        pick = usable[torch.randint(len(usable), (args.batch_size,), generator=data_gen)]
        rows = torch.stack([stream[s:s + L] for s in pick.tolist()])
        seq = torch.cat([torch.full((args.batch_size, 1), bos, dtype=torch.long), rows], dim=1)
        x, y = seq[:, :-1], seq[:, 1:]
        lr = lr_at(step, steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step % 10 == 0 or step + 1 == steps:
            el = time.time() - t_train
            log(f"step {step + 1}/{steps} loss {lv:.4f} (ema {ema:.4f}) lr {lr:.2e} gnorm {gnorm:.2f} "
                f"{el / (step + 1):.2f}s/step, eta {el / (step + 1) * (steps - step - 1) / 60:.1f} min")
        if args.time_steps:
            continue
        if (step + 1) % args.eval_every == 0 or step + 1 == steps:
            vl = evaluate(model, val_seqs)
            history.append({"step": step + 1, "train_loss_ema": round(ema, 4), "val_loss": round(vl, 4)})
            log(f"eval step {step + 1}: validation loss {vl:.4f} (perplexity {math.exp(vl):.1f})")
            log("sample: " + repr(sample(model, enc, "And God said", bos, eos)))
    train_time = time.time() - t_train
    if args.time_steps:
        log(f"timed {steps} steps: {train_time / steps:.2f} s/step")
        return

    # 5. write the folder
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_safetensors(os.path.join(out, "model.safetensors"), {k: v.to(torch.bfloat16) for k, v in sd.items()})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    bpe.write_json(os.path.join(out, "generation_config.json"),
                   {"bos_token_id": bos, "eos_token_id": [eos, vocab[END]], "pad_token_id": pad,
                    "max_new_tokens": 64})
    bpe.write_json(os.path.join(out, "tokenizer.json"),
                   bpe.tokenizer_json(vocab, merges, SPECIAL_TOKENS, bos_token=BOS))
    bpe.write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
        "add_bos_token": True, "add_eos_token": False,
        "additional_special_tokens": SPECIAL_TOKENS[3:],
        "model_max_length": cfg["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    })

    # final numbers on the bf16 weights as written
    written = load_model(out)
    val_bf16 = evaluate(written, val_seqs)
    final = {"steps": steps, "train_loss_ema": round(ema, 4), "val_loss_fp32": history[-1]["val_loss"],
             "val_loss_bf16": round(val_bf16, 4), "train_minutes": round(train_time / 60, 1)}
    log(f"final: {final}")
    samples = {p: sample(written, enc, p, bos, eos) for p in ["And God said", "In the beginning", "The LORD is my"]}
    write_card(out, args, cfg, n_params, len(stream), n_val_tokens, len(train_ch), val_ch, history, final, samples)
    log(f"wrote {out}")


def write_card(out, args, cfg, n_params, n_train_tokens, n_val_tokens, n_train_ch, val_ch, history, final, samples):
    name = os.path.basename(out)
    val_names = ", ".join(f"{book} {chap}" for book, chap, _ in val_ch)
    threads = f"{args.threads} thread" + ("s" if args.threads != 1 else "")
    cmd = (f"nice -n 15 /usr/bin/python3 scripts/pretrain/pretrain.py --out {args.out} --steps {args.steps} "
           f"--seed {args.seed}")
    defaults = {"batch_size": 8, "seq_len": 256, "lr": 2e-3, "warmup": 50, "weight_decay": 0.1, "hidden_size": 256,
                "layers": 4, "heads": 4, "kv_heads": 2, "intermediate_size": 704, "vocab_size": 4096, "threads": 1}
    for k, d in defaults.items():
        v = getattr(args, k)
        if v != d:
            cmd += f" --{k.replace('_', '-')} {v}"
    rows = "\n".join(f"| {h['step']} | {h['train_loss_ema']:.3f} | {h['val_loss']:.3f} | "
                     f"{math.exp(h['val_loss']):.1f} |" for h in history)
    sample_lines = "\n".join(f"- `{p}` → {json.dumps(s)}" for p, s in samples.items())
    card = f"""# {name}

A small Llama pretrained from scratch on the King James Bible: the default model of peft.cpp's demo.
It writes KJV-flavoured English and nothing else; it is a test fixture for fine-tuning, not a useful
language model.

## Data

The King James Version (1611) as packaged by Debian in `bible-kjv-text` and read with `bible -f
gen1:1-rev22:21` (package `bible-kjv`): 66 books, 1189 chapters, 31102 verses. The verse references
are dropped; each verse is one line, each chapter one document (`<s>` … `</s>`).

License: the KJV text is in the public domain, its copyright has expired
(`/usr/share/doc/bible-kjv-text/copyright`: "The copyright for the King James Version text of the Bible
is expired since the translation was done in 1611 under King James the first of Great Britain.").

Split: every {VAL_EVERY}th chapter in canonical order is validation: {len(val_ch)} chapters, {n_val_tokens}
tokens ({val_names}); the other {n_train_ch} chapters ({n_train_tokens} tokens) are training data.

## Tokenizer

Byte-level BPE, GPT-2 style (ByteLevel pre-tokenizer with GPT-2's split regex, byte-to-unicode mapping,
ByteLevel decoder), {cfg['vocab_size']} tokens, trained on the training chapters by
`scripts/pretrain/bpe.py`. Ids 0-6 are special added tokens: `<pad>` (0), `<s>` (1, BOS, added first
by the post-processor), `</s>` (2, EOS), `<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>` (3-6), then
the 256 byte tokens, then one token per merge. The pretraining data contains no chat markers; the
`chat_template` in `tokenizer_config.json` is there for fine-tuning:

```
{CHAT_TEMPLATE}
```

`eos_token_id` is `[{cfg['eos_token_id'][0]}, {cfg['eos_token_id'][1]}]` (`</s>` and `<|end|>`), so generation also
stops at the end of a chat turn. peft.cpp's C++ tokenizer and the JavaScript reference
(`@lenml/tokenizers`) give the same ids (tests/tokenizer/test-tokenizer.cpp).

## Model

`LlamaForCausalLM`: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers,
{cfg['num_attention_heads']} attention heads of {cfg['head_dim']} with {cfg['num_key_value_heads']}
key/value heads, SiLU MLP {cfg['intermediate_size']}, RMSNorm eps {cfg['rms_norm_eps']}, rotary
theta {cfg['rope_theta']:g}, {cfg['max_position_embeddings']} positions, tied input/output
embeddings: {n_params:,} parameters, stored in bfloat16.

## Training

Trained in float32 on CPU with python3-torch {torch.__version__} ({threads}), by the script's own
Llama forward (Hugging Face semantics: `scripts/pretrain/check-logits.py` compares its logits with
`peft forward` on this folder).
{final['steps']} steps of {args.batch_size} sequences of `<s>` + {args.seq_len} tokens starting at random
verses (seed {args.seed}), AdamW (betas 0.9/0.95, weight decay {args.weight_decay} on matrices), peak
learning rate {args.lr:g}, {args.warmup} warmup steps then cosine decay to 10%, gradient clipping at 1.
Wall time {final['train_minutes']} min.

| step | train loss (EMA) | validation loss | validation perplexity |
|---|---|---|---|
{rows}

Final validation loss with the bfloat16 weights as stored: {final['val_loss_bf16']:.3f} (perplexity
{math.exp(final['val_loss_bf16']):.1f}).

Greedy continuations (the script's forward, bfloat16 weights):

{sample_lines}

## Reproduce

```
{cmd}
```

(`pretrain-log.txt` in this folder is the log of the run that made it; the same command on the same
torch build and thread count gives the same weights.)

Fine-tuning data for this model (Debian's fortune cookies as `train.jsonl` / `eval.jsonl`):
`/usr/bin/python3 scripts/pretrain/make-finetune-data.py --out DIR`.
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(card)


if __name__ == "__main__":
    main()
