"""``PONDER_CONFIG=ponder.yaml``: pools, tools and tenant limits in one validated file.

The file uses the settings' own models and names; a key path in the file is a
``PONDER_*`` variable's name with ``__`` as ``.`` (``pools.small.max_concurrency`` is
``PONDER_POOLS__SMALL__MAX_CONCURRENCY``; ``api.limits.default_budget`` is
``PONDER_API_LIMITS__DEFAULT_BUDGET``)::

    pools:
      small:
        endpoints: [http://vllm-small:8000]
        model: qwen-0.5b
        api_key: ${VLLM_KEY}          # from the environment; unset: an error naming the line
    tools:
      search: {url: "http://tools:8000/mcp"}
    api:
      limits: {default_budget: {max_tokens: 50000}}

Precedence, lowest first: defaults < this file < ``.env`` < environment variables
(``ConfigFileSource`` sits below both in ``settings_customise_sources``), so a variable
still overrides one field of a pool the file defines.

A bad file is one sentence per error, naming the file, the line and the key path, the
way an operator reads it: ``ponder.yaml line 7: pools.large.max_concurrency: Input
should be greater than or equal to 1``. Unknown keys are errors (a typo would otherwise
be silently ignored). Line numbers come from PyYAML's node marks: the document is
composed, not loaded, and every key's line is kept under its path.

Each settings class reads its own sections: core's ``Settings`` the top-level
``pools`` and ``tools``, the HTTP layer's ``ApiSettings`` the ``api`` section (core
knows that section's name, not its models: imports point down only).
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError

from core.errors import ConfigError

ENV_VAR = "PONDER_CONFIG"

CORE_SECTIONS = ("pools", "tools")
"""Top-level keys core's ``Settings`` reads from the file."""
API_SECTION = "api"
API_FIELDS = ("limits", "tenant_limits")
"""Keys of the ``api`` section (``ApiSettings`` fields), read by the API process."""

_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Loc = tuple[int | str, ...]


class ConfigFileError(ConfigError, SettingsError):
    """The config file cannot be used; ``sentences`` holds one line per problem.

    A ``SettingsError`` too, so every place that turns settings errors into sentences
    (``core.settings_errors``) handles it."""

    code = "bad_config_file"

    def __init__(self, sentences: list[str]) -> None:
        super().__init__("; ".join(sentences), sentences=sentences)
        self.sentences = sentences


@dataclass
class ConfigFile:
    """A parsed file: plain data with ``${VAR}`` references replaced, and the line of
    every key (1-based) by its path."""

    path: Path
    data: dict[str, Any]
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int:
        """The line of ``loc``, or of its nearest ancestor the file has."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1

    def sentence(self, loc: Loc, message: str) -> str:
        return f"{self.path} line {self.line(loc)}: {_dotted(loc)}: {message}"


def config_path() -> Path | None:
    """The file ``PONDER_CONFIG`` names (read from the process environment only, so a
    reload re-reads the same file), or None."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value) if value else None


def read(path: Path) -> ConfigFile:
    """Parse ``path``, keeping each key's line and substituting ``${VAR}`` references.

    Raises:
        ConfigFileError: the file is missing, is not YAML, is not a mapping, repeats a
            key, or names an environment variable that is not set.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigFileError(
            [f"{path}: cannot read the config file ({ENV_VAR}): {reason}"]
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "not valid YAML"
        raise ConfigFileError([f"{path}{line}: not valid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigFileError([f"{path}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    parsed = ConfigFile(path, {})
    if root is None:
        return parsed  # an empty file configures nothing
    errors: list[str] = []
    data = _build(loader, root, (), parsed, errors)
    if not isinstance(data, dict):
        errors.insert(
            0, f"{path} line 1: the file must be a mapping of sections (pools, tools, api)"
        )
    if errors:
        raise ConfigFileError(errors)
    assert isinstance(data, dict)
    parsed.data = data
    return parsed


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, parsed: ConfigFile, errors: list[str]
) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            here = (*loc, str(key))
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                errors.append(f"{parsed.path} line {line}: {_dotted(here)}: keys must be names")
                continue
            if key in out:
                errors.append(f"{parsed.path} line {line}: {_dotted(here)}: duplicate key")
                continue
            parsed.lines[here] = line
            out[key] = _build(loader, value_node, here, parsed, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            parsed.lines[(*loc, index)] = item.start_mark.line + 1
            items.append(_build(loader, item, (*loc, index), parsed, errors))
        return items
    value = loader.construct_object(node)
    if isinstance(value, str):
        return _substitute(value, loc, parsed, node.start_mark.line + 1, errors)
    return value


def _substitute(text: str, loc: Loc, parsed: ConfigFile, line: int, errors: list[str]) -> str:
    """``${VAR}`` -> the variable's value, ``${VAR:-default}`` -> it or ``default``,
    ``$$`` -> ``$``. An unset variable without a default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:
            return "$"
        value = os.environ.get(name)
        if value is not None:
            return value
        if default is not None:
            return default
        errors.append(
            f"{parsed.path} line {line}: {_dotted(loc)}: environment variable {name} is not set"
        )
        return ""

    return _REF.sub(replace, text)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


# -- validation ---------------------------------------------------------------


def check_section(
    parsed: ConfigFile,
    settings_cls: type[BaseSettings],
    names: tuple[str, ...],
    section: str | None = None,
    *,
    allowed: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Validate the part of the file ``settings_cls`` reads; return it as plain data.

    Args:
        parsed: the file.
        settings_cls: whose fields (``names``) the part holds.
        names: the fields the file may set.
        section: a top-level key holding the part (``api``); None: the top level.
        allowed: other keys allowed beside ``names`` (sections other classes read).

    Raises:
        ConfigFileError: unknown keys and invalid values, one sentence each, by line.
    """
    prefix: Loc = (section,) if section else ()
    data: Any = parsed.data.get(section, {}) if section else parsed.data
    if not isinstance(data, dict):
        raise ConfigFileError([parsed.sentence(prefix, "must be a mapping")])
    problems: list[tuple[Loc, str]] = []
    for key in data:
        if key not in names and key not in allowed:
            problems.append(((*prefix, key), _unknown_key(key, (*names, *allowed), settings_cls)))
    part = {key: value for key, value in data.items() if key in names}
    fields = {name: settings_cls.model_fields[name] for name in names}
    for name, value in part.items():
        problems += _unknown_keys(value, fields[name].annotation, (*prefix, name))
    model = _file_model(settings_cls, names)
    try:
        model.model_validate(part)
    except ValidationError as exc:
        seen = {loc for loc, _ in problems}
        for error in exc.errors(include_url=False):
            if error["type"] == "extra_forbidden":
                continue  # reported above, with a suggestion
            loc = (*prefix, *_data_loc(part, tuple(error["loc"])))
            if loc not in seen:
                seen.add(loc)
                problems.append((loc, str(error["msg"]).removeprefix("Value error, ")))
    if problems:
        ordered = sorted(problems, key=lambda p: parsed.line(p[0]))
        raise ConfigFileError([parsed.sentence(loc, message) for loc, message in ordered])
    return part


def _file_model(settings_cls: type[BaseSettings], names: tuple[str, ...]) -> type[BaseModel]:
    # A plain model with the same fields: validating a BaseSettings subclass would run
    # its sources (the environment, and this file again).
    fields: dict[str, Any] = {
        name: (settings_cls.model_fields[name].annotation, settings_cls.model_fields[name])
        for name in names
    }
    model: type[BaseModel] = create_model(
        f"{settings_cls.__name__}File", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _data_loc(data: Any, loc: Loc) -> Loc:
    """pydantic's ``loc`` cut to keys the data has: union member tags (``int``,
    ``float``) after a scalar go; a missing field's name stays."""
    out: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, dict):
            out.append(part)
            if part not in node:
                break
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            break
    return tuple(out)


def _unknown_key(key: str, known: tuple[str, ...], settings_cls: type[BaseSettings]) -> str:
    if key in settings_cls.model_fields:
        prefix = str(settings_cls.model_config.get("env_prefix", ""))
        return (
            f"not read from the config file (it holds {', '.join(known)}); set "
            f"{prefix}{key.upper()} in the environment"
        )
    return "unknown key" + _suggest(key, known)


def _suggest(key: str, known: Any) -> str:
    close = get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else f" (expected one of {', '.join(known)})"


def _unknown_keys(data: Any, annotation: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """Keys of ``data`` that no model along ``annotation`` has (pydantic ignores them)."""
    problems: list[tuple[Loc, str]] = []
    for kind in _candidates(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(data, dict):
            known = kind.model_fields
            for key, value in data.items():
                if key not in known:
                    problems.append(((*loc, key), "unknown key" + _suggest(key, known)))
                else:
                    problems += _unknown_keys(value, known[key].annotation, (*loc, key))
            return problems
        origin, args = get_origin(kind), get_args(kind)
        if origin is dict and isinstance(data, dict) and len(args) == 2:
            for key, value in data.items():
                problems += _unknown_keys(value, args[1], (*loc, key))
            return problems
        if origin is list and isinstance(data, list) and args:
            for index, item in enumerate(data):
                problems += _unknown_keys(item, args[0], (*loc, index))
            return problems
    return problems


def _candidates(annotation: Any) -> Iterator[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _candidates(get_args(annotation)[0])
    elif origin is Union or origin is types.UnionType:
        for arg in get_args(annotation):
            if arg is not type(None):
                yield from _candidates(arg)
    else:
        yield annotation


# -- the settings source ------------------------------------------------------


class ConfigFileSource(PydanticBaseSettingsSource):
    """A pydantic-settings source for the part of ``PONDER_CONFIG`` one class reads.

    Place it below the environment and ``.env`` in ``settings_customise_sources``::

        return init_settings, env_settings, dotenv_settings, ConfigFileSource(
            settings_cls, CORE_SECTIONS, allowed=(API_SECTION,)
        ), file_secret_settings
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        names: tuple[str, ...],
        section: str | None = None,
        *,
        allowed: tuple[str, ...] = (),
    ) -> None:
        super().__init__(settings_cls)
        self.names = names
        self.section = section
        self.allowed = allowed

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole part at once

    def __call__(self) -> dict[str, Any]:
        path = config_path()
        if path is None:
            return {}
        parsed = read(path)
        return check_section(
            parsed, self.settings_cls, self.names, self.section, allowed=self.allowed
        )
