"""Timed work: flag start/end dates and secret expiry on APScheduler, periodic jobs
(analytics flushes, alert checks, expiry sweeps) on the event loop's own timers.

Jobs are coroutines run on the daemon's event loop, never in a thread pool. The
wrapper tracks running jobs so `stop()` can cancel and await them: no task is left
dangling at shutdown. APScheduler is imported and started at the first date job, so a
daemon with no dated flag or expiring secret never loads it (issue 18: idle memory).
A periodic job runs `seconds` after the previous due time, one run at a time; runs
missed while one was still going are skipped (APScheduler's coalesce, max_instances=1).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fpcd.clock import SYSTEM_CLOCK, Clock
from fpcd.wire import ComponentHealth

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("fpcd.scheduler")

Job = Callable[..., Awaitable[Any]]


class Scheduler:
    def __init__(self, clock: Clock) -> None:
        #: Date jobs are due when this clock reaches their date (see `at`).
        self._clock = clock
        #: Date jobs; made at the first `at()`.
        self._scheduler: AsyncIOScheduler | None = None
        self._started = False
        #: Periodic jobs: id -> (seconds, job, args), and their timer tasks once started.
        self._periodic: dict[str, tuple[float, Job, tuple[Any, ...]]] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[Any]] = set()
        #: (job kind, "ok" | "failed") -> runs, for /metrics. The kind is the job id up
        #: to its first ':' for one-off jobs (one per secret or flag date), else the id.
        self.runs: Counter[tuple[str, str]] = Counter()

    def start(self) -> None:
        self._started = True
        if self._scheduler is not None:
            self._scheduler.start()
        for job_id in self._periodic:
            self._start_timer(job_id)

    @property
    def running(self) -> bool:
        return self._started

    def health(self) -> ComponentHealth:
        """/health's `scheduler`: down once stopped; jobs scheduled and runs that failed."""
        if not self.running:
            return ComponentHealth(status="down", detail="the scheduler is not running")
        failed = sum(n for (_, result), n in self.runs.items() if result == "failed")
        return ComponentHealth(status="ok", counts={"jobs": self.count, "failed": failed})

    @property
    def count(self) -> int:
        """Jobs scheduled now."""
        dated = len(self._scheduler.get_jobs()) if self._scheduler is not None else 0
        return dated + len(self._periodic)

    def _dated(self) -> AsyncIOScheduler:
        if self._scheduler is None:
            from apscheduler.schedulers.asyncio import AsyncIOScheduler

            self._scheduler = AsyncIOScheduler(timezone=UTC)
            if self._started:
                self._scheduler.start()
        return self._scheduler

    def _start_timer(self, job_id: str) -> None:
        old = self._timers.pop(job_id, None)
        if old is not None:
            old.cancel()
        seconds, job, args = self._periodic[job_id]
        self._timers[job_id] = asyncio.get_running_loop().create_task(
            self._every(job_id, seconds, job, args), name=f"fpcd-job-{job_id}"
        )

    async def _every(self, job_id: str, seconds: float, job: Job, args: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + seconds
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._tracked(job_id, job, *args)
            due += seconds
            now = loop.time()
            if due <= now:  # runs missed while this one went on: one run, not a burst
                due += (now - due) // seconds * seconds + seconds

    async def stop(self) -> None:
        self._started = False
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        timers = list(self._timers.values())
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        if timers:
            await asyncio.gather(*timers, return_exceptions=True)
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
        """Run `job(*args)` once when the daemon's clock reaches `when` (replacing a job
        with the same id). APScheduler waits on the host's clock, so the date is moved by
        however far the daemon's clock is from it (nothing, unless a test moved it)."""
        if self._clock is not SYSTEM_CLOCK:
            when = datetime.now(UTC) + (when - self._clock.now())
        self._dated().add_job(
            self._tracked,
            "date",
            run_date=when,
            args=(job_id.partition(":")[0], job, *args),
            id=job_id,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def every(self, job_id: str, seconds: float, job: Job, *args: Any) -> None:
        """Run `job(*args)` every `seconds` (replacing a job with the same id)."""
        for result in ("ok", "failed"):  # the series exist before the first run
            self.runs[(job_id, result)] += 0
        self._periodic[job_id] = (float(seconds), job, args)
        if self._started:
            self._start_timer(job_id)

    def cancel_prefix(self, prefix: str) -> None:
        for job_id in [j for j in self._periodic if j.startswith(prefix)]:
            del self._periodic[job_id]
            timer = self._timers.pop(job_id, None)
            if timer is not None:
                timer.cancel()
        if self._scheduler is None:
            return
        for job in self._scheduler.get_jobs():
            if job.id.startswith(prefix):
                job.remove()

    def job_ids(self, prefix: str = "") -> list[str]:
        dated = self._scheduler.get_jobs() if self._scheduler is not None else []
        ids = [j.id for j in dated] + list(self._periodic)
        return sorted(i for i in ids if i.startswith(prefix))
