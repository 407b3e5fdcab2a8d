"""Server-Sent Events for ``events()``: the line decoder (WHATWG's rules, the part the
Ponder API uses) and the resumption state shared by the sync and async clients.

What the API sends (``app.api.sse``): each span once when it opens and, for container
spans (job, strategy, span groups), once more when it closes, with ``id: <seq>``; a
``job_finished`` message last. After a reconnect with ``Last-Event-ID: N`` it sends the
spans after N, plus the current state of containers at or before N that may have closed
meanwhile. ``Resumption`` turns that into what a caller wants: every span's open and
close states at most once each, in the server's order, across any number of drops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.events import EVENT_ADAPTER, Event, JobFinishedEvent, JobRestartedEvent

DEFAULT_RETRY_S = 1.0


@dataclass(frozen=True)
class Message:
    event: str
    data: str
    id: str | None
    retry_ms: int | None


class Decoder:
    """Feed it the stream's lines (without their line ends); it returns a ``Message``
    on each blank line that ends one. Comments (``: ping``) are skipped."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, line: str) -> Message | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            message = Message(self._event, "\n".join(self._data), self._id, self._retry)
            self._event, self._data, self._retry = "", [], None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value  # it persists: the last id seen is the resume point
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


@dataclass
class Resumption:
    """Where a job's event stream is, so a new connection picks up where the last one
    dropped: ``last_event_id`` goes out as ``Last-Event-ID``; states already yielded are
    not yielded again."""

    last_event_id: str | None = None
    retry_s: float = DEFAULT_RETRY_S
    finished: bool = False
    _seen: set[tuple[str, bool]] = field(default_factory=set)

    def headers(self) -> dict[str, str]:
        return {} if self.last_event_id is None else {"Last-Event-ID": self.last_event_id}

    def accept(self, message: Message) -> Event | None:
        """The typed event ``message`` carries, or None when it repeats a state this
        stream already yielded."""
        if message.retry_ms is not None:
            self.retry_s = message.retry_ms / 1000.0
        event = EVENT_ADAPTER.validate_json(message.data)
        if message.id is not None:
            self.last_event_id = message.id
        if isinstance(event, JobFinishedEvent):
            self.finished = True
            return event
        if isinstance(event, JobRestartedEvent):
            # The worker re-ran the job from the top: the spans are rebuilt, with new
            # ids, and the server's numbering starts again.
            self._seen.clear()
            return event
        if event.span_id is not None:
            state = (event.span_id, getattr(event, "end_ts", None) is not None)
            if state in self._seen:
                return None
            self._seen.add(state)
        return event
