"""Settings errors as an operator reads them: one sentence per error, naming the variable.

pydantic reports ``pools.small.model  Field required … errors.pydantic.dev/…``; an
operator sets ``PONDER_POOLS__SMALL__MODEL``. ``describe`` turns a ``ValidationError``
raised by ``Settings()`` into sentences built from each error's ``loc`` (``PONDER_`` and
``__`` nesting, the way pydantic-settings reads the environment), and ``load_settings``
is what entry points (the CLI, the API) call to get settings or those sentences.

Example:
    >>> try:
    ...     settings = load_settings()
    ... except BadSettings as exc:
    ...     print(exc.message)
    PONDER_POOLS__SMALL__MODEL is required (pool "small" has endpoints but no model name)
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from core.errors import ConfigError
from core.settings import Settings

PREFIX = "PONDER_"

# What a missing field is called in a sentence, where its name alone says too little.
_LABELS = {"model": "model name", "api_key": "API key"}


class BadSettings(ConfigError):
    """``Settings()`` failed; ``sentences`` holds one line per error."""

    code = "bad_settings"

    def __init__(self, sentences: list[str]) -> None:
        super().__init__("; ".join(sentences), sentences=sentences)
        self.sentences = sentences


def env_name(loc: tuple[int | str, ...], prefix: str = PREFIX) -> str:
    """``("pools", "small", "model")`` -> ``PONDER_POOLS__SMALL__MODEL`` (list indexes
    are dropped: a list is one variable holding JSON)."""
    parts = [str(p).upper() for p in loc if not isinstance(p, int)]
    return prefix + "__".join(parts) if parts else prefix + "*"


def _label(field: str) -> str:
    return _LABELS.get(field, field.replace("_", " "))


def _missing(loc: tuple[int | str, ...], given: Any, prefix: str) -> str:
    name = env_name(loc, prefix)
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if len(parts) == 3 and parts[0] == "pools" and isinstance(given, dict):
        labels = [_label(str(k)) for k in given] or ["other settings"]
        present = " and ".join([", ".join(labels[:-1]), labels[-1]] if len(labels) > 1 else labels)
        return f'{name} is required (pool "{parts[1]}" has {present} but no {_label(parts[2])})'
    return f"{name} is required"


def _sentence(error: Any, prefix: str) -> str:
    loc = tuple(error.get("loc") or ())
    kind = error.get("type", "")
    if kind == "missing":
        return _missing(loc, error.get("input"), prefix)
    message = str(error.get("msg", "is not valid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message[:1].lower() + message[1:]
    given = error.get("input")
    shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
    return f"{env_name(loc, prefix)}: {message}{shown}"


def describe(exc: ValidationError | SettingsError, prefix: str = PREFIX) -> list[str]:
    """One sentence per error of ``exc``, each naming the ``PONDER_*`` variable to fix.

    Args:
        exc: what ``Settings()`` raised: pydantic's ``ValidationError`` (a value of the
            wrong type, a required value missing) or pydantic-settings' ``SettingsError``
            (a list or object variable that is not valid JSON).
        prefix: the settings class's ``env_prefix`` (``PONDER_API_`` for the API's own).
    """
    sentences = getattr(exc, "sentences", None)
    if isinstance(sentences, list):  # core.config_file.ConfigFileError: already by line
        return [str(s) for s in sentences]
    if isinstance(exc, SettingsError):
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1).upper() if match else "*"
        return [
            f"a {prefix}{field}__* variable is not valid JSON (lists and objects must be "
            f"JSON, e.g. {PREFIX}POOLS__SMALL__ENDPOINTS='[\"http://10.0.0.5:8000\"]')"
        ]
    return [_sentence(error, prefix) for error in exc.errors(include_url=False)]


def load_settings(**overrides: Any) -> Settings:
    """``Settings(**overrides)``, or ``BadSettings`` whose sentences say what to fix.

    Raises:
        BadSettings: a ``PONDER_*`` variable (or ``.env`` line) is missing or invalid.
    """
    try:
        return Settings(**overrides)
    except (ValidationError, SettingsError) as exc:
        raise BadSettings(describe(exc)) from None


def settings_or_exit(program: str = "ponder") -> Settings:
    """For entry points only (the CLI's ``main``, the API's ``app``): the cached settings,
    or each sentence on stderr as ``PROGRAM: bad settings: …`` and exit code 2, with no
    traceback. Library code calls ``load_settings`` and handles ``BadSettings``."""
    import sys

    from core.settings import get_settings

    try:
        return get_settings()
    except (ValidationError, SettingsError) as exc:
        for sentence in describe(exc):
            print(f"{program}: bad settings: {sentence}", file=sys.stderr)
        raise SystemExit(2) from None
