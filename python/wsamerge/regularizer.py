"""The WSA regulariser in numpy: value and analytic gradient.

*Weight Scope Alignment* (Xu et al., ECAI 2024) adds to the training loss

    λ Σ_l KL(N(μ_l, σ_l²) ‖ N(μ_t, σ_t²)),
    KL = ln(σ_t/σ_l) + (σ_l² + (μ_l − μ_t)²)/(2σ_t²) − ½,

where μ_l and σ_l are the mean and population std of parameter l and (μ_t, σ_t) is its target
scope (``wsamerge scope -o target.json``, read with :func:`wsamerge.load_target`). With n
elements, the gradient is

    ∂KL/∂w_i = (∂KL/∂μ)/n + (∂KL/∂σ)(w_i − μ)/(nσ),
    ∂KL/∂μ = (μ − μ_t)/σ_t²,   ∂KL/∂σ = −1/σ + σ/σ_t².

Everything is computed in float64. :class:`wsamerge.torch.WSARegularizer` is the same penalty
for PyTorch models, differentiated by autograd.
"""

from __future__ import annotations

import math
from typing import Mapping

try:
    import numpy as np
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("wsamerge.regularizer needs numpy: pip install numpy (or 'wsamerge[numpy]')") from error

from ._target import Plan, PrefixLike, TargetLike, plan

__all__ = ["SIGMA_FLOOR", "plan_for", "scope_kl", "scope_kl_and_grad", "wsa_penalty"]

#: σ_l is taken as at least this, so that a constant parameter gives a finite (large) penalty
SIGMA_FLOOR = 1e-12


def scope_kl(mu: float, sigma: float, mu_t: float, sigma_t: float) -> float:
    """KL(N(mu, sigma²) ‖ N(mu_t, sigma_t²)) in closed form (sigma, sigma_t > 0)."""
    if not sigma > 0 or not sigma_t > 0:
        raise ValueError(f"scope_kl: the standard deviations must be positive, not {sigma!r} and {sigma_t!r}")
    return math.log(sigma_t / sigma) + (sigma ** 2 + (mu - mu_t) ** 2) / (2 * sigma_t ** 2) - 0.5


def scope_kl_and_grad(w, mu_t: float, sigma_t: float) -> tuple[float, "np.ndarray"]:
    """KL of array ``w``'s scope from (mu_t, sigma_t), and its gradient with respect to ``w``.

    The gradient is float64 and has ``w``'s shape. σ is floored at :data:`SIGMA_FLOOR`.
    """
    if not sigma_t > 0:
        raise ValueError(f"scope_kl_and_grad: the target std must be positive, not {sigma_t!r}")
    w64 = np.asarray(w, dtype=np.float64)
    n = w64.size
    if n == 0:
        raise ValueError("scope_kl_and_grad: empty array")
    mu = float(w64.mean())
    sigma = max(float(w64.std()), SIGMA_FLOOR)
    kl = math.log(sigma_t / sigma) + (sigma ** 2 + (mu - mu_t) ** 2) / (2 * sigma_t ** 2) - 0.5
    dkl_dmu = (mu - mu_t) / sigma_t ** 2
    dkl_dsigma = -1.0 / sigma + sigma / sigma_t ** 2
    grad = dkl_dmu / n + dkl_dsigma * (w64 - mu) / (n * sigma)
    return kl, grad


def plan_for(params: Mapping[str, object], target: TargetLike, min_rank: int = 2,
             strip_prefix: PrefixLike = ()) -> Plan:
    """Which of ``params`` (name → array) the regulariser covers; see :func:`wsamerge._target.plan`."""
    def describe():
        for name, value in params.items():
            a = np.asarray(value)
            yield name, a.ndim, a.size, _is_float(a.dtype)
    return plan(describe(), target, min_rank, strip_prefix)


def wsa_penalty(params: Mapping[str, object], target: TargetLike, lam: float = 1.0, min_rank: int = 2,
                strip_prefix: PrefixLike = ()) -> tuple[float, dict[str, "np.ndarray"]]:
    """``(λ Σ_l KL_l, {name: ∂/∂w_l})`` over the parameters in ``params`` that have a target.

    - ``params``: parameter name → array (a ``state_dict``-like mapping).
    - ``target``: a ``wsamerge scope -o`` file, or ``{name: (mean, std)}`` from
      :func:`wsamerge.load_target`.
    - ``min_rank``: parameters of lower rank (biases, norm weights) are left out, as in
      ``fuse --strategy wsa``.
    - ``strip_prefix``: a prefix or list of prefixes removed from the start of the names on both
      sides before they are compared (like ``--strip-prefix``), e.g. ``"module."``.

    The gradients cover only the regularised parameters and have their dtypes. Raises
    :class:`wsamerge.TargetScopeError` when no parameter matches the target.
    """
    lam = _checked_lambda(lam)
    covered = plan_for(params, target, min_rank, strip_prefix)
    value = 0.0
    grads: dict[str, np.ndarray] = {}
    for name, mu_t, sigma_t in covered.matched:
        w = np.asarray(params[name])
        kl, grad = scope_kl_and_grad(w, mu_t, sigma_t)
        value += kl
        grads[name] = (lam * grad).astype(w.dtype, copy=False)
    return lam * value, grads


def _is_float(dtype: "np.dtype") -> bool:
    """numpy's floats, and ml_dtypes' (bfloat16, float8…; JAX and Flax parameters), which numpy
    does not count as np.floating."""
    if np.issubdtype(dtype, np.floating):
        return True
    try:
        import ml_dtypes
    except ImportError:
        return False
    try:
        ml_dtypes.finfo(dtype)
    except (TypeError, ValueError):
        return False
    return True


def _checked_lambda(lam: float) -> float:
    if isinstance(lam, bool):
        raise TypeError("lam must be a number, not a bool")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, not {lam!r}")
    return lam
