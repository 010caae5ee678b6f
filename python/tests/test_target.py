"""load_target, strip_prefixes and the matching of parameters to target scopes."""

from __future__ import annotations

import json
import os
import struct
import subprocess

import pytest

import wsamerge
from wsamerge import TargetScopeError, load_target, strip_prefixes
from wsamerge._target import plan
from conftest import FIXTURES, write_scope


def test_load_target_reads_the_fused_scopes_of_a_scope_file(bundled_binary, tmp_path):
    target = tmp_path / "target.json"
    report = subprocess.run([bundled_binary, "scope", "--quiet", os.path.join(FIXTURES, "a.safetensors"),
                             os.path.join(FIXTURES, "b.safetensors"), "-o", str(target)],
                            capture_output=True, text=True, check=True)
    doc = json.loads(report.stdout)
    scopes = load_target(target)
    expected = {t["name"]: (t["fused"]["mean"], t["fused"]["std"]) for t in doc["tensors"] if t["fused"]["mean"] is not None}
    assert scopes == expected
    assert "model.embed.weight" in scopes
    mean, std = scopes["model.embed.weight"]
    assert isinstance(mean, float) and std > 0


def test_load_target_leaves_out_null_scopes_and_keeps_zero_std(tmp_path):
    path = write_scope(tmp_path / "t.json", {"w": (0.1, 0.02), "nan_only": None, "const": (1.0, 0.0)})
    assert load_target(path) == {"w": (0.1, 0.02), "const": (1.0, 0.0)}
    assert load_target(os.fspath(path)) == load_target(tmp_path / "t.json")
    # what `scope` writes for a tensor with no finite values
    (tmp_path / "t.json").write_text('{"tensors": [{"name": "w", "fused": {"mean": 0.1, "std": 0.02}},'
                    ' {"name": "nan_only", "fused": {"mean": null, "std": null}}]}')
    assert load_target(path) == {"w": (0.1, 0.02)}


def test_load_target_reads_scope_files_with_a_tensor_of_no_finite_values(bundled_binary, tmp_path):
    # a safetensors file written by hand: w (F32, finite) and all_nan (F32, NaN only)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "all_nan": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}).encode()
    data = struct.pack("<4f", 0.5, -0.25, 1.0, 2.0) + struct.pack("<2f", float("nan"), float("nan"))
    for name in ("a", "b"):
        (tmp_path / f"{name}.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)
    target = tmp_path / "target.json"
    subprocess.run([bundled_binary, "scope", "--quiet", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                    "-o", str(target)], capture_output=True, check=True)
    scopes = load_target(target)
    assert list(scopes) == ["w"] and scopes["w"][1] > 0


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wsamerge scope") as info:
        load_target(tmp_path / "absent.json")
    assert info.value.filename == str(tmp_path / "absent.json")


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not a JSON document"),
    (b"\xff\xfe\x00", "not a JSON document"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": NaN, "std": 1}}]}', "not a JSON document"),
    (b"[]", "not a `wsamerge scope` document"),
    (b'{"models": []}', "not a `wsamerge scope` document"),
    (b'{"tensors": [1]}', r"tensors\[0\]: expected an object"),
    (b'{"tensors": [{"name": "w"}]}', "no \"fused\" scope"),
    (b'{"tensors": [{"name": "w", "fused": [0, 1]}]}', "must be an object"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": "0", "std": 1}}]}', "mean must be a number"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": 0}}]}', "std must be a number"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": 0, "std": true}}]}', "std must be a number"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": 0, "std": -1}}]}', "std must be >= 0"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": 0, "std": 1e999}}]}', "std must be finite"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": 1' + b'0' * 400 + b', "std": 1}}]}', "mean must be finite"),
    (b'{"tensors": [{"name": "w", "fused": {"mean": 0, "std": 1}}, {"name": "w", "fused": {"mean": 0, "std": 1}}]}',
     "appears twice"),
])
def test_malformed_files_are_target_scope_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(TargetScopeError, match=message) as info:
        load_target(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_directory_is_a_target_scope_error(tmp_path):
    with pytest.raises(TargetScopeError, match="directory"):
        load_target(tmp_path)


def test_strip_prefixes_removes_the_first_matching_prefix_once_as_the_command_line_does():
    # Checkpoint.stripping: the first listed prefix the name starts with (and is longer than)
    assert strip_prefixes("module.model.w", ["module.", "model."]) == "model.w"
    assert strip_prefixes("module.model.w", ["model.", "module."]) == "model.w"
    assert strip_prefixes("module.model.w", ["module.model.", "module."]) == "w"
    assert strip_prefixes("model.w", ["module.", "model."]) == "w"
    assert strip_prefixes("module.", "module.") == "module."  # nothing would be left
    assert strip_prefixes("w", ["module."]) == "w"
    assert strip_prefixes("module.w", "module.") == "w"
    assert strip_prefixes("x.module.w", "module.") == "x.module.w"  # only a leading prefix
    assert strip_prefixes("w", None) == "w"
    with pytest.raises(ValueError, match="non-empty string"):
        strip_prefixes("w", [""])


def params(*specs):
    """(name, rank, count, is_float) tuples for plan()."""
    return [(name, rank, 100 if rank else 1, True) for name, rank in specs]


def test_plan_matches_by_name_above_min_rank():
    target = {"a.weight": (0.0, 0.1), "a.bias": (0.0, 0.1), "b.weight": (0.0, 0.0), "gone.weight": (0, 1)}
    p = plan(params(("a.weight", 2), ("a.bias", 1), ("b.weight", 2), ("c.weight", 4)), target, 2, ())
    assert p.matched == [("a.weight", 0.0, 0.1)]
    assert p.missing == ["c.weight"]
    assert p.skipped == {"b.weight": "its target std is 0"}
    p = plan(params(("a.weight", 2), ("a.bias", 1)), target, 1, ())
    assert [m[0] for m in p.matched] == ["a.weight", "a.bias"]


def test_plan_strips_prefixes_on_both_sides():
    target = {"model.layer.weight": (0.0, 0.1)}
    p = plan(params(("module.layer.weight", 2)), target, 2, ["module.", "model."])
    assert p.matched == [("module.layer.weight", 0.0, 0.1)]


def test_plan_refuses_names_that_collide_after_stripping():
    with pytest.raises(TargetScopeError, match="same after strip_prefix"):
        plan(params(("module.w", 2), ("w", 2)), {"w": (0, 1)}, 2, "module.")
    with pytest.raises(TargetScopeError, match="same after strip_prefix"):
        plan(params(("w", 2)), {"module.w": (0, 1), "w": (0, 1)}, 2, "module.")


def test_names_that_match_nothing_are_a_clear_error():
    with pytest.raises(TargetScopeError, match=r"no parameter of rank >= 2 has a target scope.*'module\.") as info:
        plan(params(("module.fc.weight", 2)), {"fc.weight": (0, 1)}, 2, ())
    assert "fc.weight" in str(info.value) and "strip_prefix" in str(info.value)
    with pytest.raises(TargetScopeError, match="no parameter of rank >= 2"):
        plan(params(("fc.bias", 1)), {"fc.bias": (0, 1)}, 2, ())
    with pytest.raises(TargetScopeError, match="holds no scope"):
        plan(params(("fc.weight", 2)), {}, 2, ())
    with pytest.raises(TargetScopeError, match="target std is 0"):
        plan(params(("fc.weight", 2)), {"fc.weight": (0, 0)}, 2, ())


def test_plan_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="min_rank"):
        plan(params(("w", 2)), {"w": (0, 1)}, -1, ())
    with pytest.raises(TypeError, match="mapping name -> \\(mean, std\\)"):
        plan(params(("w", 2)), 42, 2, ())
    with pytest.raises(TargetScopeError, match=r"target\['w'\]: expected a \(mean, std\) pair"):
        plan(params(("w", 2)), {"w": 0.5}, 2, ())
    with pytest.raises(TargetScopeError, match="std must be >= 0"):
        plan(params(("w", 2)), {"w": (0, -0.5)}, 2, ())
    with pytest.raises(FileNotFoundError):
        plan(params(("w", 2)), tmp_path / "absent.json", 2, ())


def test_public_names():
    assert wsamerge.load_target is load_target
    assert issubclass(wsamerge.TargetScopeError, ValueError)
