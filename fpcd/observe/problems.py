"""Stored records that could not be loaded, scheduled or verified.

No stored or replicated record may stop the daemon: whoever finds one that it cannot
use reports it here and goes on. Each problem is logged once (error level), named in
/health (the `records` component is degraded while any is open) and counted in
/metrics. A problem is cleared when its record is replaced by a good one (the operator
fixes it through the API) or the check that found it passes again.
"""

from __future__ import annotations

import logging
from collections import Counter

from fpcd.wire import ComponentHealth

log = logging.getLogger("fpcd.problems")


class RecordProblems:
    def __init__(self) -> None:
        #: record (e.g. "flag:checkout", "config:web/prod v3", "database") -> problem.
        self.open: dict[str, str] = {}
        #: Problems reported since start, by kind ("load", "schedule", "integrity").
        self.reported: Counter[str] = Counter()

    def report(self, record: str, problem: str, *, kind: str = "integrity") -> None:
        """Record a problem; logged and counted the first time it is seen for `record`."""
        if self.open.get(record) == problem:
            return
        self.open[record] = problem
        self.reported[kind] += 1
        log.error(
            f"stored record unusable: {record}: {problem}",
            extra={"record": record, "problem": problem, "kind": kind},
        )

    def clear(self, record: str) -> None:
        if self.open.pop(record, None) is not None:
            log.info(f"stored record usable again: {record}", extra={"record": record})

    def clear_prefix(self, prefix: str) -> None:
        for record in [r for r in self.open if r.startswith(prefix)]:
            self.clear(record)

    def summary(self, limit: int = 10) -> str:
        """For /health: the first problems, one per record, and how many more."""
        items = [f"{record}: {problem}" for record, problem in sorted(self.open.items())]
        more = len(items) - limit
        text = "; ".join(items[:limit])
        return f"{text}; and {more} more" if more > 0 else text

    def health(self) -> ComponentHealth:
        """/health's `records`: degraded while any stored record is unusable."""
        if self.open:
            return ComponentHealth(
                status="degraded", detail=self.summary(), counts={"problems": len(self.open)}
            )
        return ComponentHealth(status="ok", counts={"problems": 0})
