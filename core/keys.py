"""API keys: created once, shown once, stored only as a hash.

A key is 32 random bytes (``pk_`` + URL-safe base64). Being random rather than chosen
by a person, it needs no slow password hash: SHA-256 of the key is what the database
holds, and a lookup by that hash is one indexed query. Without the key a leaked
``api_keys`` table grants nothing.

Example:
    >>> key = await create_key(sessions, tenant="acme")   # print it once; never stored
    >>> await tenant_for_key(session, key)
    'acme'
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import repo
from core.db.models import ApiKey
from core.errors import InvalidInput, NotFound

KEY_PREFIX = "pk_"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def validate_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidInput(
            "tenant must be 1-64 characters of letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            field="tenant",
        )
    return tenant


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never the key, nor its hash."""

    id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None
    scope: str = "tenant"

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(row.id, row.tenant, row.created_at, row.revoked_at, row.scope or "tenant")


@dataclass(frozen=True)
class Revoked:
    key: KeyInfo
    already: bool
    """The key was revoked before; its ``revoked_at`` is unchanged."""
    active_left: bool
    """Whether any active key remains (with none, the API accepts keyless requests)."""


SCOPES = ("tenant", "admin")
"""``tenant``: the tenant's own jobs, presets, strategies. ``admin``: that, plus the
operator's views (``/v1/pools``: server URLs and load)."""


async def create_key(
    sessions: async_sessionmaker[AsyncSession], tenant: str, *, scope: str = "tenant"
) -> str:
    """Store a new key for ``tenant`` and return it: the only time it is ever visible."""
    return (await create_key_with_id(sessions, tenant, scope=scope))[1]


async def create_key_with_id(
    sessions: async_sessionmaker[AsyncSession], tenant: str, *, scope: str = "tenant"
) -> tuple[str, str]:
    """``create_key``, also returning the key's id (what ``list`` and ``revoke`` use)."""
    validate_tenant(tenant)
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}", field="scope")
    key = new_key()
    async with sessions() as session, session.begin():
        row = await repo.create_api_key(session, tenant=tenant, key_hash=hash_key(key), scope=scope)
        key_id = row.id
    return key_id, key


async def list_keys(
    sessions: async_sessionmaker[AsyncSession], tenant: str | None = None
) -> list[KeyInfo]:
    """Every key (or ``tenant``'s), oldest first, revoked ones included."""
    async with sessions() as session:
        return [KeyInfo.of(row) for row in await repo.list_api_keys(session, tenant)]


async def revoke_key(sessions: async_sessionmaker[AsyncSession], key_id: str) -> Revoked:
    """Revoke a key by id: every request with it is refused from the next one on.

    Raises:
        NotFound: no key has this id.
    """
    async with sessions() as session, session.begin():
        row = await repo.get_api_key(session, key_id.strip())
        if row is None:
            raise NotFound(
                f"no API key with id {key_id!r} (`ponder keys list` shows the ids)",
                field="key_id",
            )
        already = row.revoked_at is not None
        await repo.revoke_api_key(session, row)
        info = KeyInfo.of(row)
        active_left = await repo.any_active_api_key(session)
    return Revoked(info, already, active_left)


@dataclass(frozen=True)
class Principal:
    """Who a request is: its tenant, and its key's scope."""

    tenant: str
    scope: str = "tenant"

    @property
    def admin(self) -> bool:
        return self.scope == "admin"


async def principal_for_key(session: AsyncSession, key: str) -> Principal | None:
    """The tenant and scope of an active key, or None for an unknown or revoked one."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    found = await repo.principal_for_key_hash(session, hash_key(key))
    return Principal(*found) if found is not None else None


async def tenant_for_key(session: AsyncSession, key: str) -> str | None:
    """The tenant of an active key, or None for an unknown or revoked one."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    return await repo.tenant_for_key_hash(session, hash_key(key))
