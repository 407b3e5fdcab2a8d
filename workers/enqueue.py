"""Publishing jobs to the broker: the one function the API and the reaper call."""

from __future__ import annotations

import math

from workers.celery_app import TASK_RUN_JOB, app, current_settings, ensure_broker_dir, queue_name


def enqueue_job(
    job_id: str, *, priority: str = "default", max_seconds: float | None = None
) -> None:
    """Publish a job to the ``ponder.<priority>`` queue for a worker to run.

    Contract: call only AFTER the transaction that wrote the job row (``queued``) has
    committed. A worker reloads the job by id the moment it receives the message; before
    the commit it could not see the row and would drop the job as unknown. If this call
    fails (broker down), the job stays ``queued`` in the database and the reaper
    publishes it again after ``worker.queued_timeout_s``: report the failure, do not
    roll back.

    Publishing twice is harmless: the job's lease lets one run start, and a finished
    job is skipped.

    Args:
        job_id: the committed job's id.
        priority: ``high`` | ``default`` | ``low``.
        max_seconds: the job's ``budget.max_seconds`` if it has one; Celery's soft/hard
            time limits for this message derive from it (default: the
            ``worker.time_limit_s`` ceiling). The worker applies the budget's limit from
            the job row either way; this only tightens Celery's backstop.

    Raises:
        ValueError: an unknown priority.
        kombu.exceptions.OperationalError: the broker could not be reached (after
            kombu's own publish retries).

    Example::

        job_id = await submit_job(sessions, pools, question=q, strategy=spec)  # commits
        await asyncio.to_thread(enqueue_job, job_id, priority="high")
    """
    queue = queue_name(priority)
    settings = current_settings()
    ensure_broker_dir(settings)
    soft, hard = settings.worker.time_limits(max_seconds)
    app.send_task(
        TASK_RUN_JOB,
        args=[job_id],
        queue=queue,
        routing_key=queue,
        # Celery takes whole seconds; rounding up never cuts a run short.
        soft_time_limit=math.ceil(soft),
        time_limit=math.ceil(hard),
    )
