"""The API-key cache: a key's tenant is remembered for its TTL and no longer, "some key
exists" latches, and unknown keys are never remembered."""

from __future__ import annotations

from app.api.key_cache import KeyCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_tenant_is_remembered_for_the_ttl_then_asked_again() -> None:
    clock = Clock()
    cache: KeyCache[str] = KeyCache(2.0, clock)
    answers = ["acme", None]
    asked: list[str] = []

    async def load() -> str | None:
        asked.append("db")
        return answers[len(asked) - 1]

    assert await cache.lookup("k", load) == "acme"
    clock.now += 1.9
    assert await cache.lookup("k", load) == "acme"  # cached: no second question
    assert asked == ["db"]
    clock.now += 0.2  # past the TTL: the key was revoked meanwhile
    assert await cache.lookup("k", load) is None
    assert asked == ["db", "db"]


async def test_unknown_keys_are_not_remembered_and_keys_exist_latches() -> None:
    clock = Clock()
    cache: KeyCache[str] = KeyCache(2.0, clock)
    asked = 0

    async def unknown() -> str | None:
        nonlocal asked
        asked += 1
        return None

    for _ in range(3):
        assert await cache.lookup("random-token", unknown) is None
    assert asked == 3

    async def no() -> bool:
        return False

    async def yes() -> bool:
        return True

    assert await cache.keys_exist(no) is False
    assert await cache.keys_exist(yes) is False  # "none" is believed for the TTL...
    clock.now += 2.1
    assert await cache.keys_exist(yes) is True  # ...then asked again
    assert await cache.keys_exist(no) is True  # revoking every key does not reopen the API


async def test_ttl_zero_asks_every_time() -> None:
    cache: KeyCache[str] = KeyCache(0.0, Clock())
    asked = 0

    async def load() -> str | None:
        nonlocal asked
        asked += 1
        return "acme"

    await cache.lookup("k", load)
    await cache.lookup("k", load)
    assert asked == 2
