"""The strategy tree: families as subpackages, kinds unchanged, roles declared."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from strategies.compose import ChildSpec
from strategies.protocol import role_field
from strategies.registry import STRATEGIES, is_role_field, parse_spec, roles_used

ROOT = Path(__file__).resolve().parents[2] / "strategies"
FAMILIES = {"baselines", "budgeted_thinking", "verifier_loops", "collaboration", "tool_use"}


def test_every_strategy_lives_in_its_family_package() -> None:
    for kind, strategy in STRATEGIES.items():
        package, _, module = strategy.run.__module__.rpartition(".")
        assert module == kind and package.split(".", 1)[1] in FAMILIES, strategy.run.__module__
    flat = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert flat == ["compose.py", "protocol.py", "registry.py"]  # the framework only
    shared = {p.stem for p in (ROOT / "shared").glob("*.py")} - {"__init__"}
    assert shared and not shared & set(STRATEGIES)  # helpers, no strategy


def test_every_role_naming_field_is_declared_as_a_role() -> None:
    """No field that names a model role is left to a naming convention."""
    for kind, strategy in STRATEGIES.items():
        for name, field in strategy.params.model_fields.items():
            if "role" in name:
                assert is_role_field(field), f"{kind}.{name} is not declared with role_field"
            schema = strategy.params.model_json_schema()["properties"].get(name, {})
            assert schema.get("x-ponder-role", False) is is_role_field(field)


class _Drafter(BaseModel):
    kind: str = "drafter"
    writer: str = role_field(default="draft-pool", description="Writes drafts.")
    tone: str = Field(default="large", description="Not a role, though it looks like one.")
    inner: ChildSpec | None = None


def test_roles_are_bound_by_declaration_not_by_name() -> None:
    params = _Drafter()
    assert roles_used(params) == {"draft-pool"}
    nested = parse_spec({"kind": "best_of_n", "verifier_role": "judge"})
    assert roles_used(nested) == {"small", "judge"}
