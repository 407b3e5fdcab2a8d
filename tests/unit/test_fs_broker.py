"""The embedded broker under concurrent publishers and consumers: every message arrives
exactly once and whole (kombu's own filesystem transport could hand a consumer a file
still being written)."""

from __future__ import annotations

import threading
from pathlib import Path

from kombu import Connection, Exchange, Queue

from core.settings import Settings
from workers.celery_app import ensure_broker_dir, transport_options

PUBLISHERS, PER_PUBLISHER, CONSUMERS = 4, 150, 3


def test_concurrent_publish_and_consume_delivers_each_message_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    ensure_broker_dir(settings)
    options = transport_options(settings) | {"polling_interval": 0.001}
    queue = Queue("ponder.test", Exchange("ponder.test", type="direct"), routing_key="ponder.test")
    received: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    total = PUBLISHERS * PER_PUBLISHER
    done = threading.Event()

    def publish(p: int) -> None:
        with Connection("filesystem://", transport_options=options) as conn:
            producer = conn.Producer()
            for i in range(PER_PUBLISHER):
                # Large bodies widen the window in which a file is half written.
                body = {"id": f"{p}-{i}", "pad": "x" * 20_000}
                producer.publish(body, exchange=queue.exchange, routing_key="ponder.test",
                                 serializer="json")  # fmt: skip

    def consume() -> None:
        try:
            with Connection("filesystem://", transport_options=options) as conn:
                simple = conn.SimpleQueue("ponder.test")
                while not done.is_set():
                    try:
                        message = simple.get(timeout=0.05)
                    except simple.Empty:
                        continue
                    with lock:
                        received.append(message.payload["id"])
                        assert len(message.payload["pad"]) == 20_000
                        if len(received) >= total:
                            done.set()
                    message.ack()
        except BaseException as exc:  # a torn file: JSONDecodeError in kombu's transport
            errors.append(exc)
            done.set()

    # Declared once, as Celery declares its queues at start: kombu rewrites the exchange
    # table on every declare, which is a race of its own and not what this test is about.
    with Connection("filesystem://", transport_options=options) as conn:
        queue(conn.default_channel).declare()
    consumers = [threading.Thread(target=consume) for _ in range(CONSUMERS)]
    publishers = [threading.Thread(target=publish, args=(p,)) for p in range(PUBLISHERS)]
    for t in consumers + publishers:
        t.start()
    for t in publishers:
        t.join(60)
    done.wait(60)
    done.set()
    for t in consumers:
        t.join(10)
    assert errors == []
    assert sorted(received) == sorted(f"{p}-{i}" for p in range(PUBLISHERS)
                                      for i in range(PER_PUBLISHER))  # fmt: skip
    left = [p.name for p in settings.broker_dir().rglob("*") if p.is_file()]
    assert [n for n in left if n.endswith((".msg", ".part"))] == []
