#!/usr/bin/env python3
"""Every merge method of wsamerge beside mergekit 0.1.5 (`mergekit-yaml`, on the CPU), and the peak
memory of the methods on one 2 GB tensor.

usage: bench/methods.py --bin .build/release/wsamerge [--rounds 3] [--layers 2] [--hidden 512]
                        [--vocab 8000] [--workdir /tmp/wsamerge-bench-methods] [--keep]
                        [--methods ties,slerp,...] [--no-mergekit] [--big-elements 536870912]
                        [--no-big] [--bench-venv .bench-venv]

1. Generates a base and three fine-tunes of it with shared/bench/gen_checkpoints.py --models 4
   --finetunes (bf16, llama-shaped; small by default so that mergekit's rounds take seconds), and a
   model directory per checkpoint for mergekit (config.json + a symlink to the safetensors file).
2. Installs mergekit 0.1.5 from PyPI into the bench's own virtual environment (.bench-venv; torch
   from PyPI, the CUDA build: about 6 GB and a few minutes). If that fails, says so and runs the
   wsamerge side only.
3. For every method wsamerge registers, runs `wsamerge fuse` and `mergekit-yaml` with the same
   method, base, weights and parameters (recipe: dtype float32, out_dtype bfloat16; `--no-cuda`),
   plus `wsamerge fuse --strategy average` of exactly the same input files as the in-run baseline,
   one job after the other in each round, rounds interleaved, so a noisy shared machine slows all
   alike. Prints median wall time, peak RSS (of the child, from wait4) and the ratios
   mergekit / wsamerge (target ≥ 20×) and method / average (target ≤ 2.5× for the task-vector
   family and slerp). mergekit's fixed cost (starting Python, importing torch and mergekit) is
   measured as its own job, so the ratio can also be read without it.
4. Writes a base and two fine-tunes of one F32 tensor of --big-elements elements (2 GiB each by
   default) streamed chunk by chunk into safetensors, and reports the wall time and peak RSS of
   `wsamerge fuse` with every method whose memory could grow with a tensor (whole-tensor
   selections, quantiles, per-row work, norms; linear and passthrough are average's one pass) on
   them (target ≤ 512 MB).
   Skipped, with a message, when the disk lacks the space.

Not a test: nothing fails on speed. Generated files stay in --workdir (removed unless --keep).
"""
import argparse, json, os, resource, shutil, statistics, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--hidden", type=int, default=512)
ap.add_argument("--vocab", type=int, default=8000)
ap.add_argument("--workdir", default="/tmp/wsamerge-bench-methods")
ap.add_argument("--keep", action="store_true", help="keep generated checkpoints for the next run")
ap.add_argument("--methods", default="", help="comma-separated subset of methods (default: all)")
ap.add_argument("--gen", default="", help="gen_checkpoints.py (default: shared/bench/ beside the repo)")
ap.add_argument("--bench-venv", default=os.path.join(REPO, ".bench-venv"))
ap.add_argument("--no-mergekit", action="store_true", help="run the wsamerge side only")
ap.add_argument("--big-elements", type=int, default=512 * 1024 * 1024, help="elements of the big F32 tensor")
ap.add_argument("--no-big", action="store_true", help="skip the big-tensor memory runs")
ap.add_argument("--big-only", action="store_true", help="run the big-tensor memory runs only")
a = ap.parse_args()
BIN = os.path.abspath(a.bin)
PY = sys.executable
MERGEKIT_VERSION = "0.1.5"


def find_gen():
    for p in ([a.gen] if a.gen else []) + [os.path.join(os.path.dirname(REPO), "shared/bench/gen_checkpoints.py"),
                                             "/work/shared/bench/gen_checkpoints.py"]:
        if p and os.path.exists(p):
            return p
    sys.exit("gen_checkpoints.py not found: pass --gen PATH")


# --- the methods ------------------------------------------------------------------------------
# Each entry: (files read: "base" + which fine-tunes, wsamerge arguments, mergekit recipe parts).
# Weights are 1 for every input; the sparsifying methods keep half of each task vector.
TV_FAMILY = {"task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
             "della_linear", "della"}
TARGET_VS_AVERAGE = TV_FAMILY | {"slerp"}


def methods():
    M = {}
    three = [1, 2, 3]
    for m in sorted(TV_FAMILY) + ["sce", "ram", "ramplus_tl"]:
        per = {}
        if m in ("ties", "dare_linear", "dare_ties", "della_linear", "della", "breadcrumbs", "breadcrumbs_ties"):
            per["density"] = 0.5
        if m.startswith("breadcrumbs"):
            per["gamma"] = 0.01
        if m.startswith("della"):
            per["epsilon"] = 0.15
        shared = {}
        if m == "sce":
            shared = {"select_topk": 0.5}
        weights = m not in ("sce", "ram", "ramplus_tl")
        M[m] = dict(base=True, models=three, weights=weights, per=per, shared=shared)
    M["linear"] = dict(base=False, models=three, weights=True, per={}, shared={})
    M["passthrough"] = dict(base=False, models=[1], weights=False, per={}, shared={})
    M["slerp"] = dict(base=True, models=[1], weights=False, per={}, shared={"t": 0.5})
    M["nuslerp"] = dict(base=True, models=[1, 2], weights=True, per={}, shared={})
    M["multislerp"] = dict(base=True, models=three, weights=True, per={}, shared={})
    M["karcher"] = dict(base=False, models=[0, 1, 2, 3], weights=False, per={}, shared={})
    M["model_stock"] = dict(base=True, models=three, weights=False, per={}, shared={})
    M["nearswap"] = dict(base=True, models=[1], weights=False, per={}, shared={"t": 0.001})
    M["arcee_fusion"] = dict(base=True, models=[1], weights=False, per={}, shared={})
    return M


ORDER = ["task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della_linear",
         "della", "linear", "passthrough", "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "nearswap",
         "sce", "arcee_fusion", "ram", "ramplus_tl"]


def wsamerge_cmd(name, spec, files, out):
    cmd = [BIN, "fuse", "--strategy", name]
    if spec["base"]:
        cmd += ["--base", files[0]]
    cmd += [files[i] for i in spec["models"]]
    if spec["weights"]:
        cmd += ["--weights", ",".join("1" for _ in spec["models"])]
    for k, v in spec["per"].items():
        cmd += ["--param", f"{k}=" + ",".join(str(v) for _ in spec["models"])]
    for k, v in spec["shared"].items():
        cmd += ["--param", f"{k}={v}"]
    return cmd + ["-o", out]


def mergekit_recipe(name, spec, dirs):
    models = []
    for i in spec["models"]:
        p = dict(spec["per"])
        if spec["weights"]:
            p["weight"] = 1.0
        models.append({"model": dirs[i], "parameters": p} if p else {"model": dirs[i]})
    r = {"merge_method": name, "models": models, "dtype": "float32", "out_dtype": "bfloat16"}
    if spec["base"]:
        r["base_model"] = dirs[0]
    if spec["shared"]:
        r["parameters"] = dict(spec["shared"])
    return r


# --- processes ----------------------------------------------------------------------------------
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
MK_ENV = dict(CLEAN_ENV, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
              TOKENIZERS_PARALLELISM="false")


def run(cmd, out=None, env=None):
    """(wall seconds, peak RSS MB, None) of one child process, or (None, None, error text)."""
    if out and os.path.isdir(out):
        shutil.rmtree(out)
    elif out and os.path.exists(out):
        os.unlink(out)
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode(errors="replace")  # drained while it runs, so a chatty child cannot block
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        lines = [l for l in err.strip().splitlines() if l.strip()]
        return None, None, (lines[-1] if lines else f"exit status {status}")
    return wall, usage.ru_maxrss / 1024, None


# --- mergekit in its own venv -------------------------------------------------------------------
def ensure_mergekit():
    """Path of mergekit-yaml, installing mergekit into the bench venv if needed; None if impossible."""
    venv = os.path.abspath(a.bench_venv)
    exe, py = os.path.join(venv, "bin", "mergekit-yaml"), os.path.join(venv, "bin", "python")
    if os.path.exists(exe):
        v = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                           capture_output=True, text=True)
        if v.returncode == 0 and v.stdout.strip() == MERGEKIT_VERSION:
            return exe
    if os.path.abspath(venv) == os.path.join(REPO, ".venv"):
        sys.exit("refusing to install mergekit into the test venv .venv")
    print(f"installing mergekit {MERGEKIT_VERSION} (PyPI; torch is the CUDA build: ~6 GB, a few minutes) "
          f"into {venv} …", file=sys.stderr)
    try:
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"mergekit=={MERGEKIT_VERSION}"], check=True, timeout=3600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        print(f"\nmergekit {MERGEKIT_VERSION} could not be installed ({e}); running the wsamerge side only.\n",
              file=sys.stderr)
        return None
    return exe if os.path.exists(exe) else None


# --- inputs ---------------------------------------------------------------------------------------
def generate():
    d = os.path.join(a.workdir, f"l{a.layers}-h{a.hidden}-v{a.vocab}")
    files = [os.path.join(d, f"m{i}.safetensors") for i in range(4)]
    if not all(os.path.exists(f) for f in files):
        print(f"generating a base and 3 fine-tunes in {d} …", file=sys.stderr)
        subprocess.run([PY, find_gen(), d, "--models", "4", "--finetunes", "--layers", str(a.layers),
                        "--hidden", str(a.hidden), "--vocab", str(a.vocab), "--dtype", "bf16"],
                       check=True, stdout=subprocess.DEVNULL)
    heads = max(1, a.hidden // 64)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
              "intermediate_size": int(a.hidden * 2.75), "num_hidden_layers": a.layers,
              "num_attention_heads": heads, "num_key_value_heads": heads, "vocab_size": a.vocab,
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
              "hidden_act": "silu", "torch_dtype": "bfloat16"}
    dirs = []
    for i, f in enumerate(files):
        md = os.path.join(d, f"hf{i}")
        os.makedirs(md, exist_ok=True)
        link = os.path.join(md, "model.safetensors")
        if not os.path.lexists(link):
            os.symlink(f, link)
        with open(os.path.join(md, "config.json"), "w") as fp:
            json.dump(config, fp)
        dirs.append(md)
    return files, dirs


BIG_WRITER = r"""
import json, struct, sys
import numpy as np
d, n = sys.argv[1], int(sys.argv[2])
rows = 1 << 14 if n % (1 << 14) == 0 else 1
shape = [rows, n // rows]
header = json.dumps({"__metadata__": {"format": "pt"},
                     sys.argv[3]: {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * n]}}).encode()
header += b" " * (-len(header) % 8)
fps = [open(f"{d}/big{i}.safetensors", "wb") for i in range(3)]
for fp in fps:
    fp.write(struct.pack("<Q", len(header)) + header)
chunk = 1 << 24
for c, start in enumerate(range(0, n, chunk)):
    m = min(chunk, n - start)
    b = np.random.default_rng([7, c]).standard_normal(m, dtype=np.float32) * np.float32(0.02)
    fps[0].write(b.tobytes())
    for i in (1, 2):
        r = np.random.default_rng([7, c, i])
        delta = r.standard_normal(m, dtype=np.float32) * np.float32(0.001)
        sel = r.random(m, dtype=np.float32) < 0.1
        delta[sel] += r.standard_normal(int(sel.sum()), dtype=np.float32) * np.float32(0.006)
        fps[i].write((b + delta).tobytes())
for fp in fps:
    fp.close()
"""


def write_big(d, n):
    """A base and two fine-tunes of one F32 tensor of n elements, streamed in chunks (bounded memory).
    Written by a child process: a child's ru_maxrss starts at its parent's high-water mark (Linux
    carries it over fork and exec), so the parent must stay small for the RSS figures to be wsamerge's."""
    paths = [os.path.join(d, f"big{i}.safetensors") for i in range(3)]
    rows = 1 << 14 if n % (1 << 14) == 0 else 1
    header = json.dumps({"__metadata__": {"format": "pt"},
                         BIG_NAME: {"dtype": "F32", "shape": [rows, n // rows], "data_offsets": [0, 4 * n]}}).encode()
    size = 8 + len(header) + (-len(header) % 8) + 4 * n
    if all(os.path.exists(p) and os.path.getsize(p) == size for p in paths):
        return paths
    print(f"writing 3 × {4 * n / 2**30:.1f} GiB (one F32 tensor [{rows}, {n // rows}]) in {d} …", file=sys.stderr)
    subprocess.run([PY, "-c", BIG_WRITER, d, str(n), BIG_NAME], check=True)
    return paths


BIG_NAME = "model.layers.0.mlp.up_proj.weight"


def registered():
    out = subprocess.run([BIN, "strategies"], capture_output=True, text=True, check=True).stdout
    names = set()
    for s in json.loads(out):
        names.add(s["identifier"])
        names.update(s.get("aliases", []))
    return names


def main():
    os.makedirs(a.workdir, exist_ok=True)
    have = registered()
    if a.big_only:
        report = {}
        big(have, report)
        floor()
        if not a.keep:
            shutil.rmtree(a.workdir, ignore_errors=True)
        return
    M = methods()
    wanted = [m for m in ORDER if not a.methods or m in a.methods.split(",")]
    missing = [m for m in wanted if m not in have]
    wanted = [m for m in wanted if m in have]
    if missing:
        print(f"not registered in this wsamerge, skipped: {', '.join(missing)}", file=sys.stderr)
    files, dirs = generate()
    mk = None if a.no_mergekit else ensure_mergekit()
    out = os.path.join(a.workdir, "out.safetensors")
    mk_out = os.path.join(a.workdir, "out-mergekit")
    recipes = os.path.join(a.workdir, "recipes")
    os.makedirs(recipes, exist_ok=True)

    jobs = {}  # name -> (cmd, output path, env)
    avg_of = {}  # method -> name of its average job
    for m in wanted:
        spec = M[m]
        ids = ([0] if spec["base"] else []) + spec["models"]
        avg = "average of " + ",".join(f"m{i}" for i in ids)
        jobs.setdefault(avg, ([BIN, "fuse", "--strategy", "average"] + [files[i] for i in ids] + ["-o", out], out, None))
        avg_of[m] = avg
    if mk:
        mk_py = os.path.join(os.path.dirname(mk), "python")
        jobs["mergekit startup"] = ([mk_py, "-c", "import torch, mergekit.merge, mergekit.config"], None, MK_ENV)
    for m in wanted:
        spec = M[m]
        jobs[f"wsamerge {m}"] = (wsamerge_cmd(m, spec, files, out), out, None)
        if mk:
            recipe = os.path.join(recipes, f"{m}.yml")
            with open(recipe, "w") as fp:
                json.dump(mergekit_recipe(m, spec, dirs), fp, indent=1)  # JSON is YAML
            jobs[f"mergekit {m}"] = ([mk, recipe, mk_out, "--no-cuda", "--random-seed", "0", "--no-copy-tokenizer",
                                      "--no-write-model-card", "--quiet"], mk_out, MK_ENV)

    subprocess.run(["cat"] + files, stdout=subprocess.DEVNULL)  # warm the page cache
    times = {k: [] for k in jobs}; rss = {k: 0.0 for k in jobs}; errors = {}
    t0 = time.time()
    for r in range(a.rounds):
        for name, (cmd, o, env) in jobs.items():
            if name in errors:
                continue
            wall, peak, err = run(cmd, o, env)
            if err:
                errors[name] = err
                print(f"  {name}: failed: {err}", file=sys.stderr)
                continue
            times[name].append(wall); rss[name] = max(rss[name], peak)
        print(f"round {r + 1}/{a.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items() if v}

    size = os.path.getsize(files[0]) / 1e6
    print(f"\n{a.layers} layers, hidden {a.hidden}, vocab {a.vocab}: base + 3 fine-tunes of {size:.0f} MB bf16; "
          f"{a.rounds} rounds interleaved, {os.cpu_count()} cores; medians (s), peak RSS (MB):\n")
    startup = med.get("mergekit startup")
    if startup:
        print(f"mergekit startup (python -c 'import torch, mergekit.merge'): {startup:.2f} s, "
              f"{rss['mergekit startup']:.0f} MB\n")
    hdr = (f"{'method':17} {'wsamerge':>9} {'RSS':>5} {'average':>8} {'/avg':>6} {'mergekit':>9} {'RSS':>6} "
           f"{'mk/ws':>7} {'(mk−start)/ws':>14}")
    print(hdr)
    rows = []
    for m in wanted:
        w, av, k = med.get(f"wsamerge {m}"), med.get(avg_of[m]), med.get(f"mergekit {m}")
        f = lambda x, fmt: format(x, fmt) if x is not None else "—"
        ratio_avg = w / av if w and av else None
        ratio_mk = k / w if k and w else None
        # mergekit's time less its median startup; noisy, so shown only when clearly positive
        ratio_mk2 = (k - startup) / w if k and w and startup and k - startup > 0.1 * startup else None
        flag = " *" if ratio_avg and m in TARGET_VS_AVERAGE and ratio_avg > 2.5 else ""
        flag += " !" if ratio_mk is not None and ratio_mk < 20 else ""
        print(f"{m:17} {f(w, '9.3f')} {f(rss.get(f'wsamerge {m}') if w else None, '5.0f')} {f(av, '8.3f')} "
              f"{f(ratio_avg, '6.2f')} {f(k, '9.2f')} {f(rss.get(f'mergekit {m}') if k else None, '6.0f')} "
              f"{f(ratio_mk, '7.1f')} {f(ratio_mk2, '14.1f')}{flag}")
        rows.append(dict(method=m, wsamerge=w, average=av, average_job=avg_of[m], mergekit=k,
                         ws_rss=rss.get(f"wsamerge {m}"), mk_rss=rss.get(f"mergekit {m}"),
                         ws_over_avg=ratio_avg, mk_over_ws=ratio_mk, mk_minus_startup_over_ws=ratio_mk2,
                         error_wsamerge=errors.get(f"wsamerge {m}"), error_mergekit=errors.get(f"mergekit {m}")))
    print("\n* method / average above 2.5 (target for the task-vector family and slerp); ! mergekit / wsamerge below 20")
    for name in sorted(k for k in jobs if k.startswith("average")):
        if name in med:
            print(f"{name:28} {med[name]:.3f} s  {rss[name]:.0f} MB")
    for name, err in errors.items():
        print(f"failed: {name}: {err}")
    if not mk:
        print("mergekit: not run" + (" (--no-mergekit)" if a.no_mergekit else " (not installed)"))
    report = dict(rows=rows, startup=startup, rounds=a.rounds, times=times, rss=rss)

    if not a.no_big:
        big(have, report)
    floor()
    with open(os.path.join(a.workdir, "methods.json"), "w") as fp:
        json.dump(report, fp, indent=1)
    for o in (out, mk_out):
        if os.path.isdir(o):
            shutil.rmtree(o)
        elif os.path.exists(o):
            os.unlink(o)
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


def floor():
    """This script's own peak RSS: a lower bound of every child's figure (see write_big)."""
    print(f"\n(this script's own peak RSS, a floor under every child's figure: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


def big(have, report):
    n = a.big_elements
    d = os.path.join(a.workdir, "big")
    need = 4 * 4 * n + (1 << 28)  # three inputs and one output, plus slack
    os.makedirs(d, exist_ok=True)
    present = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    free = shutil.disk_usage(d).free
    if free + present < need:
        print(f"\nbig tensor: skipped: needs {need / 1e9:.1f} GB on {d}'s disk, {free / 1e9:.1f} GB free")
        return
    paths = write_big(d, n)
    out = os.path.join(d, "out.safetensors")
    subprocess.run(["cat"] + paths, stdout=subprocess.DEVNULL)
    # Every method whose memory could grow with the tensor: whole-tensor selections, quantiles,
    # per-row work and norms (linear and passthrough are `average`'s single pass).
    w2 = ["--weights", "1,1"]
    cases = [("average", [], False), ("task_arithmetic", w2, True), ("ties", w2 + ["--param", "density=0.5"], True),
             ("dare_ties", w2 + ["--param", "density=0.5"], True),
             ("breadcrumbs", w2 + ["--param", "density=0.5", "--param", "gamma=0.01"], True),
             ("della", w2 + ["--param", "density=0.5", "--param", "epsilon=0.15"], True),
             ("slerp", ["--param", "t=0.5"], True), ("nuslerp", w2, True), ("multislerp", w2, True),
             ("karcher", [], False), ("model_stock", [], True), ("nearswap", ["--param", "t=0.001"], True),
             ("sce", ["--param", "select_topk=0.5"], True), ("arcee_fusion", [], True), ("ram", [], True),
             ("ramplus_tl", [], True)]
    print(f"\nbig tensor: one F32 tensor of {n} elements ({4 * n / 2**30:.1f} GiB per file):")
    report["big"] = {}
    for m, extra, base in cases:
        if m not in have:
            print(f"  {m:16} not registered, skipped")
            continue
        inputs = paths[1:2] if m in ("arcee_fusion", "slerp", "nearswap") else paths[1:]
        cmd = [BIN, "fuse", "--strategy", m] + (["--base", paths[0]] if base else [paths[0]]) + inputs + extra + ["-o", out]
        wall, peak, err = run(cmd, out)
        if err:
            print(f"  {m:16} failed: {err}")
            report["big"][m] = dict(error=err)
            continue
        flag = "" if peak <= 512 else "  (over the 512 MB target)"
        print(f"  {m:16} {wall:7.2f} s  peak RSS {peak:5.0f} MB{flag}")
        report["big"][m] = dict(wall=wall, rss=peak)
    if os.path.exists(out):
        os.unlink(out)


main()
