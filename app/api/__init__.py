"""Ponder's HTTP face: the v1 REST API, SSE event streams and the OpenAI-compatible endpoint.

``create_app(settings, executor=...)`` in ``app.api.main`` builds it; routes are thin and
call ``app.api.services``, which call ``core``. See docs/api.md.
"""
