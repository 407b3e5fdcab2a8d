"""``PonderClient``: the jobs and experiments API over a blocking ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from core.events import Event
from ponder_client import _base
from ponder_client._base import DEFAULT_TIMEOUT, DEFAULT_URL, MAX_RECONNECTS, Call, Mode, Priority
from ponder_client._sse import Decoder, Resumption
from ponder_client.errors import PonderAPIError
from ponder_client.models import (
    DiffOut,
    ExperimentOut,
    ExperimentPage,
    ExperimentRows,
    JobOut,
    JobPage,
    PresetOut,
    StrategyOut,
    TraceOut,
)


class PonderClient:
    """A Ponder server's jobs API: submit, list and search, wait, follow events, cancel,
    replay, fork, diff; the strategy and preset catalogues; stored experiments.

    Args:
        base_url: the server (``ponder serve``'s default: ``http://127.0.0.1:8000``).
        api_key: sent as ``Authorization: Bearer``; default ``$PONDER_API_KEY``, and none
            when that is unset (a server with no key yet).
        http_client: an ``httpx.Client`` to use (proxies, TLS, a mock transport); it is
            not closed by ``close()``. Default: one of the client's own.
        timeout: for every request but event streams, when the client makes its own.
        max_reconnects: an event stream, or ``wait``, gives up after this many failed
            reconnections in a row.

    Example:
        >>> with PonderClient("http://127.0.0.1:8000", api_key=KEY) as ponder:
        ...     job = ponder.submit("What is 17 * 3?", strategy={"kind": "self_consistency"})
        ...     print(ponder.wait(job.id).answer)
        51
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_reconnects: int = MAX_RECONNECTS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = _base.auth_headers(api_key)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self.max_reconnects = max_reconnects

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> PonderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        return self._http.request(
            call.method,
            self.base_url + call.path,
            json=call.json,
            params=call.params,
            headers=self._headers | call.headers,
        )

    # Jobs

    def submit(
        self,
        question: str | None = None,
        strategy: dict[str, Any] | str | None = None,
        budget: dict[str, Any] | None = None,
        roles: dict[str, str] | None = None,
        seed: int | None = None,
        priority: Priority | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> JobOut:
        """Queue a job (``POST /v1/jobs``). ``fields`` go into the body as given:
        ``messages``, ``tools``, ``tool_choice``, ``response_format``, ``answer_kind``,
        and whatever a newer server accepts. A retry with the same ``idempotency_key``
        returns the same job."""
        call = _base.submit_call(
            question, strategy=strategy, budget=budget, roles=roles, seed=seed,
            priority=priority, idempotency_key=idempotency_key, fields=fields,
        )  # fmt: skip
        return _base.parse(JobOut, self._send(call))

    def get(self, job_id: str) -> JobOut:
        return _base.parse(JobOut, self._send(Call("GET", f"/v1/jobs/{_base.seg(job_id)}")))

    def list_jobs(
        self,
        *,
        status: str | None = None,
        strategy: str | None = None,
        created_after: str | datetime | None = None,
        cursor: str | None = None,
        limit: int | None = None,
        model: str | None = None,
        q: str | None = None,
        tenant: str | None = None,
        created_before: str | datetime | None = None,
        min_cost: float | None = None,
        max_cost: float | None = None,
        min_latency_ms: float | None = None,
        max_latency_ms: float | None = None,
    ) -> JobPage:
        """One page, newest first; pass ``next_cursor`` as ``cursor`` for the next. The
        filters apply in the server's database to all the tenant's jobs; None sends none.

        Args:
            status: ``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``.
            strategy: the spec's ``kind``.
            model: a model some role of the job is bound to (``sim-large``).
            q: a case-insensitive substring of the question or the answer, or the start
                of the job's id.
            tenant: another tenant's jobs, or ``*`` for every tenant's (admin keys only).
            created_after, created_before: exclusive bounds, ISO 8601 or ``datetime``
                (no zone means UTC).
            min_cost, max_cost: ``usage.cost``, inclusive; jobs of unknown cost match none.
            min_latency_ms, max_latency_ms: the job's wall time, inclusive; unfinished
                jobs match none.
        """
        call = _base.list_call(
            status=status, strategy=strategy, model=model, q=q, tenant=tenant,
            created_after=created_after, created_before=created_before,
            min_cost=min_cost, max_cost=max_cost, min_latency_ms=min_latency_ms,
            max_latency_ms=max_latency_ms, cursor=cursor, limit=limit,
        )  # fmt: skip
        return _base.parse(JobPage, self._send(call))

    def cancel(self, job_id: str) -> JobOut:
        """Ask a queued or running job to stop; ``wait`` then sees it ``cancelled``."""
        call = Call("POST", f"/v1/jobs/{_base.seg(job_id)}/cancel")
        return _base.parse(JobOut, self._send(call))

    def replay(
        self,
        job_id: str,
        mode: Mode = "strict",
        strategy: dict[str, Any] | None = None,
        *,
        roles: dict[str, str] | None = None,
        fork_from: int | None = None,
        priority: Priority | None = None,
        **fields: Any,
    ) -> JobOut:
        """A child job seeded with ``job_id``'s journal. ``strict``: the same trace with
        zero model calls (a call not in the journal fails the job); ``live``: calls not
        in the journal go to the models. ``strategy``: overrides merged into the
        parent's spec. ``fields`` go into the body as given (``tool_result``)."""
        call = _base.replay_call(
            job_id, mode=mode, fork_from=fork_from, strategy=strategy, roles=roles,
            priority=priority, fields=fields,
        )  # fmt: skip
        return _base.parse(JobOut, self._send(call))

    def fork(
        self,
        job_id: str,
        at: int,
        strategy: dict[str, Any] | None = None,
        *,
        roles: dict[str, str] | None = None,
        priority: Priority | None = None,
    ) -> JobOut:
        """A live replay keeping only the parent's first ``at`` journal entries."""
        return self.replay(job_id, "live", strategy, roles=roles, fork_from=at, priority=priority)

    def wait(self, job_id: str, timeout: float | None = 600.0) -> JobOut:
        """The job once it is final (succeeded, failed or cancelled), by long polls
        (``GET /v1/jobs/{id}?wait=``) that the server answers as the job finishes.
        Raises ``TimeoutError`` after ``timeout`` seconds (None: no limit); the job itself
        keeps running. An overload or outage is retried ``max_reconnects`` times in a row."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = _base.LongPoll(job_id, deadline, self.max_reconnects)
        url = f"{self.base_url}/v1/jobs/{_base.seg(job_id)}"
        while True:
            try:
                request = poll.request(self._http.timeout)
                response = self._http.get(url, headers=self._headers, **request)
            except httpx.TransportError as exc:
                pause = poll.failed(exc)
            else:
                job, pause = poll.answered(response)
                if job is not None:
                    return job
            if pause:
                time.sleep(pause)

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's trace as typed events, past ones first, then live until
        ``job_finished`` (the last). A dropped connection is resumed with
        ``Last-Event-ID``: no event is skipped, and no span state (open, closed) is
        yielded twice. ``last_event_id``: start after it (an id from an earlier
        stream)."""
        return self._events(job_id, Resumption(last_event_id=last_event_id))

    def _events(self, job_id: str, state: Resumption) -> Iterator[Event]:
        url = f"{self.base_url}/v1/jobs/{_base.seg(job_id)}/events"
        failures = 0
        while True:
            headers = self._headers | state.headers() | {"Accept": "text/event-stream"}
            timeout = _base.stream_timeout(self._http.timeout)
            delay = state.retry_s
            try:
                with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        _base.check(response)
                    decoder = Decoder()
                    for line in response.iter_lines():
                        message = decoder.feed(line)
                        if message is None:
                            continue
                        failures = 0
                        event = state.accept(message)
                        if event is not None:
                            yield event
                        if state.finished:
                            return
                error: Exception = httpx.RemoteProtocolError(
                    "the event stream ended before job_finished"
                )
            except PonderAPIError as exc:
                if not _base.reconnectable(exc):
                    raise
                error = exc
                delay = exc.retry_after if exc.retry_after is not None else delay
            except httpx.TransportError as exc:
                error = exc
            failures += 1
            if failures > self.max_reconnects:
                raise error
            time.sleep(delay)

    def trace(self, job_id: str) -> TraceOut:
        """Every span as a typed event, in seq order, and the journal's summary."""
        call = Call("GET", f"/v1/jobs/{_base.seg(job_id)}/trace")
        return _base.parse(TraceOut, self._send(call))

    def diff(self, a: str, b: str) -> DiffOut:
        """Call by call: the first divergent call and what differs; deltas are b - a."""
        call = Call("GET", f"/v1/jobs/{_base.seg(a)}/diff/{_base.seg(b)}")
        return _base.parse(DiffOut, self._send(call))

    # Catalogue

    def strategies(self) -> list[StrategyOut]:
        return _base.parse_list(StrategyOut, self._send(Call("GET", "/v1/strategies")))

    def presets(self) -> list[PresetOut]:
        return _base.parse_list(PresetOut, self._send(Call("GET", "/v1/presets")))

    def preset(self, name: str) -> PresetOut:
        call = Call("GET", f"/v1/presets/{_base.seg(name)}")
        return _base.parse(PresetOut, self._send(call))

    def put_preset(self, name: str, spec: dict[str, Any], description: str = "") -> PresetOut:
        """Create or replace a preset; the spec is validated like a job's."""
        body = {"spec": spec, "description": description}
        call = Call("PUT", f"/v1/presets/{_base.seg(name)}", body)
        return _base.parse(PresetOut, self._send(call))

    def delete_preset(self, name: str) -> None:
        _base.check(self._send(Call("DELETE", f"/v1/presets/{_base.seg(name)}")))

    # Experiments

    def list_experiments(
        self, *, cursor: str | None = None, limit: int | None = None
    ) -> ExperimentPage:
        """One page of the tenant's experiments, newest first, each with its arms'
        summaries; pass ``next_cursor`` as ``cursor`` for the next."""
        call = _base.experiments_call(cursor, limit)
        return _base.parse(ExperimentPage, self._send(call))

    def experiment(self, experiment_id: str) -> ExperimentOut:
        """The experiment and its arms; per arm the summary: accuracy with its Wilson 95%
        interval, tokens, latency percentiles, cost."""
        call = Call("GET", f"/v1/experiments/{_base.seg(experiment_id)}")
        return _base.parse(ExperimentOut, self._send(call))

    def experiment_rows(self, experiment_id: str) -> ExperimentRows:
        """The arms × problems grid: every stored row (one arm on one problem, with its
        job), by arm then problem."""
        call = Call("GET", f"/v1/experiments/{_base.seg(experiment_id)}/rows")
        return _base.parse(ExperimentRows, self._send(call))

    def create_experiment(
        self,
        name: str,
        arms: Sequence[Mapping[str, Any]],
        *,
        problems: int | None = None,
        dataset: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        parent_experiment_id: str | None = None,
    ) -> ExperimentOut:
        """Store an experiment and its arms, without rows yet (what ``ponder eval --url``
        does before its first job). Each arm: ``label``, ``spec`` (as written),
        ``params`` (the full spec the jobs run; the server validates it) and ``roles``.
        Unset arguments are left out of the body."""
        call = _base.experiment_create_call(
            name, arms, dataset=dataset, problems=problems, settings=settings,
            params=params, parent_experiment_id=parent_experiment_id,
        )  # fmt: skip
        return _base.parse(ExperimentOut, self._send(call))

    def add_experiment_rows(
        self,
        experiment_id: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        interrupted: bool = False,
    ) -> ExperimentOut:
        """Store rows (at most 1000 a request; ``RowOut``'s fields without ``arm``:
        ``strategy`` names the arm by label). A row stored before for its arm and
        problem is replaced, and the server recomputes every summary from the stored
        rows. A row's ``job_id`` must be one of the tenant's jobs."""
        call = _base.experiment_rows_call(experiment_id, rows, interrupted=interrupted)
        return _base.parse(ExperimentOut, self._send(call))
