#!/usr/bin/env python3
"""Side-by-side benchmark of wsamerge against the numpy + safetensors script users write instead.

usage: bench/run.py --bin .build/release/wsamerge [--layers 12] [--rounds 5] [--memory-layers 48]
                    [--workdir /tmp/wsamerge-bench] [--keep]

Generates three synthetic llama-shaped bf16 checkpoints (about 440 MB each at 12 layers, hidden
1024, vocab 32000; Gaussian weights whose scale differs per model) plus non-negative Fisher
files, warms the page cache, then runs every job (wsamerge, the numpy script, and `cat` of the
same input bytes with and without writing an output of the same size) once per round, rounds
interleaved, so a noisy
shared machine slows every job alike. Prints the median wall time, ratios and peak RSS of each
job (the RSS of a child process, from wait4). With --memory-layers, also runs `fuse` on a set of
that many layers to show that peak memory does not grow with model size. Not a test: nothing
fails on speed.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--layers", type=int, default=12)
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--memory-layers", type=int, default=0)
ap.add_argument("--workdir", default="/tmp/wsamerge-bench")
ap.add_argument("--keep", action="store_true", help="keep generated checkpoints for the next run")
a = ap.parse_args()
BIN = os.path.abspath(a.bin)
PY = sys.executable

GENERATE = r"""
import os, sys
import numpy as np, ml_dtypes
from safetensors.numpy import save_file
out, layers, fisher = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fisher"; hidden, vocab = 1024, 32000; inter = int(hidden * 2.75)
os.makedirs(out, exist_ok=True)
for i in range(3):
    r = np.random.default_rng(i); scale = (1.0, 1.3, 0.8)[i]; t = {}; f = {}
    def w(name, shape, std, mean=0.0):
        x = r.standard_normal(shape, dtype=np.float32) * (std * scale) + mean
        t[name] = x.astype(ml_dtypes.bfloat16)
        if fisher: f[name] = (x * x).astype(ml_dtypes.bfloat16)
    w("model.embed_tokens.weight", (vocab, hidden), 0.02)
    for l in range(layers):
        p = f"model.layers.{l}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w(p + f"self_attn.{n}.weight", (hidden, hidden), 0.02)
        w(p + "mlp.gate_proj.weight", (inter, hidden), 0.02)
        w(p + "mlp.up_proj.weight", (inter, hidden), 0.02)
        w(p + "mlp.down_proj.weight", (hidden, inter), 0.02)
        w(p + "input_layernorm.weight", (hidden,), 0.05, 1.0)
        w(p + "post_attention_layernorm.weight", (hidden,), 0.05, 1.0)
    w("model.norm.weight", (hidden,), 0.05, 1.0)
    w("lm_head.weight", (vocab, hidden), 0.02)
    save_file(t, f"{out}/m{i}.safetensors", metadata={"format": "pt"})
    if fisher: save_file(f, f"{out}/f{i}.safetensors")
"""

# The script a user writes instead: numpy + safetensors, float32 accumulation, input dtype kept.
PEER = r"""
import json, sys
import numpy as np, ml_dtypes
from safetensors import safe_open
from safetensors.numpy import save_file
if sys.argv[1] == "stats":
    with safe_open(sys.argv[2], "np") as f:
        for k in f.keys():
            t = f.get_tensor(k).astype(np.float64)
            print(json.dumps({"name": k, "mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()), "max": float(t.max())}))
else:
    out, paths = sys.argv[2], sys.argv[3:]
    files = [safe_open(p, "np") for p in paths]; result = {}
    for k in files[0].keys():
        first = files[0].get_tensor(k); acc = first.astype(np.float32)
        for f in files[1:]:
            acc += f.get_tensor(k).astype(np.float32)
        result[k] = (acc / len(files)).astype(first.dtype)
    save_file(result, out, metadata={"format": "pt"})
"""


def generate(layers, fisher=True):
    d = os.path.join(a.workdir, f"l{layers}")
    if not os.path.exists(os.path.join(d, "f2.safetensors" if fisher else "m2.safetensors")):
        print(f"generating 3 checkpoints with {layers} layers in {d} …", file=sys.stderr)
        subprocess.run([PY, "-c", GENERATE, d, str(layers), "fisher" if fisher else "-"], check=True)
    return d


# Some machines here set OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE, which slow a current numpy: the
# numpy baseline runs without them so that it is not handicapped.
PEER_ENV = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


def run(cmd, out=None):
    """Wall time and peak RSS (MB) of one child process."""
    if out and os.path.exists(out):
        os.unlink(out)
    start = time.perf_counter()
    env = PEER_ENV if cmd[0] == PY else None
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    err = p.stderr.read().decode()
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024


def main():
    os.makedirs(a.workdir, exist_ok=True)
    d = generate(a.layers)
    m = [f"{d}/m{i}.safetensors" for i in range(3)]
    f = [f"{d}/f{i}.safetensors" for i in range(3)]
    out = os.path.join(a.workdir, "out.safetensors")
    jobs = {
        "cat 3 inputs": ["sh", "-c", f"cat {' '.join(m)} > /dev/null"],
        # The stretch baseline: cat of a fuse's input bytes plus writing an output of the same size
        # (through the page cache and without fsync, so cheaper than wsamerge's durable write).
        "cat 3 inputs + output": ["sh", "-c", f"cat {' '.join(m)} > /dev/null && cat {m[0]} > {out}"],
        "cat 6 inputs + output": ["sh", "-c", f"cat {' '.join(m + f)} > /dev/null && cat {m[0]} > {out}"],
        "numpy stats": [PY, "-c", PEER, "stats", m[0]],
        "wsamerge stats": [BIN, "stats", m[0]],
        "numpy average": [PY, "-c", PEER, "average", out] + m,
        "wsamerge fuse average": [BIN, "fuse", "--strategy", "average"] + m + ["-o", out],
        "wsamerge fuse wsa": [BIN, "fuse", "--strategy", "wsa"] + m + ["-o", out],
        "wsamerge fuse fisher": [BIN, "fuse", "--strategy", "fisher"] + m + [a for x in f for a in ("--fisher", x)] + ["-o", out],
    }
    run(jobs["cat 3 inputs"]); run(["sh", "-c", f"cat {' '.join(f)} > /dev/null"])  # warm the page cache
    times = {k: [] for k in jobs}; rss = {k: 0.0 for k in jobs}
    for r in range(a.rounds):
        for name, cmd in jobs.items():
            wall, peak = run(cmd, out)
            times[name].append(wall); rss[name] = max(rss[name], peak)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    size = sum(os.path.getsize(x) for x in m) / 1e6
    print(f"\n{a.layers} layers, 3 × {size / 3:.0f} MB bf16, {a.rounds} rounds interleaved, {os.cpu_count()} cores; medians:\n")
    print(f"{'job':26} {'median s':>9} {'peak RSS MB':>12}")
    for k in jobs:
        print(f"{k:26} {med[k]:9.3f} {rss[k]:12.0f}")
    ratios = [
        ("fuse average vs numpy average (target ≥ 5×)", med["numpy average"] / med["wsamerge fuse average"]),
        ("stats vs numpy stats (target ≥ 8×)", med["numpy stats"] / med["wsamerge stats"]),
        ("fuse wsa / fuse average (target ≤ 2)", med["wsamerge fuse wsa"] / med["wsamerge fuse average"]),
        ("fuse fisher / fuse average (target ≤ 2)", med["wsamerge fuse fisher"] / med["wsamerge fuse average"]),
        ("fuse average / cat of inputs (no output)", med["wsamerge fuse average"] / med["cat 3 inputs"]),
        ("fuse average / cat + output (stretch ≤ 2)", med["wsamerge fuse average"] / med["cat 3 inputs + output"]),
        ("fuse wsa / cat + output (stretch ≤ 2)", med["wsamerge fuse wsa"] / med["cat 3 inputs + output"]),
        ("fuse fisher / cat of 6 + output (stretch ≤ 2)", med["wsamerge fuse fisher"] / med["cat 6 inputs + output"]),
    ]
    print()
    for name, value in ratios:
        print(f"{name:48} {value:6.2f}")
    print(f"{'peak RSS of fuse average (target ≤ 512 MB)':48} {rss['wsamerge fuse average']:6.0f} MB")
    if a.memory_layers:
        d2 = generate(a.memory_layers, fisher=False)
        m2 = [f"{d2}/m{i}.safetensors" for i in range(3)]
        size2 = sum(os.path.getsize(x) for x in m2) / 1e6
        wall, peak = run([BIN, "fuse"] + m2 + ["-o", out], out)
        print(f"\nmemory: fuse of 3 × {size2 / 3:.0f} MB ({a.memory_layers} layers): peak RSS {peak:.0f} MB "
              f"vs {rss['wsamerge fuse average']:.0f} MB at {a.layers} layers ({wall:.2f} s)")
    if os.path.exists(out):
        os.unlink(out)
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


main()
