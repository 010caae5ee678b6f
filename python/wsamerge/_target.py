"""Target scopes (``wsamerge scope -o`` files) and matching them to a model's parameters by name.

Pure Python: used by both the numpy and the torch regulariser, and importable without either.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Tuple, Union

Scope = Tuple[float, float]
TargetLike = Union[str, "os.PathLike[str]", Mapping[str, Scope]]
PrefixLike = Union[None, str, Sequence[str]]


class TargetScopeError(ValueError):
    """A target scope that cannot be used: a file that is not a ``wsamerge scope`` document, a bad
    (mean, std) pair, or names that match none of the model's parameters."""


def _reject_constant(token: str):
    raise ValueError(f"{token} is not valid JSON")


def load_target(path: "str | os.PathLike[str]") -> dict[str, Scope]:
    """The fused scopes of a ``wsamerge scope -o`` file: ``{tensor name: (mean, std)}``.

    Tensors whose fused scope is ``null`` (they had no finite values) are left out, since they
    cannot be a target. The values are the file's, unrounded. Raises ``FileNotFoundError`` for a
    missing file and :class:`TargetScopeError` for anything that is not a valid scope document.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            2, "no such target scope file (write one with `wsamerge scope MODEL... -o FILE`)", path) from None
    except IsADirectoryError:
        raise TargetScopeError(f"{path}: is a directory, not a `wsamerge scope -o` file") from None
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise TargetScopeError(f"{path}: not a JSON document ({error})") from None
    return _scopes_from_document(doc, path)


def _scopes_from_document(doc: object, where: str) -> dict[str, Scope]:
    if not isinstance(doc, dict) or not isinstance(doc.get("tensors"), list):
        raise TargetScopeError(
            f"{where}: not a `wsamerge scope` document (expected an object with a \"tensors\" array)")
    scopes: dict[str, Scope] = {}
    for index, entry in enumerate(doc["tensors"]):
        at = f"{where}: tensors[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise TargetScopeError(f"{at}: expected an object with a string \"name\"")
        name = entry["name"]
        if "fused" not in entry:
            raise TargetScopeError(f"{at} ({name!r}): no \"fused\" scope")
        fused = entry["fused"]
        if not isinstance(fused, dict) and fused is not None:
            raise TargetScopeError(f"{at} ({name!r}): \"fused\" must be an object with \"mean\" and \"std\"")
        # No finite values in the models (`scope` writes {"mean": null, "std": null}): nothing to
        # aim at.
        if fused is None or (fused.get("mean") is None and fused.get("std") is None):
            continue
        if name in scopes:
            raise TargetScopeError(f"{at}: tensor {name!r} appears twice")
        scopes[name] = _checked_scope(fused.get("mean"), fused.get("std"), f"{at} ({name!r})")
    return scopes


def _checked_scope(mean: object, std: object, where: str) -> Scope:
    for key, value in (("mean", mean), ("std", std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TargetScopeError(f"{where}: {key} must be a number, not {value!r}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise TargetScopeError(f"{where}: {key} must be finite, not {value!r}")
    if std < 0:
        raise TargetScopeError(f"{where}: std must be >= 0, not {std!r}")
    return float(mean), float(std)


def target_scopes(target: TargetLike) -> dict[str, Scope]:
    """A target given as a path (read with :func:`load_target`) or as ``{name: (mean, std)}``."""
    if isinstance(target, (str, os.PathLike)):
        return load_target(target)
    if not isinstance(target, Mapping):
        raise TypeError(
            f"target must be a path to a `wsamerge scope -o` file or a mapping name -> (mean, std), "
            f"not {type(target).__name__}")
    scopes: dict[str, Scope] = {}
    for name, scope in target.items():
        if not isinstance(name, str):
            raise TargetScopeError(f"target: names must be strings, not {name!r}")
        try:
            mean, std = scope
        except (TypeError, ValueError):
            raise TargetScopeError(f"target[{name!r}]: expected a (mean, std) pair, not {scope!r}") from None
        scopes[name] = _checked_scope(_as_number(mean), _as_number(std), f"target[{name!r}]")
    return scopes


def _as_number(value: object) -> object:
    # numpy scalars and 0-d tensors are fine as long as float() takes them
    if isinstance(value, (int, float)) or value is None or isinstance(value, (str, bytes)):
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value


def _prefix_list(strip_prefix: PrefixLike) -> tuple[str, ...]:
    if strip_prefix is None:
        return ()
    if isinstance(strip_prefix, str):
        strip_prefix = (strip_prefix,)
    prefixes = tuple(strip_prefix)
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"strip_prefix: every prefix must be a non-empty string, not {prefix!r}")
    return prefixes


def strip_prefixes(name: str, strip_prefix: PrefixLike) -> str:
    """``name`` without the first prefix of ``strip_prefix`` that it starts with (and is longer
    than), removed once, as ``--strip-prefix`` does: ``strip_prefixes("module.model.w",
    ["model.", "module."])`` is ``"model.w"``, whatever the order of the list; a name that starts
    with none of them is unchanged.
    """
    for prefix in _prefix_list(strip_prefix):
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


@dataclass
class Plan:
    """Which parameters the regulariser covers, toward which scope, and why the others are left out."""

    #: (parameter name in the model, target mean, target std), in the model's order
    matched: list[tuple[str, float, float]] = field(default_factory=list)
    #: parameters of rank >= min_rank that have no target scope
    missing: list[str] = field(default_factory=list)
    #: parameter name -> why it is not regularised although it has a target
    skipped: dict[str, str] = field(default_factory=dict)


def plan(parameters: Iterable[tuple[str, int, int, bool]], target: TargetLike, min_rank: int,
         strip_prefix: PrefixLike) -> Plan:
    """Match ``(name, rank, element count, is floating point)`` parameters to target scopes.

    Names on both sides go through :func:`strip_prefixes` before they are compared. A parameter
    is regularised when its rank is at least ``min_rank``, it is floating point, it has at least
    2 elements and its target std is positive. Raises :class:`TargetScopeError` when no
    parameter is.
    """
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 0:
        raise ValueError(f"min_rank must be an integer >= 0, not {min_rank!r}")
    prefixes = _prefix_list(strip_prefix)
    scopes = target_scopes(target)
    by_key: dict[str, str] = {}
    for name in scopes:
        key = strip_prefixes(name, prefixes)
        if key in by_key:
            raise TargetScopeError(
                f"target names {by_key[key]!r} and {name!r} are the same after strip_prefix={list(prefixes)}")
        by_key[key] = name

    result = Plan()
    seen: dict[str, str] = {}
    candidates: list[str] = []
    for name, rank, count, is_float in parameters:
        if rank < min_rank:
            continue
        candidates.append(name)
        key = strip_prefixes(name, prefixes)
        if key in seen:
            raise TargetScopeError(
                f"parameter names {seen[key]!r} and {name!r} are the same after strip_prefix={list(prefixes)}")
        seen[key] = name
        if key not in by_key:
            result.missing.append(name)
            continue
        mean, std = scopes[by_key[key]]
        if not is_float:
            result.skipped[name] = "not a floating-point parameter"
        elif count < 2:
            result.skipped[name] = "fewer than 2 elements (no spread to align)"
        elif std <= 0:
            result.skipped[name] = "its target std is 0"
        else:
            result.matched.append((name, mean, std))

    if not result.matched:
        raise TargetScopeError(_no_match_message(candidates, list(scopes), result, min_rank, prefixes))
    return result


def _no_match_message(candidates: list[str], target_names: list[str], result: Plan, min_rank: int,
                      prefixes: tuple[str, ...]) -> str:
    def sample(names: list[str]) -> str:
        shown = ", ".join(repr(n) for n in names[:4])
        return shown + (f", … ({len(names)} in all)" if len(names) > 4 else "")

    if not target_names:
        return "the target holds no scope (no tensor with a finite fused scope)"
    if not candidates:
        return f"the model has no parameter of rank >= {min_rank} (min_rank={min_rank})"
    if result.skipped:
        return ("no parameter can be regularised: " +
                "; ".join(f"{n}: {why}" for n, why in list(result.skipped.items())[:4]))
    hint = f" with strip_prefix={list(prefixes)}" if prefixes else \
        " (strip_prefix=['module.'] or similar maps names such as 'module.layer.weight' to 'layer.weight')"
    return (f"no parameter of rank >= {min_rank} has a target scope{hint}: the model has "
            f"{sample(candidates)}; the target has {sample(target_names)}")
