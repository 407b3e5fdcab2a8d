"""Model pools: OpenAI-compatible servers behind one retrying, balancing client."""

from core.pools.client import Attempt, PoolClient, PoolResult
from core.pools.endpoint import EndpointHealth, EndpointState
from core.pools.registry import Pools

__all__ = ["Attempt", "EndpointHealth", "EndpointState", "PoolClient", "PoolResult", "Pools"]
