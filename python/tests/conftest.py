"""Shared helpers for the tests of the wsamerge Python package.

`make wheel-test` runs these against the wheel installed in a fresh venv
(WSAMERGE_TEST_INSTALLED=1); `PYTHONPATH=python pytest python/tests` runs them against the
source tree, where the tests that need the bundled executable are skipped.
"""

from __future__ import annotations

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "merge")
INSTALLED = os.environ.get("WSAMERGE_TEST_INSTALLED") == "1"


def repo_version() -> str:
    with open(os.path.join(ROOT, "Sources", "WSAMergeKit", "Version.swift"), encoding="utf-8") as f:
        for line in f:
            if "static let current" in line:
                return line.split('"')[1]
    raise AssertionError("no version in Version.swift")


@pytest.fixture
def bundled_binary():
    """The wheel's executable, or a skip when this is the source tree."""
    import wsamerge

    try:
        return wsamerge.binary()
    except FileNotFoundError:
        if INSTALLED:
            raise
        pytest.skip("no bundled executable: the package is not installed from a wheel")


def write_scope(path, tensors) -> str:
    """A `wsamerge scope`-shaped document with the given {name: (mean, std) or None} fused scopes."""
    doc = {"models": ["a", "b"], "weights": [0.5, 0.5], "fusion": "linear", "tensors": [
        {"name": name, "scopes": [], "fused": None if scope is None else {"mean": scope[0], "std": scope[1]},
         "std_ratio": 1.0, "kl": 0.0}
        for name, scope in tensors.items()]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return str(path)
