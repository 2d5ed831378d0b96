"""Timed work (flag start/end dates, analytics flushes, later secret expiry) on APScheduler.

Jobs are coroutines run on the daemon's event loop, never in a thread pool. The
wrapper tracks running jobs so `stop()` can cancel and await them: no task is left
dangling at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("fpcd.scheduler")

Job = Callable[..., Awaitable[Any]]


class Scheduler:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: set[asyncio.Task[Any]] = set()
        #: (job kind, "ok" | "failed") -> runs, for /metrics. The kind is the job id up
        #: to its first ':' for one-off jobs (one per secret or flag date), else the id.
        self.runs: Counter[tuple[str, str]] = Counter()

    def start(self) -> None:
        self._scheduler.start()

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    @property
    def count(self) -> int:
        """Jobs scheduled now."""
        return len(self._scheduler.get_jobs())

    async def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _tracked(self, kind: str, job: Job, *args: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            await job(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.runs[(kind, "failed")] += 1
            log.exception("scheduled job failed", extra={"job": kind})
        else:
            self.runs[(kind, "ok")] += 1
        finally:
            self._running.discard(task)

    def at(self, job_id: str, when: datetime, job: Job, *args: Any) -> None:
        """Run `job(*args)` once at `when` (replacing a job with the same id)."""
        self._scheduler.add_job(
            self._tracked,
            "date",
            run_date=when,
            args=(job_id.partition(":")[0], job, *args),
            id=job_id,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def every(self, job_id: str, seconds: float, job: Job, *args: Any) -> None:
        for result in ("ok", "failed"):  # the series exist before the first run
            self.runs[(job_id, result)] += 0
        self._scheduler.add_job(
            self._tracked,
            "interval",
            seconds=seconds,
            args=(job_id, job, *args),
            id=job_id,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )

    def cancel_prefix(self, prefix: str) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith(prefix):
                job.remove()

    def job_ids(self, prefix: str = "") -> list[str]:
        return sorted(j.id for j in self._scheduler.get_jobs() if j.id.startswith(prefix))
