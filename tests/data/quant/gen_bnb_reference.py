"""Reference data for peft.cpp's bitsandbytes formats (NF4/FP4 4-bit, LLM.int8 8-bit), made by bitsandbytes' own
Python code (its pure-PyTorch "default" backend), executed from an upstream source tree at run time.

usage: /usr/bin/python3 gen_bnb_reference.py --bnb BNB_SOURCE --oracle ORACLE_DIR [--out DIR]

  BNB_SOURCE   a git directory (bare or not) or a source tree of github.com/bitsandbytes-foundation/bitsandbytes
  ORACLE_DIR   a writable copy of the upstream-PEFT oracle (the project's shared/oracle) after its setup.sh ran
  DIR          output folder (default: the folder of this script)

bitsandbytes does not import on PyTorch 1.13 (it needs torch.library.define/register_kernel, torch.compiler, a
native library). This script copies the needed upstream files unchanged into a temporary package and gives them
the few things they need from outside (see `load_bnb`): a registry in place of torch.library's operator
registration (each registered "default" kernel is called directly through torch.ops.bitsandbytes.<op>.default),
torch.compiler.is_compiling, typing_extensions.deprecated, an absent native library, and a stub for bnb.optim.
No bitsandbytes code lives in this repository; everything bitsandbytes computes here is computed by its source.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden")

# upstream files executed as they are
BNB_FILES = [
    "bitsandbytes/_ops.py",
    "bitsandbytes/utils.py",
    "bitsandbytes/functional.py",
    "bitsandbytes/backends/__init__.py",
    "bitsandbytes/backends/utils.py",
    "bitsandbytes/backends/default/__init__.py",
    "bitsandbytes/backends/default/ops.py",
    "bitsandbytes/autograd/__init__.py",
    "bitsandbytes/autograd/_functions.py",
    "bitsandbytes/nn/__init__.py",
    "bitsandbytes/nn/modules.py",
]

# our glue (replaces bitsandbytes/__init__.py, which imports every backend and the native library)
GLUE_INIT = '''"""glue: the parts of bitsandbytes/__init__.py that the default backend needs (not upstream code)"""
from . import _ops, utils, functional
from .autograd._functions import MatmulLtState, matmul, matmul_4bit
from .backends.default import ops as default_ops
from .nn import modules
'''
GLUE_CEXT = '"""glue: no native library (has_avx512bf16() then answers False)"""\nlib = None\n'
GLUE_OPTIM = '"""glue: nn/modules.py imports GlobalOptimManager; the optimizers are not used here"""\nclass GlobalOptimManager:\n    pass\n'


class _Registry:
    """Stands in for torch.library (PyTorch >= 2.4) on PyTorch 1.13: define() records the schema, register_kernel()
    keeps the Python function, register_fake() is ignored; torch.ops.bitsandbytes.<op>.default / .out call the
    kernel registered for the "default" device key."""

    def __init__(self):
        self.kernels = {}
        self.schemas = {}

    def define(self, name, schema, *a, **k):
        self.schemas[name] = schema

    def register_kernel(self, name, device, *a, **k):
        def deco(fn):
            self.kernels[(name, device)] = fn
            return fn
        return deco

    def register_fake(self, name, *a, **k):
        return lambda fn: fn

    def call(self, name):
        def f(*args, **kw):
            fn = self.kernels.get((name, "default"))
            if fn is None:
                raise NotImplementedError(f"no default kernel for {name}")
            return fn(*args, **kw)
        return f


class _OpPacket:
    def __init__(self, reg, op):
        self.default = reg.call(f"bitsandbytes::{op}")
        self.out = reg.call(f"bitsandbytes::{op}.out")

    def __call__(self, *a, **k):
        return self.default(*a, **k)


class _Namespace:
    def __init__(self, reg):
        self._reg = reg

    def __getattr__(self, op):
        if op.startswith("_"):
            raise AttributeError(op)
        return _OpPacket(self._reg, op)


def git_commit_of(src):
    for args in (["--git-dir", src], ["-C", src]):
        r = subprocess.run(["git", *args, "rev-parse", "HEAD"], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.strip(), args
    return "unknown", None


def load_bnb(src):
    """Import bitsandbytes' default backend from an upstream source tree or git directory."""
    commit, gitargs = git_commit_of(src)
    tree = tempfile.mkdtemp(prefix="bnb_src_")
    is_tree = os.path.isfile(os.path.join(src, "bitsandbytes", "functional.py"))
    for f in BNB_FILES:
        dst = os.path.join(tree, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if is_tree:
            shutil.copyfile(os.path.join(src, f), dst)
        else:
            data = subprocess.run(["git", *gitargs, "show", f"HEAD:{f}"], check=True, capture_output=True).stdout
            with open(dst, "wb") as fh:
                fh.write(data)
    with open(os.path.join(tree, "bitsandbytes", "__init__.py"), "w") as fh:
        fh.write(GLUE_INIT)
    with open(os.path.join(tree, "bitsandbytes", "cextension.py"), "w") as fh:
        fh.write(GLUE_CEXT)
    os.makedirs(os.path.join(tree, "bitsandbytes", "optim"), exist_ok=True)
    with open(os.path.join(tree, "bitsandbytes", "optim", "__init__.py"), "w") as fh:
        fh.write(GLUE_OPTIM)

    # what PyTorch 1.13 lacks
    reg = _Registry()
    torch.library.define = reg.define
    torch.library.register_kernel = reg.register_kernel
    torch.library.register_fake = reg.register_fake
    setattr(torch.ops, "bitsandbytes", _Namespace(reg))
    if not hasattr(torch, "compiler"):
        torch.compiler = types.SimpleNamespace(is_compiling=lambda: False)
    # PyTorch >= 2.0 indexes with int32 tensors (dequantize_4bit does code[int32 tensor]); 1.13 needs int64. The
    # index values are the same, so widen int32 index tensors before indexing.
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 0):
        _getitem = torch.Tensor.__getitem__

        def _getitem_int32(self, idx):
            if isinstance(idx, torch.Tensor) and idx.dtype == torch.int32:
                idx = idx.long()
            return _getitem(self, idx)
        torch.Tensor.__getitem__ = _getitem_int32
    # torch.compile is absent on 1.13: the default backend's _try_torch_compile then keeps the plain function
    import typing_extensions
    if not hasattr(typing_extensions, "deprecated"):
        typing_extensions.deprecated = lambda *a, **k: (lambda f: f)
    sys.path.insert(0, tree)
    import bitsandbytes as bnb  # noqa: E402
    import bitsandbytes.functional  # noqa: F401,E402
    return bnb, commit, reg


# ---------------------------------------------------------------- safetensors
_DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
       torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64"}


def save_safetensors(tensors, path, metadata=None):
    """Minimal safetensors writer: __metadata__ first, tensors in name order, header padded with spaces to 8."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        if t.dtype == torch.bfloat16:
            b = t.view(torch.int16).numpy().tobytes()
        else:
            b = t.numpy().tobytes()
        header[k] = {"dtype": _DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    h = json.loads(data[8:8 + n])
    h.pop("__metadata__", None)
    body = data[8 + n:]
    rdt = {v: k for k, v in _DT.items()}
    out = {}
    for k, e in h.items():
        a, b = e["data_offsets"]
        dt = rdt[e["dtype"]]
        raw = bytearray(body[a:b])
        if dt == torch.bfloat16:
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16) if raw else torch.empty(0, dtype=dt)
        else:
            t = torch.frombuffer(raw, dtype=dt) if raw else torch.empty(0, dtype=dt)
        out[k] = t.reshape(e["shape"]).clone()
    return out


def dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- 1. format cases
def make_inputs():
    g = torch.Generator().manual_seed(1234)
    t = {}
    t["t0"] = 0.05 * torch.randn(64, 64, generator=g)            # 64 blocks of 64
    t["t1"] = torch.randn(48, 32, generator=g)                   # 24 blocks, rows shorter than a block
    t["t2"] = torch.randn(33, 50, generator=g)                   # 1650 values: 25 full blocks of 64 + 50
    z = 0.1 * torch.randn(32, 64, generator=g)                   # exact zeros and a whole zero block (row 1)
    z[1].zero_()
    z[5, ::3] = 0.0
    z[9, 7] = -0.0
    t["t4"] = z
    t["t5"] = torch.randn(48, 64, generator=g).to(torch.bfloat16).to(torch.float32)  # bf16-representable
    t["t6"] = torch.randn(7, 9, generator=g)                     # 63 values: odd count, the last byte is padded
    t["t3"] = 0.02 * torch.randn(136, 64, generator=g)           # at blocksize 32: 272 blocks, two nested (256 + 16)
    return t


def format_cases(bnb, F):
    inputs = make_inputs()
    out = {f"input/{k}": v.clone() for k, v in inputs.items()}
    cases = []
    plan = []
    for tn in ("t0", "t1", "t2", "t4", "t5", "t6"):
        for qt in ("nf4", "fp4"):
            for nested in (False, True):
                plan.append((tn, qt, 64, nested))
    for bs in (32, 128):
        for qt in ("nf4", "fp4"):
            for nested in (False, True):
                plan.append(("t0", qt, bs, nested))
    for qt in ("nf4", "fp4"):
        plan.append(("t3", qt, 32, True))
    for tn, qt, bs, nested in plan:
        A = inputs[tn].clone()
        packed, qs = F.quantize_4bit(A, blocksize=bs, compress_statistics=nested, quant_type=qt,
                                     quant_storage=torch.uint8)
        assert torch.equal(A, inputs[tn])
        deq = F.dequantize_4bit(packed, qs)
        p = f"{qt}/b{bs}/{'nested' if nested else 'plain'}/{tn}/"
        out[p + "packed"] = packed
        out[p + "quant_map"] = qs.code
        out[p + "dequant"] = deq
        sd = qs.as_dict(packed=True)
        blob = sd[f"quant_state.bitsandbytes__{qt}"]
        out[p + "quant_state_blob"] = blob
        entry = {"prefix": p, "input": f"input/{tn}", "shape": list(A.shape), "numel": A.numel(), "quant_type": qt,
                 "blocksize": bs, "nested": nested, "blocks": qs.absmax.numel(),
                 "quant_state_json": bytes(blob.tolist()).decode("utf-8")}
        if nested:
            out[p + "absmax"] = qs.absmax                        # uint8 codes into the dynamic map
            out[p + "nested_absmax"] = qs.state2.absmax          # float32, one per 256 absmax values
            out[p + "nested_quant_map"] = qs.state2.code         # the dynamic map
            out[p + "offset"] = qs.offset.reshape(1)             # 0-dim in bitsandbytes; stored as shape [1]
            absmax_dq = F.dequantize_blockwise(qs.absmax, qs.state2)
            absmax_dq += qs.offset
            out[p + "absmax_dequant"] = absmax_dq
            # the un-nested absmax that quantize_4bit computed first (plain case of the same input)
            _, qs_plain = F.quantize_4bit(A, blocksize=bs, compress_statistics=False, quant_type=qt)
            out[p + "absmax_float"] = qs_plain.absmax
            entry["offset"] = float(qs.offset)
            entry["nested_blocks"] = qs.state2.absmax.numel()
        else:
            out[p + "absmax"] = qs.absmax
        cases.append(entry)

    # LLM.int8: Int8Params._quantize casts the weight to float16, then int8_vectorwise_quant(B) (threshold 0)
    int8_cases = []
    for tn in ("t0", "t1", "t2", "t4", "t5", "t6"):
        W = inputs[tn].clone()
        p = f"int8/{tn}/"
        param = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
        CB, SCB = param.CB, param.SCB
        CB2, SCB2, outl = F.int8_vectorwise_quant(W.to(torch.float16))
        assert torch.equal(CB, CB2) and torch.equal(SCB, SCB2, ) and outl is None
        out[p + "CB"] = CB
        out[p + "SCB"] = SCB
        out[p + "dequant"] = F.int8_vectorwise_dequant(CB, SCB)
        # what Linear8bitLt computes on CPU in training mode (MatMul8bitFp): linear(x, CB * (SCB / 127));
        # read back exactly through an identity input
        lin = bnb.nn.Linear8bitLt(W.shape[1], W.shape[0], bias=False, has_fp16_weights=False, threshold=6.0)
        lin.weight = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
        lin.train()
        with torch.no_grad():
            out[p + "dequant_matmul8bitfp"] = lin(torch.eye(W.shape[1])).t().contiguous()
        d = (out[p + "dequant"] - out[p + "dequant_matmul8bitfp"]).abs()
        int8_cases.append({"prefix": p, "input": f"input/{tn}", "shape": list(W.shape),
                           "zero_rows": [int(i) for i in torch.nonzero(W.abs().amax(1) == 0).flatten()],
                           "dequant_vs_matmul8bitfp_max_abs_diff": float(d[torch.isfinite(d)].max()) if d.numel() else 0.0,
                           "dequant_vs_matmul8bitfp_differing": int((out[p + "dequant"] != out[p + "dequant_matmul8bitfp"]).sum())})

    out["code/dynamic"] = F.create_dynamic_map()
    out["code/nf4"] = F.get_4bit_type("nf4", device="cpu")
    out["code/fp4"] = F.get_4bit_type("fp4", device="cpu")
    from bitsandbytes.backends.default import ops as dops
    bounds, order = dops._get_4bit_quantize_bounds("fp4", torch.device("cpu"))
    out["code/fp4_bounds"] = bounds
    out["code/fp4_order"] = order
    bounds_nf4, _ = dops._get_4bit_quantize_bounds("nf4", torch.device("cpu"))
    out["code/nf4_bounds"] = bounds_nf4
    return out, cases, int8_cases, order


# ---------------------------------------------------------------- 2./3. checkpoints and logits
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]


def bnb_config_dict(kind):
    """BitsAndBytesConfig(...).to_dict() of transformers, key for key in the order of its __dict__."""
    four = kind in ("nf4", "nf4-dq")
    d = {
        "quant_method": "bitsandbytes",
        "_load_in_8bit": not four,
        "_load_in_4bit": four,
        "llm_int8_threshold": 6.0,
        "llm_int8_skip_modules": None,
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_quant_type": "nf4" if four else "fp4",
        "bnb_4bit_use_double_quant": kind == "nf4-dq",
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "load_in_4bit": four,
        "load_in_8bit": not four,
    }
    return d


def quantize_checkpoint(bnb, sd, cfg, kind):
    """Quantize every Linear of the decoder layers with bitsandbytes' modules; returns the state dict as
    Linear4bit/Linear8bitLt._save_to_state_dict write it, and the modules (for the forward)."""
    out = {k: v.clone() for k, v in sd.items()}
    mods = {}
    for i in range(cfg["num_hidden_layers"]):
        for ln in LINEARS:
            name = f"model.layers.{i}.{ln}"
            W = sd[name + ".weight"]
            if kind == "int8":
                lin = bnb.nn.Linear8bitLt(W.shape[1], W.shape[0], bias=False, has_fp16_weights=False, threshold=6.0)
                lin.weight = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
            else:
                lin = bnb.nn.Linear4bit(W.shape[1], W.shape[0], bias=False, compute_dtype=torch.float32,
                                        compress_statistics=(kind == "nf4-dq"), quant_type="nf4",
                                        quant_storage=torch.uint8)
                lin.weight = bnb.nn.Params4bit(W.clone(), requires_grad=False, blocksize=64,
                                               compress_statistics=(kind == "nf4-dq"), quant_type="nf4",
                                               quant_storage=torch.uint8, module=lin).to("cpu")
            del out[name + ".weight"]
            for k, v in lin.state_dict(prefix=name + ".").items():
                out[k] = v.detach().clone()
            mods[name] = lin
    return out, mods


def set_module(root, name, m):
    parent, leaf = name.rsplit(".", 1)
    setattr(root.get_submodule(parent), leaf, m)


def dequantized_weights(mods, kind):
    """W_dq of each module, read back exactly through its own forward on an identity input (x @ W^T = W^T):
    Linear4bit on CPU (no AVX512-BF16 native kernel) = dequantize_4bit + linear (gemm_4bit default kernel);
    Linear8bitLt on CPU in training mode = MatMul8bitFp = linear(x, CB * (SCB / 127))."""
    out = {}
    for name, lin in mods.items():
        n_in = lin.in_features
        if kind == "int8":
            lin.train()
        else:
            lin.eval()
        with torch.no_grad():
            out[name] = lin(torch.eye(n_in)).t().contiguous()
    return out


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bnb", required=True, help="bitsandbytes git directory or source tree")
    ap.add_argument("--oracle", required=True, help="writable copy of the PEFT oracle after setup.sh")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--only-loftq", action="store_true", help="write the loftq/ cases only")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    torch.set_num_threads(1)

    bnb, commit, reg = load_bnb(a.bnb)
    if a.only_loftq:
        sys.path.insert(0, a.oracle)
        import oracle_env  # noqa: F401
        import tinyref
        loftq_cases(bnb, tinyref, os.path.join(GOLDEN, "models", "tiny-llama"), os.path.join(out, "loftq"), commit)
        return
    F = bnb.functional
    meta_common = {"bitsandbytes_commit": commit, "torch": torch.__version__, "format": "pt"}

    # 1. formats
    tensors, cases, int8_cases, fp4_order = format_cases(bnb, F)
    save_safetensors(tensors, os.path.join(out, "bnb_reference.safetensors"), metadata=meta_common)
    dump_json({
        "bitsandbytes_commit": commit,
        "torch": torch.__version__,
        "key_scheme": {
            "input/<t>": "float32 input tensor <t>",
            "<qt>/b<blocksize>/<plain|nested>/<t>/packed": "uint8 [(numel+1)//2, 1]: quantize_4bit output (high nibble = even element)",
            "<qt>/b<blocksize>/plain/<t>/absmax": "float32 [blocks]",
            "<qt>/b<blocksize>/nested/<t>/absmax": "uint8 [blocks]: quantize_blockwise(absmax - offset, blocksize=256) codes into the dynamic map",
            "<qt>/b<blocksize>/nested/<t>/nested_absmax": "float32 [ceil(blocks/256)]",
            "<qt>/b<blocksize>/nested/<t>/nested_quant_map": "float32 [256]: create_dynamic_map()",
            "<qt>/b<blocksize>/nested/<t>/offset": "float32 [1]: absmax.mean() (a 0-dim tensor in bitsandbytes)",
            "<qt>/b<blocksize>/nested/<t>/absmax_dequant": "float32 [blocks]: dequantize_blockwise(absmax, state2) + offset",
            "<qt>/b<blocksize>/nested/<t>/absmax_float": "float32 [blocks]: the absmax before double quantization",
            "<qt>/b<blocksize>/<plain|nested>/<t>/quant_map": "float32 [16]: get_4bit_type(qt)",
            "<qt>/b<blocksize>/<plain|nested>/<t>/dequant": "float32, input shape: dequantize_4bit(packed, quant_state)",
            "<qt>/b<blocksize>/<plain|nested>/<t>/quant_state_blob": "uint8: the JSON tensor QuantState.as_dict(packed=True) stores as quant_state.bitsandbytes__<qt>",
            "int8/<t>/CB": "int8, input shape: Int8Params._quantize = int8_vectorwise_quant(W.to(float16))",
            "int8/<t>/SCB": "float32 [rows]: per-row absmax of the float16 weight",
            "int8/<t>/dequant": "float32: int8_vectorwise_dequant(CB, SCB) = CB * SCB * 7.874015718698502e-3",
            "int8/<t>/dequant_matmul8bitfp": "float32: the weight Linear8bitLt uses on CPU in training (MatMul8bitFp): CB * (SCB * (1/127))",
            "code/dynamic": "float32 [256]: create_dynamic_map()",
            "code/nf4, code/fp4": "float32 [16]: get_4bit_type",
            "code/nf4_bounds, code/fp4_bounds, code/fp4_order": "the default backend's _get_4bit_quantize_bounds: midpoints of the sorted code, and argsort(code) (FP4 index = order[bucketize(x, bounds)])",
        },
        "fp4_order": fp4_order.tolist(),
        "cases_4bit": cases,
        "cases_int8": int8_cases,
    }, os.path.join(out, "cases.json"))

    # 2. checkpoints
    sys.path.insert(0, a.oracle)
    import oracle_env  # noqa: F401  (stubs; must come before peft)
    import tinyref
    base_dir = os.path.join(GOLDEN, "models", "tiny-llama")
    with open(os.path.join(base_dir, "config.json")) as f:
        cfg = json.load(f)
    sd = load_safetensors(os.path.join(base_dir, "model.safetensors"))
    with open(os.path.join(GOLDEN, "cases", "lora", "input_ids.json")) as f:
        ids = torch.tensor(json.load(f))
    expected = {}
    dq_nf4 = None
    for kind, folder in (("nf4", "tiny-llama-nf4"), ("nf4-dq", "tiny-llama-nf4-dq"), ("int8", "tiny-llama-int8")):
        qsd, mods = quantize_checkpoint(bnb, sd, cfg, kind)
        d = os.path.join(out, folder)
        os.makedirs(d, exist_ok=True)
        save_safetensors(qsd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        c = dict(cfg)
        c["dtype"] = "float32"          # transformers >= 4.56 writes "dtype"; older ones "torch_dtype" (kept)
        c["quantization_config"] = bnb_config_dict(kind)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)   # PreTrainedConfig.to_json_string: indent 2, sorted keys
            f.write("\n")
        # 3. logits of the tiny Llama with the dequantized weights
        wdq = dequantized_weights(mods, kind)
        ref = tinyref.load_hf(base_dir)
        with torch.no_grad():
            for name, w in wdq.items():
                ref.get_submodule(name).weight.copy_(w)
        ref.eval()
        with torch.no_grad():
            logits = ref(ids).detach().clone()
        tag = kind.replace("-", "_")
        expected[f"logits_{tag}"] = logits
        for name, w in wdq.items():
            expected[f"weight_dequant/{tag}/{name}.weight"] = w
        # the same through the bitsandbytes modules themselves
        m = tinyref.load_hf(base_dir)
        for name, lin in mods.items():
            set_module(m, name, lin)
        if kind == "int8":
            m.train()      # MatMul8bitFp: dequantize + linear
        else:
            m.eval()
        with torch.no_grad():
            lb = m(ids).detach().clone()
        assert torch.equal(lb, logits), (kind, (lb - logits).abs().max())
        if kind == "int8":
            # eval mode: MatMul8bitLt quantizes the activations too (threshold 6.0 outlier columns in fp16)
            m.eval()
            with torch.no_grad():
                expected["logits_int8_eval_matmul8bitlt"] = m(ids).detach().clone().float()
        if kind == "nf4":
            dq_nf4 = wdq
        # check the 4-bit dequantized weights against functional.dequantize_4bit
        if kind != "int8":
            for name, lin in mods.items():
                assert torch.equal(F.dequantize_4bit(lin.weight.data, lin.weight.quant_state), wdq[name])
    base = tinyref.load_hf(base_dir)
    base.eval()
    with torch.no_grad():
        expected["logits_base"] = base(ids).detach().clone()
    save_safetensors(expected, os.path.join(out, "expected.safetensors"), metadata=meta_common)

    # 4. QLoRA: the train_lora_adamw case of tests/data/golden on the NF4 (b64, no double quant) base
    qlora_train(tinyref, base_dir, dq_nf4, os.path.join(out, "qlora_train"))
    # 5. LoftQ initialisation
    loftq_cases(bnb, tinyref, base_dir, os.path.join(out, "loftq"), commit)
    print("wrote", out, "bitsandbytes", commit)


def loftq_cases(bnb, tinyref, base_dir, folder, commit):
    """init_lora_weights="loftq" by upstream PEFT's loftq_init, which quantizes with bitsandbytes (here: its source,
    the default backend) on a CUDA/XPU device: PEFT's availability checks answer True and tensors sent to "cuda"
    stay on the CPU. PEFT's LoraConfig still asks for scipy when init_lora_weights is "loftq" (loftq_init no longer
    uses it): that check is answered too."""
    import importlib.util
    from peft import LoftQConfig, LoraConfig, get_peft_model
    import peft.utils.loftq_utils as loftq_utils
    loftq_utils.is_bnb_available = lambda: True
    loftq_utils.is_bnb_4bit_available = lambda: True
    loftq_utils.is_xpu_available = lambda: False
    find_spec, tensor_to = importlib.util.find_spec, torch.Tensor.to

    def on_cpu(d):
        return "cpu" if str(d).startswith(("cuda", "xpu")) else d

    def to_cpu(self, *args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = on_cpu(kwargs["device"])
        return tensor_to(self, *[on_cpu(x) if isinstance(x, (str, torch.device)) else x for x in args], **kwargs)

    importlib.util.find_spec = lambda n, *a, **k: types.SimpleNamespace(name=n) if n == "scipy" else find_spec(n, *a, **k)
    torch.Tensor.to = to_cpu
    with open(os.path.join(GOLDEN, "cases", "lora", "input_ids.json")) as f:
        ids = torch.tensor(json.load(f))
    shutil.rmtree(folder, ignore_errors=True)
    targets = ["q_proj", "v_proj", "down_proj"]
    try:
        for name, bits, iters, alpha in (("nf4", 4, 2, 4), ("int8", 8, 1, 8)):
            d = os.path.join(folder, name)
            torch.manual_seed(41)
            base = tinyref.load_hf(base_dir)
            original = {n: m.weight.detach().clone() for n, m in base.named_modules() if n.split(".")[-1] in targets}
            cfg = LoraConfig(r=4, lora_alpha=alpha, target_modules=targets, init_lora_weights="loftq",
                             loftq_config=LoftQConfig(loftq_bits=bits, loftq_iter=iters))
            pm = get_peft_model(base, cfg)
            pm.eval()
            pm.save_pretrained(os.path.join(d, "adapter"))
            exp = {}
            with torch.no_grad():
                exp["logits"] = pm(ids).detach().clone()
                with pm.disable_adapter():
                    exp["logits_disabled"] = pm(ids).detach().clone()
            for n, w in original.items():
                layer = pm.base_model.model.get_submodule(n)
                q = layer.base_layer.weight.detach().clone()
                exp[f"base/{n}.weight"] = q
                # what LoftQ promises: B A gives back part of what quantization lost (at scaling 1: LoftQ's factors
                # ignore lora_alpha / r, which the int8 case sets to 2 to show that upstream does not rescale them)
                delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
                assert (w - q - delta.detach()).norm() < (w - q).norm(), n
                assert not torch.equal(q, w), n
            save_safetensors(exp, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
            with open(os.path.join(d, "input_ids.json"), "w") as f:
                json.dump(ids.tolist(), f)
            dump_json({"model": "models/tiny-llama", "model_note": "relative to tests/data/golden",
                       "adapter": "adapter", "bitsandbytes_commit": commit,
                       "loftq_config": {"loftq_bits": bits, "loftq_iter": iters}, "r": 4, "lora_alpha": alpha,
                       "target_modules": targets,
                       "what": "get_peft_model on the float tiny Llama with init_lora_weights='loftq' (no perturbation): "
                               "logits, logits_disabled (the base with LoftQ's dequantized weights), base/<module>.weight "
                               "(those weights); adapter/ is what save_pretrained wrote"},
                      os.path.join(d, "case.json"))
        # replace_lora_weights_loftq on the NF4 model (every decoder Linear quantized by bitsandbytes' Linear4bit, as
        # tiny-llama-nf4): each adapted module's factors from upstream's _loftq_init_new(module.weight, the float
        # weight), which replace_lora_weights_loftq applies to each Linear4bit LoRA layer
        d = os.path.join(folder, "replace")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(base_dir, "config.json")) as f:
            cfg_json = json.load(f)
        sd = load_safetensors(os.path.join(base_dir, "model.safetensors"))
        _, mods = quantize_checkpoint(bnb, sd, cfg_json, "nf4")
        wdq = dequantized_weights(mods, "nf4")
        base = tinyref.load_hf(base_dir)
        with torch.no_grad():
            for n, w in wdq.items():
                base.get_submodule(n).weight.copy_(w)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets)
        pm = get_peft_model(base, cfg)
        exp = {}
        for n, lin in mods.items():
            if n.split(".")[-1] not in targets:
                continue
            A, B = loftq_utils._loftq_init_new(lin.weight, sd[n + ".weight"], num_bits=4, reduced_rank=4)
            layer = pm.base_model.model.get_submodule(n)
            with torch.no_grad():
                layer.lora_A["default"].weight.copy_(A)
                layer.lora_B["default"].weight.copy_(B)
            exp[f"lora_A/{n}"] = A.detach().clone()
            exp[f"lora_B/{n}"] = B.detach().clone()
        pm.eval()
        with torch.no_grad():
            exp["logits"] = pm(ids).detach().clone()
            with pm.disable_adapter():
                exp["logits_disabled"] = pm(ids).detach().clone()
        save_safetensors(exp, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "input_ids.json"), "w") as f:
            json.dump(ids.tolist(), f)
        dump_json({"model": "models/tiny-llama", "model_note": "relative to tests/data/golden; quantized NF4 (blocksize "
                   "64, no double quant, lm_head float) as tiny-llama-nf4", "bitsandbytes_commit": commit,
                   "r": 4, "lora_alpha": 8, "target_modules": targets,
                   "what": "replace_lora_weights_loftq: lora_A/<module>, lora_B/<module> from upstream's "
                           "_loftq_init_new(Linear4bit weight, float weight); logits of the NF4 model with them "
                           "(base = bitsandbytes' dequantized weights), logits_disabled"},
                  os.path.join(d, "case.json"))
    finally:
        importlib.util.find_spec, torch.Tensor.to = find_spec, tensor_to


def qlora_train(tinyref, base_dir, wdq, folder):
    from peft import LoraConfig, get_peft_model
    src_case = os.path.join(GOLDEN, "cases", "train_lora_adamw")
    with open(os.path.join(src_case, "input_ids.json")) as f:
        ids = torch.tensor(json.load(f))
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    s = 0   # gen_golden.py's seed
    torch.manual_seed(s + 23)
    base = tinyref.load_hf(base_dir)   # same construction (and RNG use) as the golden case
    with torch.no_grad():
        for name, w in wdq.items():
            base.get_submodule(name).weight.copy_(w)
    pm = get_peft_model(base, LoraConfig(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, lora_dropout=0.0))
    pm.save_pretrained(os.path.join(folder, "adapter_init"))
    a0 = load_safetensors(os.path.join(folder, "adapter_init", "adapter_model.safetensors"))
    g0 = load_safetensors(os.path.join(src_case, "adapter_init", "adapter_model.safetensors"))
    assert a0.keys() == g0.keys() and all(torch.equal(a0[k], g0[k]) for k in a0), "adapter_init differs from golden"
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.01)
    losses = []
    pm.train()
    for step in range(8):
        logits = pm(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    pm.save_pretrained(os.path.join(folder, "adapter_final"))
    pm.eval()
    with torch.no_grad():
        logits_final = pm(ids).detach().clone()
    dump_json({"model": "tiny-llama-nf4", "model_note": "relative to tests/data/quant; the base Linear weights "
               "(all decoder-layer Linears, not lm_head) are bitsandbytes' NF4 dequantized weights (blocksize 64, "
               "no double quant), as Linear4bit computes them on CPU",
               "base_equivalent": "tests/data/quant/expected.safetensors weight_dequant/nf4/*",
               "adapter_init": "adapter_init", "adapter_final": "adapter_final",
               "optimizer": {"type": "adamw", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8,
                             "weight_decay": 0.01}, "steps": 8,
               "loss": "mean cross-entropy of logits[:, :-1] against input_ids[:, 1:], whole batch each step",
               "what": "losses: the loss at each step before the update; logits_final: eval logits after training",
               "same_as": "tests/data/golden/cases/train_lora_adamw (same config, data, seeds; adapter_init is "
                          "byte-identical in values)"}, os.path.join(folder, "case.json"))
    with open(os.path.join(folder, "input_ids.json"), "w") as f:
        json.dump(ids.tolist(), f)
    save_safetensors({"losses": torch.tensor(losses), "logits_final": logits_final},
                     os.path.join(folder, "expected.safetensors"))


if __name__ == "__main__":
    main()
