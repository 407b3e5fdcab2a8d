"""The client's one error type.

    PonderAPIError          the server answered with a 4xx or 5xx: ``status``, ``code``,
                            ``message``, ``field`` (dotted, the field to fix),
                            ``request_id`` (also in the server's log), ``retry_after``

Connection failures stay httpx's own (``httpx.TransportError`` and its subclasses): the
client does not guess whether a request that never got an answer reached the server.
``wait`` raises the built-in ``TimeoutError`` when its deadline passes.
"""

from __future__ import annotations

from typing import Any

import httpx


class PonderAPIError(Exception):
    """An error answer from the Ponder API, as its body (``{"error": {...}}``) says.

    Example:
        >>> try:
        ...     client.submit("2 + 3?", strategy={"kind": "self_consistency", "n": 0})
        ... except PonderAPIError as exc:
        ...     print(exc.status, exc.code, exc.field)  # 422 invalid_input strategy.n
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body or {}
        """The whole ``error`` object: some errors add keys (``errors``, ``job_id``...)."""

    @classmethod
    def from_response(cls, response: httpx.Response) -> PonderAPIError:
        """The error a failed (already read) response describes. A body that is not
        Ponder's (a proxy's HTML page) keeps its first 200 characters as the message."""
        detail: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                detail = body["error"]
        except ValueError:
            pass
        message = str(detail.get("message") or response.text[:200] or response.reason_phrase)
        field = detail.get("field")
        request_id = detail.get("request_id") or response.headers.get("X-Request-ID")
        return cls(
            response.status_code,
            str(detail.get("code") or "http_error"),
            message,
            field=str(field) if field is not None else None,
            request_id=str(request_id) if request_id else None,
            retry_after=_seconds(response.headers.get("Retry-After")),
            body=detail,
        )


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: Ponder never sends one
