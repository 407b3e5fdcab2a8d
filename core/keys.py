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

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import repo
from core.errors import InvalidInput

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


async def create_key(sessions: async_sessionmaker[AsyncSession], tenant: str) -> str:
    """Store a new key for ``tenant`` and return it: the only time it is ever visible."""
    validate_tenant(tenant)
    key = new_key()
    async with sessions() as session, session.begin():
        await repo.create_api_key(session, tenant=tenant, key_hash=hash_key(key))
    return key


async def tenant_for_key(session: AsyncSession, key: str) -> str | None:
    """The tenant of an active key, or None for an unknown or revoked one."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    return await repo.tenant_for_key_hash(session, hash_key(key))
