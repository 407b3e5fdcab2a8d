"""Dataset lines, strategy specs, replay overrides and the statistics, without models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from core.errors import InvalidInput
from evals.arms import parse_arms, preset_names, split_overrides
from evals.dataset import load_dataset
from evals.stats import cost_of_pass, pareto_front, percentile, wilson_interval
from tests.evals.conftest import write_lines


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {"id": "p1", "question": "What is 1 + 1?", "answer": "2"},
            "",
            "{not json",
            [1, 2],
            {"answer": "1"},
            {"question": "  ", "answer": "1"},
            {"question": "q", "answer": ["1"]},
            {"question": "q", "answer": True},
            {"id": "p1", "question": "q", "answer": "2"},
            {"question": "q", "answer": 7},
            {"id": 3.5, "question": "q", "answer": "1"},
        ],
    )
    dataset = load_dataset(path)
    assert [(b.line, b.reason) for b in dataset.bad_lines] == [
        (3, "not valid JSON (Expecting property name enclosed in double quotes, column 2)"),
        (4, "expected a JSON object, got list"),
        (5, "missing 'question'"),
        (6, "'question' must be a non-empty string, got str \"  \""),
        (7, "'answer' must be a string or a number, got list [\"1\"]"),
        (8, "'answer' must be a string or a number, got bool true"),
        (9, "duplicate id 'p1'"),
        (11, "'id' must be a string or an integer, got float 3.5"),
    ]
    assert [(p.index, p.id, p.answer, p.line) for p in dataset.problems] == [
        (0, "p1", "2", 1),
        (1, "line-10", "7", 10),
    ]
    assert len(load_dataset(path, limit=1).problems) == 1


def test_specs_json_or_kind_labelled_and_validated() -> None:
    arms = parse_arms(["direct", '{"kind": "self_consistency", "n": 4}'])
    assert [a.label for a in arms] == ["direct", "self_consistency n=4"]
    assert arms[1].params["n"] == 4 and arms[1].params["temperature"] == 0.7
    assert arms[1].roles == {"small"}
    with pytest.raises(InvalidInput) as bad:
        parse_arms(['{"kind": "self_consistency", "n": 0}'])
    assert bad.value.field == "strategy.n" and "--strategy" in bad.value.message
    with pytest.raises(InvalidInput, match="unknown strategy 'nope'; valid strategies: "):
        parse_arms(["nope"])
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_arms(['{"kind": '])
    with pytest.raises(InvalidInput, match="given twice"):
        parse_arms(["direct", '{"kind": "direct"}'])


def test_a_shipped_preset_is_an_arm_by_name_with_overrides() -> None:
    shipped = json.loads(Path("core/shipped_presets.json").read_text())["embedded-router"]
    by_name, overridden = parse_arms(
        ["embedded-router", '{"preset": "embedded-router", "easy_max": 1.0}']
    )
    assert by_name.label == "embedded-router"
    assert by_name.params["kind"] == "difficulty_router"
    assert by_name.params["easy_max"] == shipped["spec"]["easy_max"]
    assert by_name.roles == {"small", "large"}
    assert overridden.label == "embedded-router easy_max=1.0"
    assert overridden.params["easy_max"] == 1.0
    assert overridden.params["hard_min"] == shipped["spec"]["hard_min"]
    with pytest.raises(InvalidInput, match="no preset named 'nope'") as unknown:
        parse_arms(['{"preset": "nope"}'])
    assert unknown.value.field == "strategy.preset" and "embedded-router" in unknown.value.message
    with pytest.raises(InvalidInput, match="kind cannot be overridden") as kind:
        parse_arms(['{"preset": "embedded-router", "kind": "direct"}'])
    assert kind.value.field == "strategy.kind"


def test_stored_presets_resolve_by_name_and_replace_a_shipped_namesake() -> None:
    stored: dict[str, dict[str, Any]] = {
        "short": {"kind": "direct", "max_tokens": 48},
        "embedded-router": {"kind": "direct", "role": "large"},  # a tenant's replacement
    }
    texts = ["short", '{"preset": "short", "max_tokens": 32}', "embedded-router"]
    assert preset_names([*texts, "direct", '{"kind": "direct"}']) == {"short", "embedded-router"}
    short, shorter, replaced = parse_arms(texts, stored)
    assert (short.label, short.params["kind"]) == ("short", "direct")
    assert short.params["max_tokens"] == 48
    assert (shorter.label, shorter.params["max_tokens"]) == ("short max_tokens=32", 32)
    assert (replaced.label, replaced.params["kind"]) == ("embedded-router", "direct")
    listed = r"no preset named 'nope' \(presets: embedded-router, short\)"
    with pytest.raises(InvalidInput, match=listed):
        parse_arms(['{"preset": "nope"}'], stored)


def test_replay_overrides_go_to_the_strategies_that_have_them() -> None:
    arms = parse_arms(["direct", '{"kind": "self_consistency", "n": 4}'])
    assert split_overrides(arms, [("n", 8)]) == {"self_consistency n=4": {"n": 8}}
    assert split_overrides(arms, [("direct.max_tokens", 64)]) == {"direct": {"max_tokens": 64}}
    with pytest.raises(InvalidInput, match="no strategy of this eval has a parameter 'beam'"):
        split_overrides(arms, [("beam", 2)])
    with pytest.raises(InvalidInput) as bad:
        split_overrides(arms, [("n", -1)])
    assert bad.value.field == "strategy.n"


def test_statistics() -> None:
    assert [round(x, 4) for x in wilson_interval(0, 20)] == [0.0, 0.1611]
    assert [round(x, 4) for x in wilson_interval(20, 20)] == [0.8389, 1.0]
    assert [round(x, 4) for x in wilson_interval(3, 4)] == [0.3006, 0.9544]
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([], 50) is None
    assert cost_of_pass(0.02, 0.5) == 0.04
    assert math.isinf(cost_of_pass(0.02, 0.0) or 0.0)
    # (spend, accuracy): C is beaten by A (cheaper, as good); D ties nobody.
    points = [(5.0, 0.75), (12.5, 0.8), (6.0, 0.75), (1.0, 0.2)]
    assert pareto_front(points) == [3, 0, 1]
