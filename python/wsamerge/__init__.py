"""wsamerge from Python: the bundled command-line tool and the training half of Weight Scope Alignment.

- :func:`binary` is the path of the ``wsamerge`` executable that this wheel ships (the ``wsamerge``
  command on the environment's PATH runs it).
- :func:`load_target` reads the fused scopes of a ``wsamerge scope -o target.json`` file.
- :mod:`wsamerge.regularizer` is the WSA regulariser λ Σ_l KL(N(μ_l, σ_l²) ‖ N(μ_t, σ_t²)) in
  numpy (value and gradient); it needs numpy.
- :class:`wsamerge.torch.WSARegularizer` is the same regulariser as a ``torch.nn.Module`` whose
  forward returns the penalty; it needs PyTorch (``pip install 'wsamerge[torch]'``).

Importing ``wsamerge`` imports neither numpy nor torch; the two submodules are imported on first
use (``wsamerge.regularizer``, ``wsamerge.torch``, or an explicit import).
"""

from __future__ import annotations

import importlib
import os

from ._target import TargetScopeError, load_target, strip_prefixes

try:  # written into the wheel by python/build_wheel.py from Sources/WSAMergeKit/Version.swift
    from ._version import __version__
except ImportError:  # a source checkout, not an installed wheel
    __version__ = "0+source"

__all__ = ["TargetScopeError", "__version__", "binary", "load_target", "strip_prefixes"]

_SUBMODULES = ("regularizer", "torch")


def binary() -> str:
    """The path of the bundled ``wsamerge`` executable.

    Raises ``FileNotFoundError`` when this copy of the package has no executable (a source
    checkout rather than an installed wheel).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "wsamerge")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"wsamerge.binary(): no bundled executable at {path}: this copy of the Python package "
            "was not installed from a wsamerge wheel (build one with `make wheel`, or build the "
            "tool from source with `swift build -c release`)")
    if not os.access(path, os.X_OK):
        raise PermissionError(f"wsamerge.binary(): {path} is not executable")
    return path


def __getattr__(name: str):
    # `import wsamerge; wsamerge.torch.WSARegularizer(...)` works without importing torch up front.
    # Without torch (or numpy) the attribute is missing, so hasattr() and help() work; the
    # AttributeError carries the ImportError that says what to install.
    if name in _SUBMODULES:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ImportError as error:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}: {error}") from error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
