"""The package as installed: import cost, version, the bundled executable and the `wsamerge` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

import wsamerge
from conftest import FIXTURES, INSTALLED, repo_version


def test_importing_wsamerge_imports_neither_numpy_nor_torch():
    code = ("import sys, wsamerge; wsamerge.load_target; "
            "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


def test_without_torch_the_torch_attribute_is_missing_and_help_works():
    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
            "import pydoc, wsamerge\n"
            "assert not hasattr(wsamerge, 'torch')\n"
            "try:\n    wsamerge.torch\nexcept AttributeError as e:\n    assert 'needs PyTorch' in str(e), e\n"
            "assert 'load_target' in pydoc.render_doc(wsamerge)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_submodules_load_on_first_use():
    assert wsamerge.regularizer.wsa_penalty is not None
    assert "regularizer" in dir(wsamerge)
    with pytest.raises(AttributeError):
        wsamerge.no_such_thing  # noqa: B018


@pytest.mark.skipif(not INSTALLED, reason="only the installed wheel knows its version")
def test_installed_from_the_wheel_with_the_version_of_version_swift():
    site = os.path.realpath(sysconfig.get_paths()["platlib"])
    assert os.path.realpath(wsamerge.__file__).startswith(site + os.sep), wsamerge.__file__
    assert wsamerge.__version__ == repo_version()
    from importlib.metadata import version
    assert version("wsamerge") == repo_version()


def test_binary_prints_the_package_version(bundled_binary):
    assert os.access(bundled_binary, os.X_OK)
    out = subprocess.run([bundled_binary, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == wsamerge.__version__ == repo_version()


@pytest.mark.skipif(not INSTALLED, reason="the `wsamerge` command exists once the wheel is installed")
def test_wsamerge_command_runs_the_bundled_binary():
    command = shutil.which("wsamerge")
    assert command is not None
    assert os.path.dirname(command) == os.path.dirname(sys.executable)  # the venv's bin
    out = subprocess.run(["wsamerge", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repo_version()
    # python -m wsamerge is the same command
    out = subprocess.run([sys.executable, "-m", "wsamerge", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repo_version()


@pytest.mark.skipif(not INSTALLED, reason="the `wsamerge` command exists once the wheel is installed")
def test_command_passes_exit_codes_and_stderr_through(tmp_path):
    missing = tmp_path / "nope.safetensors"
    proc = subprocess.run(["wsamerge", "stats", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 66
    assert proc.stderr.strip() == f"wsamerge: error: {missing}: no such file"
    proc = subprocess.run(["wsamerge", "fuse", "--no-such-option"], capture_output=True, text=True)
    assert proc.returncode == 64


def test_binary_reads_npz_through_the_bundled_libzip(bundled_binary):
    out = subprocess.run([bundled_binary, "inspect", os.path.join(FIXTURES, "c.npz")],
                         capture_output=True, text=True, check=True)
    assert '"format":"npz"' in out.stdout.replace(" ", "")


@pytest.mark.skipif(not INSTALLED, reason="data files are installed with the wheel")
def test_man_page_and_completions_are_installed():
    data = sysconfig.get_paths()["data"]
    for path in ("share/man/man1/wsamerge.1", "share/bash-completion/completions/wsamerge",
                 "share/zsh/site-functions/_wsamerge", "share/fish/vendor_completions.d/wsamerge.fish"):
        assert os.path.getsize(os.path.join(data, path)) > 0, path
