"""The strategies an eval compares ("arms"): parsed, validated and labelled up front.

A ``--strategy`` SPEC is JSON (``'{"kind": "self_consistency", "n": 4}'``), a bare
kind (``direct``), or a preset: its name (``embedded-router``) or
``{"preset": "embedded-router", ...overrides}``. The presets are the ones Ponder ships
and the tenant's stored ones (what ``ponder calibrate --preset`` writes) where the eval
runs: the local database, or the server's with ``--url``; the arm keeps the resolved
spec, so the results say what ran. Each arm's label is its kind plus the parameters the
user set, so two arms of one kind stay apart in tables and plots
(``self_consistency n=4``); a preset's arm is labelled by its name and overrides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidInput
from core.presets import PRESET_FIELD, shipped_presets
from core.specs import validate_spec
from strategies.registry import STRATEGIES, roles_used


@dataclass(frozen=True)
class Arm:
    label: str
    spec: dict[str, Any]
    """As the user wrote it (``kind`` plus the parameters set)."""
    params: dict[str, Any]
    """The validated spec with every default filled in: what the jobs store."""
    roles: frozenset[str]


def _label(spec: Mapping[str, Any]) -> str:
    shown = " ".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in spec.items() if k != "kind"
    )
    return f"{spec['kind']} {shown}".strip()


def make_arm(spec: dict[str, Any], field: str = "strategy", label: str | None = None) -> Arm:
    try:
        params = validate_spec(spec)
    except InvalidInput as exc:
        # Name the flag too: with three --strategy flags "strategy.n" alone is ambiguous.
        raise InvalidInput(f"{field}: {exc.message}", field=exc.field) from None
    return Arm(
        label or _label(spec), spec, params.model_dump(mode="json"), frozenset(roles_used(params))
    )


Presets = Mapping[str, Mapping[str, Any]]
"""Preset name to its spec."""


def shipped() -> dict[str, Mapping[str, Any]]:
    return {p.name: p.spec for p in shipped_presets("default")}


def preset_names(texts: Iterable[str]) -> set[str]:
    """The names ``--strategy`` values use as presets (any name that is not a strategy
    kind): when there are any, the presets are looked up where the eval runs, since a
    tenant's stored preset may also replace a shipped one of its name."""
    names = set()
    for text in texts:
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                spec = json.loads(stripped)
            except json.JSONDecodeError:
                continue  # parse_arm names the error
            if isinstance(spec, dict) and isinstance(spec.get(PRESET_FIELD), str):
                names.add(spec[PRESET_FIELD])
        elif stripped not in STRATEGIES:
            names.add(stripped)
    return names


def _preset_spec(name: Any, field: str, presets: Presets) -> dict[str, Any]:
    if not isinstance(name, str) or name not in presets:
        shown = ", ".join(sorted(presets)) or "none"
        raise InvalidInput(
            f"{field}: no preset named {name!r} (presets: {shown})",
            field="strategy.preset",
            valid=sorted(presets),
        )
    return dict(presets[name])


def _preset_arm(spec: dict[str, Any], field: str, presets: Presets) -> Arm:
    name = spec[PRESET_FIELD]
    overrides = {k: v for k, v in spec.items() if k != PRESET_FIELD}
    base = _preset_spec(name, field, presets)
    if overrides.get("kind", base["kind"]) != base["kind"]:
        raise InvalidInput(
            f"{field}: preset {name!r} is a {base['kind']} spec; its kind cannot be overridden",
            field="strategy.kind",
        )
    overrides.pop("kind", None)
    label = _label({"kind": name, **overrides})
    return make_arm({**base, **overrides}, field=field, label=label)


def parse_arm(text: str, presets: Presets | None = None) -> Arm:
    """One ``--strategy`` value: JSON object, bare kind or preset name. ``presets``: the
    ones to resolve names among (default: those Ponder ships)."""
    presets = shipped() if presets is None else presets
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            spec = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"--strategy {text!r} is not valid JSON ({exc.msg})", field="strategy"
            ) from None
        if isinstance(spec, dict) and PRESET_FIELD in spec:
            return _preset_arm(spec, f"--strategy {text}", presets)
        if not isinstance(spec, dict) or "kind" not in spec:
            raise InvalidInput(f"--strategy {text!r} needs a 'kind'", field="strategy.kind")
    elif stripped not in STRATEGIES and stripped in presets:
        return _preset_arm({PRESET_FIELD: stripped}, f"--strategy {text}", presets)
    else:
        spec = {"kind": stripped}
    return make_arm(spec, field=f"--strategy {text}")


def parse_arms(texts: Iterable[str], presets: Presets | None = None) -> list[Arm]:
    arms = [parse_arm(t, presets) for t in texts]
    if not arms:
        raise InvalidInput("give at least one --strategy", field="strategy")
    labels = [a.label for a in arms]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise InvalidInput(f"--strategy given twice: {', '.join(duplicates)}", field="strategy")
    return arms


def split_overrides(arms: list[Arm], pairs: Iterable[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Which parameter changes of a what-if replay apply to which arm (by label).

    ``-p n=8`` applies to every arm whose strategy has a parameter ``n``;
    ``-p self_consistency.n=8`` only to arms of that kind. A key that no arm has is an
    error, not a silent no-op. Every changed spec is validated before anything runs.
    """
    changes: dict[str, dict[str, Any]] = {arm.label: {} for arm in arms}
    for key, value in pairs:
        kind, _, name = key.rpartition(".")
        if kind and kind not in STRATEGIES:
            raise InvalidInput(f"-p {key}: {kind!r} is not a strategy kind", field=f"param.{key}")
        hit = False
        for arm in arms:
            fields = STRATEGIES[arm.params["kind"]].params.model_fields
            if (not kind or arm.params["kind"] == kind) and name in fields and name != "kind":
                changes[arm.label][name] = value
                hit = True
        if not hit:
            raise InvalidInput(
                f"-p {key}: no strategy of this eval has a parameter {name!r}",
                field=f"param.{key}",
            )
    for arm in arms:
        if changes[arm.label]:
            make_arm({**arm.params, **changes[arm.label]}, field=f"-p for {arm.label}")
    return {label: c for label, c in changes.items() if c}


def changed_label(label: str, change: Mapping[str, Any]) -> str:
    shown = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in change.items())
    return f"{label} -> {shown}"
