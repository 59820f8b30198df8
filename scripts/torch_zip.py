#!/usr/bin/env python3
"""Writes PyTorch state dicts in torch.save's zip layout, with the Python standard
library only (no torch), and safetensors files likewise.

Why: squeeze's tests and its sample model must not need torch (hundreds of MB). This
module reproduces what torch.save (PyTorch >= 1.6, `_use_new_zipfile_serialization`
default) writes, as read from torch/serialization.py `_save` and torch/_tensor.py
`_reduce_ex_internal`:

* a zip whose entries live under one directory named after the file's stem
  (`<stem>/data.pkl`, `<stem>/byteorder`, `<stem>/data/<key>`, `<stem>/version`,
  `<stem>/.data/version`), stored uncompressed with each entry's data aligned to 64
  bytes by an `FB` extra field, as PyTorchStreamWriter does;
* `data.pkl`: the state dict pickled with protocol 2 by Python's own pickler. Each
  tensor reduces to `torch._utils._rebuild_tensor_v2(storage, storage_offset,
  size, stride, requires_grad, OrderedDict())`; each storage is a persistent id
  `('storage', torch.<Type>Storage, key, 'cpu', numel)` with keys '0', '1', ... in
  order of first use; the state dict is a `collections.OrderedDict` carrying a
  `_metadata` attribute (pickled with BUILD), as `nn.Module.state_dict()` returns;
* `data/<key>`: the storage's raw little-endian bytes.

The GLOBAL names are produced by registering stand-in modules `torch` and
`torch._utils` while pickling, so the opcode stream is the one Python's pickler emits
for the real objects. Files made here are NOT made by torch; squeeze's tests say so.

Usage as a library: see `Tensor` and `save_state_dict`. Run directly to regenerate
the small test fixtures in tests/fixtures/pytorch/.
"""

import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

# dtype name -> (torch storage class name, struct format, bytes per element)
DTYPES = {
    "float32": ("FloatStorage", "<f", 4),
    "float64": ("DoubleStorage", "<d", 8),
    "float16": ("HalfStorage", "<e", 2),
    "bfloat16": ("BFloat16Storage", None, 2),
    "int64": ("LongStorage", "<q", 8),
}

SAFETENSORS_DTYPE = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16", "int64": "I64"}


def encode_values(dtype, values):
    """Little-endian bytes of `values` in `dtype` (bfloat16: truncated f32, exact for
    values with at most 8 significant bits)."""
    name, fmt, _ = DTYPES[dtype]
    if dtype == "bfloat16":
        out = bytearray()
        for v in values:
            bits = struct.unpack("<I", struct.pack("<f", v))[0]
            out += struct.pack("<H", bits >> 16)
        return bytes(out)
    return b"".join(struct.pack(fmt, v) for v in values)


class Storage:
    """A flat storage: dtype and its values (the bytes written as data/<key>)."""

    def __init__(self, dtype, values):
        self.dtype = dtype
        self.values = list(values)


class Tensor:
    """A view into a storage, as torch tensors are."""

    def __init__(self, storage, shape, stride=None, offset=0):
        self.storage = storage
        self.shape = tuple(shape)
        if stride is None:
            stride, acc = [], 1
            for d in reversed(self.shape):
                stride.insert(0, acc)
                acc *= d
        self.stride = tuple(stride)
        self.offset = offset

    @staticmethod
    def dense(dtype, shape, values):
        return Tensor(Storage(dtype, values), shape)

    def values(self):
        """The view's elements in row-major order."""
        out = []

        def walk(dim, at):
            if dim == len(self.shape):
                out.append(self.storage.values[at])
                return
            for i in range(self.shape[dim]):
                walk(dim + 1, at + i * self.stride[dim])

        walk(0, self.offset)
        return out


def _stand_in_modules():
    """Modules `torch` and `torch._utils` with the names torch.save's pickle uses."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise RuntimeError("stand-in")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    classes = {}
    for _, (cls_name, _, _) in DTYPES.items():
        cls = type(cls_name, (), {})
        cls.__module__ = "torch"
        setattr(torch, cls_name, cls)
        classes[cls_name] = cls
    return torch, utils, classes


def _pickle_state(obj):
    """data.pkl bytes and the storages in key order."""
    torch, utils, classes = _stand_in_modules()
    saved = {"torch": sys.modules.get("torch"), "torch._utils": sys.modules.get("torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    keys = {}
    storages = []

    def reduce_tensor(t):
        return (utils._rebuild_tensor_v2, (t.storage, t.offset, t.shape, t.stride, False, collections.OrderedDict()))

    class TorchPickler(pickle.Pickler):
        dispatch_table = {Tensor: reduce_tensor}

        def persistent_id(self, o):
            if isinstance(o, Storage):
                if id(o) not in keys:
                    keys[id(o)] = str(len(keys))
                    storages.append(o)
                cls = classes[DTYPES[o.dtype][0]]
                return ("storage", cls, keys[id(o)], "cpu", len(o.values))
            return None

    try:
        buf = io.BytesIO()
        TorchPickler(buf, protocol=2).dump(obj)
    finally:
        for name, mod in saved.items():
            if mod is None:
                del sys.modules[name]
            else:
                sys.modules[name] = mod
    return buf.getvalue(), storages


def _aligned_entry(zf, name, data):
    """Adds a stored entry whose data starts at a multiple of 64, padding with an `FB`
    extra field as PyTorchStreamWriter does."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    offset = zf.fp.tell()
    base = offset + 30 + len(name.encode()) + 4
    pad = (64 - base % 64) % 64
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    zf.writestr(info, data)


def state_dict(tensors, modules=()):
    """An OrderedDict like nn.Module.state_dict(): tensors plus `_metadata`."""
    sd = collections.OrderedDict(tensors)
    sd._metadata = collections.OrderedDict([("", {"version": 1})] + [(m, {"version": 1}) for m in modules])
    return sd


def save(obj, path):
    """torch.save(obj, path) for state dicts (and dicts holding them) of `Tensor`s."""
    pkl, storages = _pickle_state(obj)
    stem = os.path.splitext(os.path.basename(path))[0]
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        _aligned_entry(zf, f"{stem}/data.pkl", pkl)
        _aligned_entry(zf, f"{stem}/byteorder", b"little")
        for key, s in enumerate(storages):
            _aligned_entry(zf, f"{stem}/data/{key}", encode_values(s.dtype, s.values))
        _aligned_entry(zf, f"{stem}/version", b"3\n")
        _aligned_entry(zf, f"{stem}/.data/version", b"3\n")
    os.replace(tmp, path)


def save_safetensors(tensors, path, metadata=None):
    """A safetensors file of `Tensor`s (dense row-major), names sorted."""
    header, blobs, at = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = encode_values(t.storage.dtype, t.values())
        header[name] = {"dtype": SAFETENSORS_DTYPE[t.storage.dtype], "shape": list(t.shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


# ---- test fixtures ----------------------------------------------------------------

def tiny_mlp():
    """A 4 -> 3 -> 2 MLP on inputs [1, 2, 2] whose tensors exercise views: fc1.weight is
    a transposed view (stride (1, 3)) of a [4, 3] storage; fc2's weight and bias are
    views at offsets into one shared storage. Values are multiples of 1/8, exact in
    every float dtype."""
    w1_t = Storage("float32", [((i * 5) % 11 - 5) / 8 for i in range(12)])  # [4, 3] row-major
    fc1_w = Tensor(w1_t, (3, 4), stride=(1, 3))
    fc1_b = Tensor.dense("float32", (3,), [0.125, -0.25, 0.5])
    shared = Storage("float32", [9.0] + [((i * 3) % 7 - 3) / 4 for i in range(6)] + [0.375, -0.625])
    fc2_w = Tensor(shared, (2, 3), offset=1)
    fc2_b = Tensor(shared, (2,), offset=7)
    return state_dict([("fc1.weight", fc1_w), ("fc1.bias", fc1_b), ("fc2.weight", fc2_w), ("fc2.bias", fc2_b)], ["fc1", "fc2"])


def forward(sd, x, mean, std):
    """The MLP's logits in plain Python: normalise, fc1, relu, fc2."""
    x = [(v - mean) / std for v in x]

    def linear(w, b, v):
        rows = w.shape[0]
        wv = w.values()
        return [sum(wv[r * len(v) + c] * v[c] for c in range(len(v))) + b.values()[r] for r in range(rows)]

    h = [max(0.0, v) for v in linear(sd["fc1.weight"], sd["fc1.bias"], x)]
    return linear(sd["fc2.weight"], sd["fc2.bias"], h)


def fixtures(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    sd = tiny_mlp()
    save(sd, os.path.join(out_dir, "tiny_mlp.pth"))
    # A training checkpoint holding the state dict among other values.
    save({"epoch": 3, "model_state_dict": sd, "best_accuracy": 0.5}, os.path.join(out_dir, "checkpoint.pt"))
    # The same weights in other dtypes (values are exact in each).
    for dtype in ("float16", "bfloat16", "float64"):
        conv = collections.OrderedDict((k, Tensor.dense(dtype, t.shape, t.values())) for k, t in sd.items())
        save(state_dict(conv.items(), ["fc1", "fc2"]), os.path.join(out_dir, f"tiny_mlp_{dtype}.pth"))
    save_safetensors(sd, os.path.join(out_dir, "tiny_mlp.safetensors"))
    inputs = [[0.0, 0.25, 0.5, 1.0], [1.0, 0.75, 0.125, 0.0], [0.5, 0.5, 0.5, 0.5]]
    expected = {
        "note": "written by scripts/torch_zip.py (standard library only), not by torch",
        "values": {k: t.values() for k, t in sd.items()},
        "shapes": {k: list(t.shape) for k, t in sd.items()},
        "inputs": inputs,
        "logits": [forward(sd, x, 0.5, 0.25) for x in inputs],
    }
    with open(os.path.join(out_dir, "tiny_mlp.expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print("wrote fixtures to", out_dir)


if __name__ == "__main__":
    fixtures(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pytorch"))
