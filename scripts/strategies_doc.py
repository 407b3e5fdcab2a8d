"""Write docs/strategies.md from the strategy registry (docstrings and params schemas).

    python scripts/strategies_doc.py          # rewrite the file
    python scripts/strategies_doc.py --check  # exit 1 if it is out of date (a test runs this)

The registry is the single source: each strategy's module docstring and its Params
fields' descriptions, types, defaults and bounds.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from strategies.protocol import ANSWER_KINDS
from strategies.registry import STRATEGIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"

HEADER = """# Strategies

Generated from the strategy registry by `python scripts/strategies_doc.py`; do not edit by
hand. `GET /v1/strategies` and `ponder strategies` show the same, with full JSON schemas.

A job's strategy is `{"kind": <name>, ...params}`. Fields typed *strategy spec* take a
child spec (composition by wrapping: e.g. `best_of_n` over `elastic` samples), validated
at any depth. Role fields (declared with `strategies.protocol.role_field`; marked
`x-ponder-role` in the JSON schema) name a model role, a configured pool such as `small`
or `large`. Strategies live in `strategies/<family>/<kind>.py`: `baselines`,
`budgeted_thinking`, `verifier_loops` and `collaboration` (with the routers).

"""

KINDS_INTRO = """## Answer kinds

A job's answer has a kind, chosen from its request: `tool_calls` when it offers `tools`,
`json` with a JSON `response_format`, otherwise `number`; or set with `answer_kind` (the
only way to ask for `text`). A strategy votes on, scores and selects answers of the kinds
it supports; any other kind is refused with a 422 naming `answer_kind`. How each kind is
compared: `strategies/shared/answer_kinds.py` (JSON in canonical form and valid against
the schema; tool calls by its_hub's hierarchical vote; free text by Universal
Self-Consistency).

"""


def kinds_table() -> list[str]:
    """Strategy x answer kind: ✓ where the strategy supports the kind."""
    out = [KINDS_INTRO, "| Strategy | " + " | ".join(ANSWER_KINDS) + " |"]
    out.append("|---|" + "---|" * len(ANSWER_KINDS))
    for kind, strategy in sorted(STRATEGIES.items()):
        marks = ["✓" if k in strategy.answer_kinds else "—" for k in ANSWER_KINDS]
        out.append(f"| `{kind}` | " + " | ".join(marks) + " |")
    return [*out, ""]


def _type(info: FieldInfo) -> str:
    annotation = info.annotation
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace("pydantic.main.", "")
    if "BaseModel" in text:
        return "strategy spec" + (" or null" if "None" in text else "")
    return text.replace("NoneType", "null")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value: Any = info.default
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return f"`{value!r}`"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for name, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, name, None) is not None:
                parts.append(f"{symbol} {getattr(meta, name)}")
    return ", ".join(parts)


def render() -> str:
    out = [HEADER, "| Strategy | Summary |", "|---|---|"]
    for kind, strategy in sorted(STRATEGIES.items()):
        summary = strategy.doc.split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
        summary = re.sub(r"^``\w+``:\s*", "", summary)
        out.append(f"| [`{kind}`](#{kind}) | {summary} |")
    out.append("")
    out += kinds_table()
    for kind, strategy in sorted(STRATEGIES.items()):
        out += [f"## {kind}", "", strategy.doc.strip(), ""]
        out += ["| Param | Type | Default | Bounds | Meaning |", "|---|---|---|---|---|"]
        for name, info in strategy.params.model_fields.items():
            if name == "kind":
                continue
            meaning = (info.description or "").replace("\n", " ").replace("|", "\\|")
            type_ = _type(info).replace("|", "\\|")
            out.append(f"| `{name}` | {type_} | {_default(info)} | {_bounds(info)} | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/strategies_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
