"""The trace-replay dashboard, served by the API at ``/dashboard``.

A static shell (``templates/index.html``) and small vanilla ES modules (``static/``):
no build step, no CDN, nothing fetched from outside Ponder. The page reads the same
``/v1`` API as any client, with the tenant key the user pastes (kept in the browser's
localStorage). The few reads the v1 API lacks are dashboard JSON routes under
``/dashboard/api`` behind the same authentication and tenant scoping:

    router.py       the shell, the static assets, the dashboard JSON routes
    service.py      a job's spans without the journal; one call's prompt and response
    repository.py   the SQL those need
    schemas.py      their response bodies

See docs/dashboard.md.
"""
