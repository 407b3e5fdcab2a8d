"""Ponder's Celery face: jobs reach workers through a broker; the database keeps their state.

    celery_app.py   the Celery app from core settings: queues, acks, limits, the broker
    enqueue.py      enqueue_job(job_id, priority=...): the API's call, after commit
    tasks.py        run_job(job_id): thin and idempotent, over core.runner.Runner.run
    runtime.py      one asyncio loop, Runtime and JobMonitor per worker process
    reaper.py       re-enqueues jobs whose worker died, or whose message was lost
    launch.py       `ponder worker` and the embedded `ponder serve`

See docs/deploy.md for how delivery, cancellation and recovery fit together.
"""
