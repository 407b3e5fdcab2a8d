"""API-key lookups without a database round trip per request.

Two facts are cached per API process:

- that some key exists: once true it stays true (revoking every key does not reopen the
  API); while none does, the answer is kept for ``ttl_s``, so the first key created
  closes the open API within that time;
- which tenant an active key belongs to, for ``ttl_s`` (``PONDER_API_KEY_CACHE_S``,
  2 s by default): a revoked key is refused at most that long after the revocation.

Unknown keys are never cached: a client cannot fill the cache with random tokens.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_ENTRIES = 10_000


class KeyCache(Generic[T]):
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._keys_exist = False
        self._no_keys_until = 0.0  # "no key exists" is believed until then
        self._entries: dict[str, tuple[float, T]] = {}

    async def keys_exist(self, load: Callable[[], Awaitable[bool]]) -> bool:
        if self._keys_exist:
            return True
        now = self._clock()
        if now < self._no_keys_until:
            return False
        self._keys_exist = await load()
        if not self._keys_exist:
            self._no_keys_until = now + self.ttl_s
        return self._keys_exist

    async def lookup(self, token: str, load: Callable[[], Awaitable[T | None]]) -> T | None:
        now = self._clock()
        hit = self._entries.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await load()
        if value is None:
            self._entries.pop(token, None)
            return None
        self._keys_exist = True
        if self.ttl_s > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[token] = (now + self.ttl_s, value)
        return value
