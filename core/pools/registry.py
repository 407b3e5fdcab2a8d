"""Pools: the role name -> PoolClient map that the worker builds from settings, swapped
in place when the config file is reloaded (``Pools.swap``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import httpx

from core.pools.client import PoolClient, new_http_client
from core.settings import PoolSettings


class Pools(Mapping[str, PoolClient]):
    """Every configured role's pool, sharing one HTTP client (one connection pool).

    Example:
        >>> pools = Pools.from_settings(get_settings().pools)
        >>> result = await pools["small"].generate(request)
        >>> await pools.aclose()
    """

    def __init__(
        self, clients: Mapping[str, PoolClient], http: httpx.AsyncClient | None = None
    ) -> None:
        """``http``, if given, is owned by the Pools and closed by :meth:`aclose`."""
        self._clients = dict(clients)
        self._http = http

    @classmethod
    def from_settings(
        cls, pools: Mapping[str, PoolSettings], http: httpx.AsyncClient | None = None
    ) -> Pools:
        """Build a client per role; without ``http``, create one shared client and own it."""
        owned = new_http_client(pools.values()) if http is None else None
        shared = http if http is not None else owned
        clients = {role: PoolClient(role, s, shared) for role, s in pools.items()}
        return cls(clients, owned)

    def __getitem__(self, role: str) -> PoolClient:
        try:
            return self._clients[role]
        except KeyError:
            known = ", ".join(sorted(self._clients)) or "none"
            raise KeyError(f"no pool for role {role!r} (configured: {known})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def http(self) -> httpx.AsyncClient | None:
        """The HTTP client these clients share, if this ``Pools`` owns it."""
        return self._http

    def swap(self, new: Pools) -> Pools:
        """Serve ``new``'s clients from now on; return the old ones, as a ``Pools`` that
        owns the old HTTP client, for the caller to close once no job holds them.

        In place, in one assignment: whoever holds this ``Pools`` (the runner, the API's
        routes) sees the new clients on its next lookup, while a running job keeps the
        clients it looked up when it started (``core.runner``). ``new`` is left empty.
        """
        old = Pools(self._clients, self._http)
        self._clients, self._http = new._clients, new._http
        new._clients, new._http = {}, None
        return old

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        if self._http is not None:
            await self._http.aclose()
