"""WSARegularizer (torch): value, autograd gradient, zero at the target, training toward the target.

Skipped when torch is not installed (CI never downloads it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from wsamerge import TargetScopeError  # noqa: E402
from wsamerge.regularizer import scope_kl_and_grad, wsa_penalty  # noqa: E402
from wsamerge.torch import WSARegularizer  # noqa: E402
from conftest import write_scope  # noqa: E402


def closed_form(w, mu_t, sigma_t):
    w = np.asarray(w, dtype=np.float64)
    mu, sigma = w.mean(), w.std()
    return math.log(sigma_t / sigma) + (sigma ** 2 + (mu - mu_t) ** 2) / (2 * sigma_t ** 2) - 0.5


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 8), nn.Linear(8, 1)])

    def forward(self, x):
        return self.layers[1](torch.relu(self.layers[0](x)))


def toy(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return Toy().to(dtype)


def numpy_params(model):
    return {n: p.detach().cpu().numpy().astype(np.float64) for n, p in model.named_parameters()}


TARGET = {"layers.0.weight": (0.05, 0.2), "layers.0.bias": (0.0, 0.1), "layers.1.weight": (-0.02, 0.15)}


def test_value_matches_the_closed_form_and_the_numpy_path():
    model = toy()
    reg = WSARegularizer(model, TARGET, lam=0.3)
    assert reg.matched == ["layers.0.weight", "layers.1.weight"]
    assert reg.missing == [] and reg.skipped == {}
    params = numpy_params(model)
    expected = 0.3 * (closed_form(params["layers.0.weight"], 0.05, 0.2) + closed_form(params["layers.1.weight"], -0.02, 0.15))
    value = reg()
    assert value.dim() == 0 and value.dtype == torch.float64
    assert float(value) == pytest.approx(expected, rel=1e-12)
    assert float(value) == pytest.approx(wsa_penalty(params, TARGET, lam=0.3)[0], rel=1e-12)
    assert reg.kl()["layers.1.weight"] == pytest.approx(closed_form(params["layers.1.weight"], -0.02, 0.15), rel=1e-12)


def test_autograd_gradient_matches_the_analytic_one_and_finite_differences():
    model = toy()
    reg = WSARegularizer(model, TARGET, lam=0.3)
    reg().backward()
    w = model.layers[1].weight
    analytic = 0.3 * scope_kl_and_grad(w.detach().numpy(), -0.02, 0.15)[1]
    np.testing.assert_allclose(w.grad.numpy(), analytic, rtol=1e-10, atol=1e-14)
    assert model.layers[0].bias.grad is None  # rank 1: not regularised

    eps = 1e-6
    base = w.detach().clone()
    for idx in [(0, 0), (0, 3), (0, 7)]:
        with torch.no_grad():
            w.copy_(base)
            w[idx] += eps
            plus = float(reg())
            w.copy_(base)
            w[idx] -= eps
            minus = float(reg())
            w.copy_(base)
        assert (plus - minus) / (2 * eps) == pytest.approx(float(analytic[idx]), rel=1e-5, abs=1e-9)


def test_penalty_is_zero_when_every_layer_sits_at_its_target():
    model = toy()
    target = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                z = torch.randn_like(p)
                z = (z - z.mean()) / z.std(unbiased=False)
                mean, std = 0.01 * p.dim(), 0.1 + 0.05 * p.shape[0]
                p.copy_(mean + std * z)
                target[name] = (mean, std)
    reg = WSARegularizer(model, target, lam=10.0)
    value = reg()
    assert abs(float(value)) < 1e-12
    value.backward()
    for name in reg.matched:
        assert float(dict(model.named_parameters())[name].grad.abs().max()) < 1e-10


def test_a_few_optimiser_steps_on_a_toy_model_reduce_the_kl_to_the_target():
    torch.manual_seed(1)
    x = torch.randn(128, 6)
    y = x @ torch.randn(6, 1)
    target = {"layers.0.weight": (0.0, 0.05), "layers.1.weight": (0.0, 0.05)}

    def run(lam):
        model = toy(torch.float32, seed=2)
        reg = WSARegularizer(model, target, lam=lam)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        start = sum(reg.kl().values())
        for _ in range(30):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) + reg()
            loss.backward()
            opt.step()
        return start, sum(reg.kl().values())

    start, regularised = run(1.0)
    _, unregularised = run(0.0)
    assert regularised < 0.5 * start
    assert regularised < unregularised


def test_target_file_strip_prefix_and_no_parameters_of_its_own(tmp_path):
    wrapped = nn.Module()
    wrapped.module = toy()   # like DistributedDataParallel: names start with "module."
    path = write_scope(tmp_path / "target.json", TARGET)
    reg = WSARegularizer(wrapped, path, lam=1.0, strip_prefix="module.")
    assert reg.matched == ["module.layers.0.weight", "module.layers.1.weight"]
    assert list(reg.parameters()) == [] and reg.state_dict() == {}
    assert "lam=1.0" in repr(reg) and "parameters=2" in repr(reg)
    with pytest.raises(TargetScopeError, match="strip_prefix"):
        WSARegularizer(wrapped, path)


def test_half_precision_parameters_are_measured_in_float32():
    model = toy(torch.bfloat16)
    reg = WSARegularizer(model, TARGET, lam=1.0)
    value = reg()
    assert value.dtype == torch.float32 and math.isfinite(float(value))
    value.backward()
    assert model.layers[0].weight.grad.dtype == torch.bfloat16


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        WSARegularizer({"w": torch.ones(2, 2)}, TARGET)
    with pytest.raises(FileNotFoundError):
        WSARegularizer(toy(), tmp_path / "absent.json")
    with pytest.raises(TargetScopeError, match="no parameter of rank >= 2"):
        WSARegularizer(toy(), {"other.weight": (0.0, 1.0)})
    with pytest.raises(ValueError, match="lam"):
        WSARegularizer(toy(), TARGET, lam=float("nan"))
    reg = WSARegularizer(toy(), TARGET)
    reg.lam = 0.5
    assert reg.lam == 0.5
    with pytest.raises(ValueError, match="lam"):
        reg.lam = -1.0
