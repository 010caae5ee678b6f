#!/usr/bin/env python3
"""Weight Scope Alignment across two federated rounds, with numpy and wsamerge.

A small MLP (numpy, manual backprop) is trained by four clients from one shared
initialisation, each with its own learning rate, weight decay and skewed label
subset. wsamerge measures their weight scopes, writes the fused target scope and
merges them (average and its own post-hoc `wsa` rescale). In round two every
client starts from the round-one average and trains again, once with the paper's
WSA regulariser (λ Σ_l KL(N(μ_l, σ_l²) ‖ N(μ_t, σ_t²)) toward target.json) and
once without, and the results are merged again.

    python run.py [--wsamerge PATH] [--quick] [--out DIR] [--backend auto|numpy|torch]

Only numpy is needed. The regulariser comes from the wsamerge Python package (python/ in this
repository, or the installed wheel): its numpy path (wsamerge.regularizer) by default, and
wsamerge.torch.WSARegularizer when torch is installed, in which case the clients train in torch
(autograd, torch.optim.SGD) on the same data, initialisation and batches. Everything is seeded:
the same command prints the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# The wsamerge Python package of this checkout (python/), else an installed wheel's.
if os.path.isdir(os.path.join(ROOT, "python", "wsamerge")):
    sys.path.insert(0, os.path.join(ROOT, "python"))
from wsamerge import load_target  # noqa: E402
from wsamerge.regularizer import scope_kl_and_grad, wsa_penalty  # noqa: E402

# ---------------------------------------------------------------------------
# Settings (chosen once, before looking at any result)
# ---------------------------------------------------------------------------

SEEDS = [0, 1, 2, 3, 4]  # the whole experiment (data, initialisation, batches) is repeated per seed
NUM_CLASSES = 10
DIM = 16
BLOBS_PER_CLASS = 4
NOISE = 0.9
HIDDEN = 64
BATCH = 32
LAMBDA = 1.0            # WSA regulariser strength λ
DOMINANT_SHARE = 0.9    # share of a client's samples drawn from its dominant classes

# Each client: learning rate, weight decay (L2 added to the gradient), dominant classes.
CLIENTS = [
    dict(lr=0.02, wd=0.0, classes=[0, 1, 2]),
    dict(lr=0.05, wd=1e-4, classes=[3, 4, 5]),
    dict(lr=0.10, wd=1e-3, classes=[6, 7]),
    dict(lr=0.20, wd=5e-3, classes=[8, 9]),
]

FULL = dict(seeds=SEEDS, train_per_client=2000, test=5000, round1_steps=2000, round2_steps=1000)
QUICK = dict(seeds=SEEDS[:2], train_per_client=200, test=500, round1_steps=30, round2_steps=10)


# ---------------------------------------------------------------------------
# Data: a Gaussian-mixture classification task (each class is a few blobs)
# ---------------------------------------------------------------------------

def make_task(rng: np.random.Generator):
    centers = rng.normal(0.0, 1.0, size=(NUM_CLASSES, BLOBS_PER_CLASS, DIM))

    def sample(labels: np.ndarray) -> np.ndarray:
        blob = rng.integers(0, BLOBS_PER_CLASS, size=labels.shape[0])
        x = centers[labels, blob] + rng.normal(0.0, NOISE, size=(labels.shape[0], DIM))
        return x.astype(np.float32)

    return sample


def client_labels(rng: np.random.Generator, classes: list[int], n: int) -> np.ndarray:
    """n labels: DOMINANT_SHARE from `classes`, the rest uniform over the other classes."""
    others = [c for c in range(NUM_CLASSES) if c not in classes]
    n_dom = int(round(n * DOMINANT_SHARE))
    labels = np.concatenate([rng.choice(classes, size=n_dom), rng.choice(others, size=n - n_dom)])
    rng.shuffle(labels)
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------
# Model: MLP DIM -> HIDDEN -> HIDDEN -> NUM_CLASSES, ReLU, PyTorch-style (out, in) weights
# ---------------------------------------------------------------------------

SIZES = [DIM, HIDDEN, HIDDEN, NUM_CLASSES]
NUM_LAYERS = len(SIZES) - 1


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    params = {}
    for i in range(NUM_LAYERS):
        fan_in, fan_out = SIZES[i], SIZES[i + 1]
        params[f"layers.{i}.weight"] = (rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_out, fan_in))).astype(np.float32)
        params[f"layers.{i}.bias"] = np.zeros(fan_out, dtype=np.float32)
    return params


def forward(params, x):
    acts = [x]
    h = x
    for i in range(NUM_LAYERS):
        z = h @ params[f"layers.{i}.weight"].T + params[f"layers.{i}.bias"]
        h = np.maximum(z, 0.0) if i < NUM_LAYERS - 1 else z
        acts.append(h)
    return acts


def loss_and_grads(params, x, y):
    acts = forward(params, x)
    logits = acts[-1]
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = -float(np.mean(np.log(p[np.arange(n), y] + 1e-12)))
    delta = p
    delta[np.arange(n), y] -= 1.0
    delta /= n
    grads = {}
    for i in reversed(range(NUM_LAYERS)):
        grads[f"layers.{i}.weight"] = delta.T @ acts[i]
        grads[f"layers.{i}.bias"] = delta.sum(axis=0)
        if i > 0:
            delta = (delta @ params[f"layers.{i}.weight"]) * (acts[i] > 0)
    return loss, grads


def accuracy(params, x, y) -> float:
    return float(np.mean(np.argmax(forward(params, x)[-1], axis=1) == y))


# ---------------------------------------------------------------------------
# The WSA regulariser: λ Σ_l KL(N(μ_l, σ_l²) ‖ N(μ_t, σ_t²)) over the weight matrices, from the
# wsamerge package (wsamerge.regularizer in numpy, wsamerge.torch.WSARegularizer in torch)
# ---------------------------------------------------------------------------

def check_regulariser_gradient() -> float:
    """The analytic gradient of wsamerge.regularizer against central finite differences on a
    random matrix; returns the largest relative error."""
    rng = np.random.default_rng(7)
    w = rng.normal(0.3, 0.8, size=(5, 4))
    mu_t, sigma_t = -0.1, 0.5
    _, g = scope_kl_and_grad(w, mu_t, sigma_t)
    eps = 1e-6
    worst = 0.0
    for idx in np.ndindex(*w.shape):
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        num = (scope_kl_and_grad(wp, mu_t, sigma_t)[0] - scope_kl_and_grad(wm, mu_t, sigma_t)[0]) / (2 * eps)
        worst = max(worst, abs(num - g[idx]) / max(abs(num), 1e-8))
    return worst


def check_torch_regulariser() -> float:
    """WSARegularizer's autograd gradient against the numpy analytic one; the largest relative error."""
    import torch
    from wsamerge.torch import WSARegularizer

    rng = np.random.default_rng(7)
    model = torch.nn.Linear(4, 5).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(rng.normal(0.3, 0.8, size=(5, 4))))
    WSARegularizer(model, {"weight": (-0.1, 0.5)}, lam=LAMBDA)().backward()
    _, g = wsa_penalty({"weight": model.weight.detach().numpy()}, {"weight": (-0.1, 0.5)}, lam=LAMBDA)
    return float(np.max(np.abs(model.weight.grad.numpy() - g["weight"]) / np.maximum(np.abs(g["weight"]), 1e-8)))


# ---------------------------------------------------------------------------
# Local training: minibatch SGD with weight decay, optionally with the WSA regulariser
# ---------------------------------------------------------------------------

def train(params, x, y, lr, wd, steps, rng, target=None, lam=0.0):
    params = {k: v.copy() for k, v in params.items()}
    n = x.shape[0]
    order = rng.permutation(n)
    pos = 0
    for _ in range(steps):
        if pos + BATCH > n:
            order = rng.permutation(n)
            pos = 0
        idx = order[pos:pos + BATCH]
        pos += BATCH
        _, grads = loss_and_grads(params, x[idx], y[idx])
        # The regulariser's gradient for the weight matrices (rank >= 2) that have a target scope.
        reg = wsa_penalty(params, target, lam=lam)[1] if target is not None else {}
        for name, w in params.items():
            g = grads[name]
            if wd:
                g = g + wd * w
            if name in reg:
                g = g + reg[name]
            params[name] = (w - lr * g).astype(np.float32)
    return params


def train_torch(params, x, y, lr, wd, steps, rng, target=None, lam=0.0):
    """`train` in torch: the same model, batches and update (SGD, weight decay added to the
    gradient), with autograd and, given a target, wsamerge.torch.WSARegularizer in the loss."""
    import torch
    from wsamerge.torch import WSARegularizer

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(torch.nn.Linear(SIZES[i], SIZES[i + 1]) for i in range(NUM_LAYERS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
    reg = WSARegularizer(model, target, lam=lam) if target is not None else None
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    n = x.shape[0]
    order = rng.permutation(n)
    pos = 0
    for _ in range(steps):
        if pos + BATCH > n:
            order = rng.permutation(n)
            pos = 0
        idx = torch.from_numpy(order[pos:pos + BATCH])
        pos += BATCH
        h = x[idx]
        for i, layer in enumerate(model.layers):
            h = layer(h)
            if i < NUM_LAYERS - 1:
                h = torch.relu(h)
        loss = torch.nn.functional.cross_entropy(h, y[idx])
        if reg is not None:
            loss = loss + reg()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


def mean_kl_to_target(params, target) -> float:
    kls = [scope_kl_and_grad(w, *target[name])[0] for name, w in params.items() if w.ndim >= 2 and name in target]
    return float(np.mean(kls))


# ---------------------------------------------------------------------------
# wsamerge
# ---------------------------------------------------------------------------

def find_wsamerge(given: str | None) -> str:
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            sys.exit(f"run.py: --wsamerge {given}: not an executable file")
        return given
    for candidate in (os.path.join(ROOT, ".build", "release", "wsamerge"),
                      os.path.join(ROOT, ".build-release", "release", "wsamerge")):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("wsamerge")
    if found:
        return found
    sys.exit("run.py: no wsamerge binary: run `make release` in the repository root or pass --wsamerge PATH")


def wsamerge(binary: str, *args: str) -> dict:
    cmd = [binary, *args, "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run.py: `{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def scope_summary(doc: dict) -> tuple[float, float]:
    """Mean `kl` and mean `std_ratio` over the weight matrices in a `scope` document."""
    rows = [t for t in doc["tensors"] if t["name"].endswith(".weight")]
    return float(np.mean([t["kl"] for t in rows])), float(np.mean([t["std_ratio"] for t in rows]))


def save(path: str, params) -> str:
    np.savez(path, **params)
    return path


def load(path: str):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------

ROWS = [f"client {k} (round 1)" for k in range(len(CLIENTS))] + [
    "round-1 average",
    "round-1 wsa",
    "round-2 average, no regulariser",
    "round-2 wsa, no regulariser",
    "round-2 average, WSA regulariser",
    "round-2 wsa, WSA regulariser",
]
SCOPE_ROWS = ["round 1", "round 2, no regulariser", "round 2, WSA regulariser"]


def run_seed(binary: str, out: str, cfg: dict, seed: int, backend: str) -> dict:
    """One full two-round experiment; returns the accuracies and scope summaries."""
    train_fn = train_torch if backend == "torch" else train
    p = lambda name: os.path.join(out, name)  # noqa: E731
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    sample = make_task(rng)
    data = []
    for c in CLIENTS:
        y = client_labels(rng, c["classes"], cfg["train_per_client"])
        data.append((sample(y), y))
    y_test = np.arange(cfg["test"]) % NUM_CLASSES
    x_test = sample(y_test)
    init = init_params(rng)  # the one shared initialisation

    # ---- round 1: every client trains from the shared initialisation ----
    r1 = []
    for k, c in enumerate(CLIENTS):
        params = train_fn(init, *data[k], c["lr"], c["wd"], cfg["round1_steps"],
                          np.random.default_rng([seed, 1, k]))
        r1.append(save(p(f"client{k}.npz"), params))
    scope1 = wsamerge(binary, "scope", *r1, "-o", p("target.json"), "--force")
    wsamerge(binary, "fuse", "--strategy", "average", *r1, "-o", p("avg.npz"), "--force")
    report = wsamerge(binary, "fuse", "--strategy", "wsa", *r1, "-o", p("wsa.npz"), "--force")
    target = load_target(p("target.json"))
    avg1 = load(p("avg.npz"))

    # ---- round 2: every client starts from the round-1 average, without and with the regulariser ----
    r2_plain, r2_reg = [], []
    for k, c in enumerate(CLIENTS):
        # Same batches for both runs, so the regulariser is the only difference.
        plain = train_fn(avg1, *data[k], c["lr"], c["wd"], cfg["round2_steps"], np.random.default_rng([seed, 2, k]))
        reg = train_fn(avg1, *data[k], c["lr"], c["wd"], cfg["round2_steps"], np.random.default_rng([seed, 2, k]),
                       target=target, lam=LAMBDA)
        r2_plain.append(save(p(f"round2_plain_client{k}.npz"), plain))
        r2_reg.append(save(p(f"round2_wsa_client{k}.npz"), reg))
    scope2_plain = wsamerge(binary, "scope", *r2_plain)
    scope2_reg = wsamerge(binary, "scope", *r2_reg)
    for tag, paths in (("plain", r2_plain), ("wsa", r2_reg)):
        wsamerge(binary, "fuse", "--strategy", "average", *paths, "-o", p(f"round2_{tag}_avg.npz"), "--force")
        wsamerge(binary, "fuse", "--strategy", "wsa", "--target-scope", p("target.json"), *paths,
                 "-o", p(f"round2_{tag}_wsa.npz"), "--force")

    models = [load(path) for path in r1] + [
        avg1, load(p("wsa.npz")),
        load(p("round2_plain_avg.npz")), load(p("round2_plain_wsa.npz")),
        load(p("round2_wsa_avg.npz")), load(p("round2_wsa_wsa.npz")),
    ]
    acc = {row: accuracy(m, x_test, y_test) for row, m in zip(ROWS, models)}
    scopes = {}
    for row, doc, paths in zip(SCOPE_ROWS, (scope1, scope2_plain, scope2_reg), (r1, r2_plain, r2_reg)):
        kl, ratio = scope_summary(doc)
        scopes[row] = (kl, ratio, float(np.mean([mean_kl_to_target(load(q), target) for q in paths])))
    client_acc = (float(np.mean([accuracy(load(q), x_test, y_test) for q in r2_plain])),
                  float(np.mean([accuracy(load(q), x_test, y_test) for q in r2_reg])))
    methods = sorted({t["method"] for t in report["tensors"]})
    return dict(acc=acc, scopes=scopes, client_acc=client_acc, methods=methods)


def run_experiment(binary: str, out: str, cfg: dict, backend: str) -> None:
    grad_err = check_regulariser_gradient()
    print(f"regulariser gradient vs finite differences: max relative error {grad_err:.1e}")
    if grad_err > 1e-5:
        sys.exit("run.py: the analytic regulariser gradient disagrees with finite differences")
    if backend == "torch":
        import torch
        torch_err = check_torch_regulariser()
        print(f"WSARegularizer autograd gradient vs the analytic one: max relative error {torch_err:.1e}")
        if torch_err > 1e-9:
            sys.exit("run.py: WSARegularizer's gradient disagrees with the analytic one")
        print(f"backend: torch {torch.__version__} (autograd, torch.optim.SGD; regulariser: wsamerge.torch.WSARegularizer)")
    else:
        print("backend: numpy (manual backprop; regulariser: wsamerge.regularizer.wsa_penalty)")

    seeds = cfg["seeds"]
    print(f"task: {NUM_CLASSES} classes, each {BLOBS_PER_CLASS} Gaussian blobs in {DIM}-D (noise {NOISE}); "
          f"MLP {'-'.join(map(str, SIZES))} (ReLU); {len(CLIENTS)} clients x {cfg['train_per_client']} samples; "
          f"balanced test set of {cfg['test']}")
    print(f"SGD, batch {BATCH}: round 1 {cfg['round1_steps']} steps from one shared initialisation; round 2 "
          f"{cfg['round2_steps']} steps from the round-1 average; WSA regulariser λ = {LAMBDA}; seeds {seeds}")
    for k, c in enumerate(CLIENTS):
        print(f"  client {k}: lr {c['lr']}, weight decay {c['wd']}, "
              f"{round(DOMINANT_SHARE * 100)}% of its samples from classes {c['classes']}")

    results = []
    for seed in seeds:
        t0 = time.perf_counter()
        results.append(run_seed(binary, os.path.join(out, f"seed{seed}"), cfg, seed, backend))
        print(f"  seed {seed} done ({time.perf_counter() - t0:.1f} s)")

    print("\nweight scopes of the four clients (from `wsamerge scope`; mean over the 3 weight matrices"
          " and the seeds):")
    print(f"  | {'clients':26s} | {'kl':>7s} | {'std_ratio':>9s} | {'KL to target.json':>17s} |")
    print(f"  |{'-' * 28}|{'-' * 9}|{'-' * 11}|{'-' * 19}|")
    for row in SCOPE_ROWS:
        kl, ratio, to_target = (np.mean([r["scopes"][row][i] for r in results]) for i in range(3))
        print(f"  | {row:26s} | {kl:7.4f} | {ratio:9.3f} | {to_target:17.4f} |")
    print("  (kl: largest KL of a client's scope from the fused scope; std_ratio: largest std / smallest std;\n"
          "   KL to target.json: mean KL of a client's scope from the round-1 target it was regularised toward)")
    print(f"  wsa merge methods: {', '.join(results[0]['methods'])}")

    print("\ntest accuracy (balanced test set):")
    seed_cols = "".join(f" {'seed ' + str(s):>7s} |" for s in seeds)
    print(f"  | {'model':34s} |{seed_cols} {'mean':>6s} | {'std':>6s} |")
    print(f"  |{'-' * 36}|" + f"{'-' * 9}|" * len(seeds) + f"{'-' * 8}|{'-' * 8}|")
    for row in ROWS:
        vals = [r["acc"][row] for r in results]
        cols = "".join(f" {v:7.4f} |" for v in vals)
        print(f"  | {row:34s} |{cols} {np.mean(vals):6.4f} | {np.std(vals):6.4f} |")
    plain, reg = (np.mean([r["client_acc"][i] for r in results]) for i in range(2))
    print(f"  mean accuracy of the round-2 clients before merging: {plain:.4f} without, {reg:.4f} with the regulariser")

    print("\npaired differences (same seed): mean, std, and in how many seeds the first is higher")
    for a, b in (("round-1 wsa", "round-1 average"),
                 ("round-2 average, WSA regulariser", "round-2 average, no regulariser"),
                 ("round-2 wsa, no regulariser", "round-2 average, no regulariser"),
                 ("round-2 wsa, WSA regulariser", "round-2 average, WSA regulariser"),
                 ("round-2 wsa, WSA regulariser", "round-2 average, no regulariser")):
        d = np.array([r["acc"][a] - r["acc"][b] for r in results])
        print(f"  {a:>32s}  -  {b:32s} {np.mean(d):+8.4f} {np.std(d):7.4f}  {int(np.sum(d > 0))}/{len(d)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wsamerge", help="wsamerge binary (default: the repository's release build, then PATH)")
    ap.add_argument("--quick", action="store_true", help="tiny run (two seeds, a few training steps), for tests")
    ap.add_argument("--out", help="keep all files in this directory (default: a temporary directory, removed)")
    ap.add_argument("--backend", choices=("auto", "numpy", "torch"), default="auto",
                    help="train in numpy or in torch (default auto: torch when it is installed)")
    args = ap.parse_args()

    backend = args.backend
    if backend != "numpy":
        try:
            import torch  # noqa: F401
            backend = "torch"
        except ImportError:
            if backend == "torch":
                sys.exit("run.py: --backend torch: torch is not installed")
            backend = "numpy"
    cfg = QUICK if args.quick else FULL
    binary = find_wsamerge(args.wsamerge)
    out = args.out or tempfile.mkdtemp(prefix="wsa-federated-")
    started = time.perf_counter()
    try:
        run_experiment(binary, out, cfg, backend)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\ndone in {time.perf_counter() - started:.1f} s" + (f"; files in {out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
