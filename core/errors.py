"""Ponder's error tree. Every expected failure has a code and an HTTP status.

    PonderError                      (code, status)
    ├── InvalidInput                 bad question, param, spec or budget     422
    │   └── UnknownStrategy          names the valid strategies              422
    ├── NotFound                     no such job (or not this tenant's)      404
    ├── IdempotencyConflict          an idempotency key reused for another   409
    │                                request
    ├── ConfigError                  settings that cannot work               500*
    ├── EmbeddedModelError           embedded package missing / bad hash     503
    ├── JournalMiss                  strict replay asked for an unrecorded   409
    │                                call
    └── ModelError                   a model call failed for good            502
        ├── PoolUnavailable          every endpoint down or circuit-open     503
        ├── ModelHTTPError           a non-retryable 4xx from the server     502
        └── ModelTimeout             the call ran past its deadline          504

``strategies.protocol.BudgetExhausted`` is not here on purpose: it is an expected,
anytime outcome that strategies handle, not an error.
(*) a ConfigError is the operator's mistake; the CLI reports it with exit code 2.
"""

from __future__ import annotations

from typing import Any


class PonderError(Exception):
    code: str = "ponder_error"
    status: int = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidInput(PonderError):
    code = "invalid_input"
    status = 422

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class UnknownStrategy(InvalidInput):
    code = "unknown_strategy"


class NotFound(PonderError):
    code = "not_found"
    status = 404


class IdempotencyConflict(PonderError):
    code = "idempotency_conflict"
    status = 409


class ConfigError(PonderError):
    code = "config_error"
    status = 500


class EmbeddedModelError(PonderError):
    code = "embedded_model_error"
    status = 503


class JournalMiss(PonderError):
    code = "journal_miss"
    status = 409


class ModelError(PonderError):
    code = "model_error"
    status = 502


class PoolUnavailable(ModelError):
    code = "pool_unavailable"
    status = 503


class ModelHTTPError(ModelError):
    code = "model_http_error"
    status = 502


class ModelTimeout(ModelError):
    code = "model_timeout"
    status = 504
