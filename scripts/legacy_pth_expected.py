#!/usr/bin/env python3
"""Reads a PyTorch legacy-format (.pth before 1.6) state dict with Python's own pickle
module (restricted: only the names such files use; storages resolved by hand), and
writes its tensors and the output of one 1x1 convolution as JSON. This is the
independent check for squeeze's Rust reader on a real checkpoint that another project
published: tests/fixtures/pytorch/lpips-alex-v0.1.pth, from the PyPI package lpips
0.1.4 (lpips/weights/v0.1/alex.pth, BSD-2-Clause, see LICENSE-lpips there).

Usage: python3 scripts/legacy_pth_expected.py FILE.pth KEY OUT.json
"""
import collections
import json
import pickle
import struct
import sys

SIZES = {"FloatStorage": ("<f", 4), "DoubleStorage": ("<d", 8), "LongStorage": ("<q", 8)}


def rebuild(storage, offset, size, stride, *rest):
    return {"storage": storage, "offset": offset, "size": tuple(size), "stride": tuple(stride)}


class Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in SIZES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} not allowed")

    def persistent_load(self, pid):
        tag, storage_type, key, location, numel, view = pid
        assert tag == "storage" and view is None
        return (storage_type, key, numel)


def main(path, key, out):
    f = open(path, "rb")
    magic = pickle.load(f)
    assert magic == 0x1950A86A20F9469CFC6C, magic
    assert pickle.load(f) == 1001
    sys_info = pickle.load(f)
    assert sys_info["little_endian"]
    sd = Restricted(f).load()
    keys = pickle.load(f)
    types = {t["storage"][1]: t["storage"][0] for t in sd.values()}
    data = {}
    for k in keys:
        (n,) = struct.unpack("<q", f.read(8))
        fmt, size = SIZES[types[k]]
        data[k] = [struct.unpack(fmt, f.read(size))[0] for _ in range(n)]
    assert f.read() == b""

    def values(t):
        flat = data[t["storage"][1]]
        out = []

        def walk(d, at):
            if d == len(t["size"]):
                out.append(flat[at])
                return
            for i in range(t["size"][d]):
                walk(d + 1, at + i * t["stride"][d])

        walk(0, t["offset"])
        return out

    tensors = {k: {"shape": list(t["size"]), "values": values(t)} for k, t in sd.items()}
    # A 1x1 convolution (no bias) of `key` on a 2x2 input with C channels.
    w = tensors[key]
    c = w["shape"][1]
    x = [[[((ch * 7 + i * 3 + j) % 10) / 10 for j in range(2)] for i in range(2)] for ch in range(c)]
    y = [[sum(w["values"][ch] * x[ch][i][j] for ch in range(c)) for j in range(2)] for i in range(2)]
    json.dump({"source": path, "tensors": tensors, "conv_key": key, "conv_input": x, "conv_output": y}, open(out, "w"))
    print(f"{len(tensors)} tensors; {key} 1x1 conv output {y}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
