"""The WSA regulariser as a PyTorch module (needs torch: ``pip install 'wsamerge[torch]'``).

    from wsamerge.torch import WSARegularizer

    reg = WSARegularizer(model, "target.json", lam=1e-2)     # target from `wsamerge scope -o`
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y) + reg()                  # reg() = λ Σ_l KL(N(μ_l, σ_l²) ‖ N(μ_t, σ_t²))
        loss.backward()
        optimizer.step()
"""

from __future__ import annotations

import math
from typing import Optional

try:
    import torch
    from torch import nn
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("wsamerge.torch needs PyTorch: pip install torch (or 'wsamerge[torch]')") from error

from ._target import PrefixLike, TargetLike, plan

__all__ = ["WSARegularizer", "scope_kl"]

#: σ_l² is taken as at least this (σ_l ≥ 1e-12), as in :mod:`wsamerge.regularizer`
VARIANCE_FLOOR = 1e-24


def scope_kl(p: "torch.Tensor", mu_t: float, sigma_t: float) -> "torch.Tensor":
    """KL(N(μ, σ²) ‖ N(mu_t, sigma_t²)) of tensor ``p``'s scope (μ its mean, σ its population
    std), differentiable with respect to ``p``.

    Half-precision tensors are measured in float32; float32 and float64 in their own precision.
    """
    x = p if p.dtype in (torch.float32, torch.float64) else p.float()
    mu = x.mean()
    d = x - mu
    var = (d * d).mean().clamp_min(VARIANCE_FLOOR)
    return (math.log(sigma_t) - 0.5 * torch.log(var)
            + (var + (mu - mu_t) ** 2) / (2.0 * sigma_t * sigma_t) - 0.5)


class WSARegularizer(nn.Module):
    """λ Σ_l KL(N(μ_l, σ_l²) ‖ N(μ_t, σ_t²)) over ``model``'s parameters that have a target scope.

    - ``model``: the ``nn.Module`` being trained. Its parameters are looked up by name at every
      call, so moving the model (``.to()``) afterwards is fine. The model is not registered as a
      sub-module: the regulariser has no parameters or state of its own.
    - ``target``: a ``wsamerge scope -o`` file, or ``{name: (mean, std)}`` from
      :func:`wsamerge.load_target`.
    - ``lam``: the strength λ (the attribute ``lam`` can be changed during training).
    - ``min_rank``: parameters of lower rank (biases, norm weights) are left out, as in
      ``fuse --strategy wsa --wsa-min-rank``.
    - ``strip_prefix``: a prefix or a list of prefixes removed from the start of the names on
      both sides before they are compared, like ``--strip-prefix``: ``"module."`` for a
      ``DistributedDataParallel`` model, ``"model."`` for a wrapper.

    Parameters are matched by name (``model.named_parameters()`` against the tensor names of the
    target). ``matched`` lists the regularised ones; ``missing`` those of rank ≥ ``min_rank``
    without a target; ``skipped`` those with a target that cannot be regularised (integer, a
    single element, or a target std of 0). Raises :class:`wsamerge.TargetScopeError` when no
    parameter matches, ``FileNotFoundError`` for a missing target file.
    """

    def __init__(self, model: nn.Module, target: TargetLike, lam: float = 1.0, min_rank: int = 2,
                 strip_prefix: PrefixLike = ()):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"WSARegularizer: model must be a torch.nn.Module, not {type(model).__name__}")
        self.lam = lam
        self.min_rank = min_rank
        covered = plan(((name, p.dim(), p.numel(), p.is_floating_point())
                        for name, p in model.named_parameters()), target, min_rank, strip_prefix)
        # Not `self.model = model`: that would make the model a sub-module of the regulariser.
        object.__setattr__(self, "_model", model)
        self._targets: list[tuple[str, float, float]] = covered.matched
        self.matched: list[str] = [name for name, _, _ in covered.matched]
        self.missing: list[str] = covered.missing
        self.skipped: dict[str, str] = covered.skipped

    @property
    def lam(self) -> float:
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        if isinstance(value, bool):
            raise TypeError("lam must be a number, not a bool")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"lam must be finite and >= 0, not {value!r}")
        self._lam = value

    def _parameters_by_name(self) -> dict[str, "torch.Tensor"]:
        params = dict(self._model.named_parameters())
        gone = [name for name in self.matched if name not in params]
        if gone:
            raise RuntimeError(f"WSARegularizer: the model no longer has parameter(s) {gone[:4]}")
        return params

    def forward(self) -> "torch.Tensor":
        """The penalty λ Σ_l KL_l, a scalar tensor on the device of the first matched parameter."""
        params = self._parameters_by_name()
        total: Optional[torch.Tensor] = None
        for name, mu_t, sigma_t in self._targets:
            kl = scope_kl(params[name], mu_t, sigma_t)
            total = kl if total is None else total + kl.to(total.device)
        assert total is not None  # the plan has at least one parameter
        return total * self._lam

    @torch.no_grad()
    def kl(self) -> dict[str, float]:
        """KL_l of every matched parameter's current scope from its target (without λ)."""
        params = self._parameters_by_name()
        return {name: float(scope_kl(params[name], mu_t, sigma_t)) for name, mu_t, sigma_t in self._targets}

    def extra_repr(self) -> str:
        return f"lam={self._lam}, min_rank={self.min_rank}, parameters={len(self.matched)}"
