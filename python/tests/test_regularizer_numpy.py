"""The numpy regulariser: closed form, gradient, zero at the target, and training toward the target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsamerge import TargetScopeError
from wsamerge.regularizer import scope_kl, scope_kl_and_grad, wsa_penalty
from conftest import write_scope


def closed_form(w, mu_t, sigma_t):
    w = np.asarray(w, dtype=np.float64)
    mu, sigma = w.mean(), w.std()
    return math.log(sigma_t / sigma) + (sigma ** 2 + (mu - mu_t) ** 2) / (2 * sigma_t ** 2) - 0.5


def at_scope(shape, mean, std, seed=0):
    """An array whose mean and population std are exactly (up to rounding) mean and std."""
    z = np.random.default_rng(seed).normal(size=shape)
    z = (z - z.mean()) / z.std()
    return mean + std * z


def test_scope_kl_closed_form_values():
    assert scope_kl(0.0, 1.0, 0.0, 1.0) == 0.0
    # KL(N(1, 2²) ‖ N(0, 1)) = ln(1/2) + (4 + 1)/2 − ½
    assert scope_kl(1.0, 2.0, 0.0, 1.0) == pytest.approx(math.log(0.5) + 2.0)
    with pytest.raises(ValueError):
        scope_kl(0.0, 0.0, 0.0, 1.0)


def test_value_matches_the_closed_form():
    rng = np.random.default_rng(1)
    w = rng.normal(0.3, 0.8, size=(7, 5))
    kl, grad = scope_kl_and_grad(w, -0.1, 0.5)
    assert kl == pytest.approx(closed_form(w, -0.1, 0.5), rel=1e-12)
    assert grad.shape == w.shape and grad.dtype == np.float64


def test_gradient_matches_central_finite_differences():
    rng = np.random.default_rng(2)
    w = rng.normal(0.3, 0.8, size=(5, 4))
    mu_t, sigma_t = -0.1, 0.5
    _, grad = scope_kl_and_grad(w, mu_t, sigma_t)
    eps = 1e-6
    numeric = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        numeric[idx] = (closed_form(wp, mu_t, sigma_t) - closed_form(wm, mu_t, sigma_t)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_wsa_penalty_sums_the_matched_parameters_times_lambda(tmp_path):
    rng = np.random.default_rng(3)
    params = {
        "layers.0.weight": rng.normal(0.0, 0.3, size=(8, 4)),
        "layers.0.bias": rng.normal(0.0, 0.3, size=8),          # rank 1: left out
        "layers.1.weight": rng.normal(0.1, 0.1, size=(3, 8)),
        "head.weight": rng.normal(0.0, 0.2, size=(2, 3)),       # no target: left out
    }
    target = {"layers.0.weight": (0.05, 0.2), "layers.0.bias": (0.0, 0.1), "layers.1.weight": (0.0, 0.15)}
    value, grads = wsa_penalty(params, target, lam=0.7)
    expected = closed_form(params["layers.0.weight"], 0.05, 0.2) + closed_form(params["layers.1.weight"], 0.0, 0.15)
    assert value == pytest.approx(0.7 * expected, rel=1e-12)
    assert sorted(grads) == ["layers.0.weight", "layers.1.weight"]
    np.testing.assert_allclose(grads["layers.1.weight"], 0.7 * scope_kl_and_grad(params["layers.1.weight"], 0.0, 0.15)[1])
    # the same from a target file, and with min_rank=1 the bias joins
    path = write_scope(tmp_path / "target.json", target)
    assert wsa_penalty(params, path, lam=0.7)[0] == pytest.approx(value, rel=1e-15)
    assert "layers.0.bias" in wsa_penalty(params, target, min_rank=1)[1]


def test_gradients_keep_the_parameter_dtype():
    w = np.random.default_rng(4).normal(size=(4, 4)).astype(np.float32)
    _, grads = wsa_penalty({"w": w}, {"w": (0.0, 0.5)})
    assert grads["w"].dtype == np.float32


def test_penalty_is_zero_when_every_layer_sits_at_its_target():
    params = {"a.weight": at_scope((16, 8), 0.02, 0.3), "b.weight": at_scope((4, 16), -0.1, 0.05, seed=1)}
    target = {"a.weight": (0.02, 0.3), "b.weight": (-0.1, 0.05)}
    value, grads = wsa_penalty(params, target, lam=5.0)
    assert abs(value) < 1e-12
    for g in grads.values():
        assert np.max(np.abs(g)) < 1e-12


def test_strip_prefix_maps_the_names():
    w = np.random.default_rng(5).normal(size=(3, 3))
    value, grads = wsa_penalty({"module.fc.weight": w}, {"fc.weight": (0.0, 1.0)}, strip_prefix="module.")
    assert list(grads) == ["module.fc.weight"]
    assert value == pytest.approx(closed_form(w, 0.0, 1.0))


def test_ml_dtypes_floats_are_parameters_like_numpy_floats():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = np.random.default_rng(6).normal(0.1, 0.5, size=(4, 8)).astype(ml_dtypes.bfloat16)
    value, grads = wsa_penalty({"fc.weight": w}, {"fc.weight": (0.0, 1.0)})
    assert value == pytest.approx(closed_form(w.astype(np.float64), 0.0, 1.0))
    assert grads["fc.weight"].dtype == w.dtype and grads["fc.weight"].shape == w.shape
    with pytest.raises(TargetScopeError, match="not a floating-point parameter"):
        wsa_penalty({"fc.weight": np.ones((2, 2), dtype=np.int8)}, {"fc.weight": (0.0, 1.0)})


def test_bad_arguments_are_clear_errors():
    w = np.ones((2, 2))
    with pytest.raises(TargetScopeError, match="no parameter of rank >= 2 has a target scope"):
        wsa_penalty({"fc.weight": w}, {"other.weight": (0.0, 1.0)})
    with pytest.raises(ValueError, match="lam"):
        wsa_penalty({"fc.weight": w}, {"fc.weight": (0.0, 1.0)}, lam=-1)
    with pytest.raises(ValueError, match="target std must be positive"):
        scope_kl_and_grad(w, 0.0, 0.0)


def test_constant_parameter_gives_a_finite_penalty():
    value, grads = wsa_penalty({"w": np.full((3, 3), 0.5)}, {"w": (0.0, 1.0)})
    assert math.isfinite(value) and value > 20  # ln(1/1e-12) ≈ 27.6
    assert np.all(np.isfinite(grads["w"]))


def test_gradient_steps_on_a_toy_model_reduce_the_kl_to_the_target():
    # Least-squares regression with a two-layer linear model whose weights start far from the target scope.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(64, 6))
    y = x @ rng.normal(size=(6, 1))
    params = {"l0.weight": rng.normal(0.5, 1.0, size=(8, 6)), "l1.weight": rng.normal(-0.3, 0.8, size=(1, 8))}
    target = {"l0.weight": (0.0, 0.3), "l1.weight": (0.0, 0.3)}

    def kl_to_target(p):
        return sum(closed_form(p[n], *target[n]) for n in target)

    def train(p, lam, steps=100, lr=0.05):
        p = {k: v.copy() for k, v in p.items()}
        for _ in range(steps):
            h = x @ p["l0.weight"].T
            err = (h @ p["l1.weight"].T - y) / len(x)
            grads = {"l1.weight": err.T @ h, "l0.weight": (err @ p["l1.weight"]).T @ x}
            _, reg = wsa_penalty(p, target, lam=lam)
            for name in p:
                p[name] -= lr * (grads[name] + reg[name])
        return p

    start = kl_to_target(params)
    regularised = kl_to_target(train(params, lam=1.0))
    unregularised = kl_to_target(train(params, lam=0.0))
    assert regularised < 0.1 * start
    assert regularised < unregularised
