#!/usr/bin/env python3
"""Writes the hostile files of issue #18 (and earlier issues) into fuzz/regressions/<target>/,
where fuzz/build.sh replays them before fuzzing and seeds the corpus with them. Standard library
only; every file is tiny. Run from the repository root: python3 fuzz/make_regressions.py"""
import io, json, os, struct, unicodedata, warnings, zipfile

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regressions")


def put(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data)


def npy(shape, descr="<f4", fortran=False, data=None):
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, repr(tuple(shape)))
    pad = 64 - (10 + len(d) + 1) % 64
    header = (d + " " * pad + "\n").encode("latin-1")
    count = 1
    for s in shape:
        count *= s
    width = int(descr[2:]) if descr[1] != "b" else 1
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + (data if data is not None else bytes(count * width))


def safetensors(header, data=b""):
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return struct.pack("<Q", len(h)) + h + data


def npz(members, duplicate=False):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members:
                z.writestr(name, data)
            if duplicate:
                z.writestr(members[0][0], members[0][1])
    return buf.getvalue()


nfc = unicodedata.normalize("NFC", "caf\u00e9")
nfd = unicodedata.normalize("NFD", nfc)

# .npy headers: truncated, 65 dimensions, Fortran order with many unit dimensions.
put("NpyHeaderFuzz", "truncated.npy", npy((2,))[:8])
put("NpyHeaderFuzz", "rank65.npy", npy((1,) * 65, "|u1"))
put("NpyHeaderFuzz", "fortran-unit-dims.npy", npy((1,) * 30 + (4,) + (1,) * 30 + (4,), "|u1", True))

# .npz archives: a __metadata__ member, duplicate members, traversal names, an empty archive,
# Fortran order with unit dimensions, a member of 65 dimensions.
put("NpzReaderFuzz", "metadata-member.npz", npz([("__metadata__.npy", npy((3,))), ("w.npy", npy((2,)))]))
put("NpzReaderFuzz", "duplicate-members.npz", npz([("w.npy", npy((2,)))], duplicate=True))
put("NpzReaderFuzz", "traversal-names.npz", npz([("../x.npy", npy((2,))), ("/abs.npy", npy((1,)))]))
put("NpzReaderFuzz", "empty.npz", npz([]))
put("NpzReaderFuzz", "fortran-unit-dims.npz", npz([("f.npy", npy((1,) * 30 + (8,) + (1,) * 30 + (8,), "|u1", True))]))
put("NpzReaderFuzz", "rank65.npz", npz([("r.npy", npy((1,) * 65, "|u1"))]))
put("NpzReaderFuzz", "nfc-nfd.npz", npz([(nfc + ".npy", npy((1,))), (nfd + ".npy", npy((1,)))]))

# safetensors headers: a tensor called __metadata__ twice, control characters in names, NFC and
# NFD spellings of one name, a shape of many numbers and one of 65 dimensions, zero-size tensors.
e = lambda shape, begin, end: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}
put("SafetensorsHeaderFuzz", "control-names.safetensors",
    safetensors({"a\x00b": e([1], 0, 4), "c\nwsamerge: error: x": e([1], 4, 8), "d\x1b[2J": e([1], 8, 12)}, bytes(12)))
put("SafetensorsHeaderFuzz", "nfc-nfd.safetensors", safetensors({nfc: e([1], 0, 4), nfd: e([1], 4, 8)}, bytes(8)))
put("SafetensorsHeaderFuzz", "many-numbers.safetensors", safetensors({"a": e([0] * 2000, 0, 0)}))
put("SafetensorsHeaderFuzz", "rank65.safetensors", safetensors({"a": e([1] * 65, 0, 4)}, bytes(4)))
put("SafetensorsHeaderFuzz", "zero-size.safetensors", safetensors({f"t{i}": e([0], 0, 0) for i in range(200)}))
raw = b'{"__metadata__":{"a":"b"},"__metadata__":{"c":"d"}}'
put("SafetensorsHeaderFuzz", "metadata-twice.safetensors", struct.pack("<Q", len(raw)) + raw)

# JSON: scope documents (a tensor without a fused scope, NFC/NFD names, a duplicate key deep
# inside), deep nesting, a name the safetensors writer must refuse.
doc = {"models": ["a", "b"], "tensors": [{"name": nfc, "fused": {"mean": 0.0, "std": 1.0}},
                                          {"name": nfd, "fused": {"mean": None, "std": None}}, {"name": "x"}]}
put("JSONReaderFuzz", "scope.json", json.dumps(doc, ensure_ascii=False).encode())
put("JSONReaderFuzz", "duplicate-deep.json", b'{"tensors":[{"name":"a","fused":{"mean":0,"mean":1,"std":1}}]}')
put("JSONReaderFuzz", "deep.json", b"[" * 127 + b"]" * 127)
put("JSONReaderFuzz", "too-deep.json", b"[" * 129 + b"]" * 129)
put("JSONReaderFuzz", "metadata-name", b"__metadata__")
put("JSONReaderFuzz", "nul-name", b"a\x00b")
