"""FlagService: flag definitions, versions and evaluation for every door.

Evaluation reads an immutable snapshot (key -> compiled flag) that is replaced as a
whole when a flag change is applied, so readers never lock and never see half an
update. Date boundaries are scheduled so subscribers hear of a switch when it happens.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import msgspec

from fpcd.clock import Clock
from fpcd.domain.access import FLAGS_EVALUATE, FLAGS_READ, FLAGS_WRITE, authorize, granted
from fpcd.domain.errors import (
    Conflict,
    FieldError,
    Invalid,
    NotFound,
    PreconditionFailed,
    invalid_from,
)
from fpcd.domain.flags import (
    CompiledFlag,
    EvaluationContext,
    EvaluationResult,
    FlagDefinition,
    active,
    check_dependents,
    compile_flag,
    dependency_keys,
    derive_key,
    evaluate,
    normalize_dates,
    parse_instant,
    validate_definition,
)
from fpcd.domain.instants import RANGE, in_range
from fpcd.domain.model import Caller, Change, FlagRecord
from fpcd.observe.stats import LatencyHistogram
from fpcd.services.analytics import FlagAnalytics
from fpcd.services.changes import ChangeMaker, Committer
from fpcd.services.events import ChangeApplied, Event, EventBus, FlagSwitched
from fpcd.services.scheduler import Scheduler
from fpcd.store.sqlite import Store
from fpcd.wire import (
    ComponentHealth,
    EvaluationCount,
    EvaluationCountsResult,
    FlagAnalyticsDocument,
    FlagView,
    Page,
)

log = logging.getLogger("fpcd.flags")

_definition_decoder = msgspec.json.Decoder(FlagDefinition)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FlagService:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        bus: EventBus,
        *,
        node_id: str,
        clock: Clock,
        default_environment: str,
        analytics: FlagAnalytics,
        scheduler: Scheduler,
    ) -> None:
        self._store = store
        self._committer = committer
        self._bus = bus
        #: The daemon's clock; callers that evaluate a batch at one instant (the flag
        #: socket) read it once for the batch.
        self.clock = clock
        self._time = clock.time
        self._change = ChangeMaker(node_id, clock)
        self.default_environment = default_environment
        self.analytics = analytics
        self._scheduler = scheduler
        self._records: dict[str, FlagRecord] = {}
        self._compiled: dict[str, CompiledFlag] = {}
        #: Time per evaluate call (one flag or a batch) and lookups that failed, by code.
        self.latency = LatencyHistogram()
        self.errors: Counter[str] = Counter()
        bus.subscribe(self._on_event)

    async def load(self) -> None:
        """Every stored flag; one that cannot be compiled or scheduled is reported (health,
        metrics, a log line) and skipped, never a reason not to start."""
        records = await self._store.flags_current()
        self._records = {r.key: r for r in records}
        compiled: dict[str, CompiledFlag] = {}
        for record in records:
            if not record.archived and (flag := self._compile(record)) is not None:
                compiled[record.key] = flag
        self._compiled = compiled
        for key in self._records:
            self._schedule(key)

    def _compile(self, record: FlagRecord) -> CompiledFlag | None:
        self._store.problems.clear_prefix(f"flag:{record.key}:")
        try:
            return compile_flag(record.key, record.version, record.definition)
        except Exception as error:  # a stored record from an older or foreign release
            self._store.problems.report(
                f"flag:{record.key}:compile",
                f"version {record.version} cannot be evaluated ({error.__class__.__name__}:"
                f" {error}); fix it with PUT /api/features/{record.key}",
                kind="load",
            )
            return None

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, ChangeApplied) or not isinstance(event.change.payload, FlagRecord):
            return
        record = event.change.payload
        records = dict(self._records)
        records[record.key] = record
        compiled = dict(self._compiled)
        self._store.problems.clear_prefix(f"flag:{record.key}:")  # a new version replaces it
        flag = None if record.archived else self._compile(record)
        if flag is None:
            compiled.pop(record.key, None)
        else:
            compiled[record.key] = flag
        self._records, self._compiled = records, compiled  # swap whole snapshots
        self._schedule(record.key)

    # -- scheduling ----------------------------------------------------------------

    def _schedule(self, key: str) -> None:
        """(Re)build the date jobs of one flag: one per future start or end date."""
        self._scheduler.cancel_prefix(f"flag:{key}:")
        record = self._records.get(key)
        if record is None or record.archived:
            return
        now = self._time()
        definition = record.definition
        rollouts: list[tuple[str | None, Any]] = [(None, definition.rollout)]
        rollouts += [
            (env, o.rollout) for env, o in definition.environments.items() if o.rollout is not None
        ]
        for env, rollout in rollouts:
            for boundary, raw in (("start", rollout.start_date), ("end", rollout.end_date)):
                instant = parse_instant(raw) if isinstance(raw, str) else None
                if instant is not None and instant > now:
                    if not in_range(instant):  # stored before the range checks, or replicated
                        where = "rollout" if env is None else f"environments.{env}.rollout"
                        self._store.problems.report(
                            f"flag:{key}:{env or '*'}:{boundary}",
                            f"{where}.{boundary}Date {raw!r} is out of range ({RANGE}) and is"
                            f" not scheduled; fix it with PATCH /api/features/{key}",
                            kind="schedule",
                        )
                        continue
                    self._scheduler.at(
                        f"flag:{key}:{env or '*'}:{boundary}",
                        datetime.fromtimestamp(instant, UTC),
                        self._switched,
                        key,
                        env,
                        boundary,
                    )

    async def _switched(self, key: str, environment: str | None, boundary: str) -> None:
        log.info(
            "flag schedule boundary",
            extra={"flag": key, "environment": environment, "boundary": boundary},
        )
        self._bus.publish(FlagSwitched(key=key, environment=environment, boundary=boundary))

    # -- reads -----------------------------------------------------------------------

    def lookup(self, key: str) -> CompiledFlag | None:
        return self._compiled.get(key)

    def counts(self) -> dict[str, int]:
        return {"flags": len(self._compiled), "archived": len(self._records) - len(self._compiled)}

    def health(self) -> ComponentHealth:
        """/health's `flags`: active and archived flags."""
        return ComponentHealth(status="ok", counts=self.counts())

    def get_record(self, key: str) -> FlagRecord | None:
        """The latest version, archived or not."""
        return self._records.get(key)

    def active(self, key: str, environment: str, now: float) -> bool:
        return active(self._compiled.get(key), environment, now, self._compiled.get)

    @staticmethod
    def _may_evaluate(caller: Caller) -> None:
        """flags:evaluate, as a set lookup (the hot path); `authorize` raises the 403."""
        if FLAGS_EVALUATE not in granted(caller):
            authorize(caller, FLAGS_EVALUATE)

    def evaluate_one(
        self, key: str, context: EvaluationContext, caller: Caller, now: float | None = None
    ) -> EvaluationResult:
        """One flag, counted (no list or dict built)."""
        self._may_evaluate(caller)
        if context.environment is None:
            context = msgspec.structs.replace(context, environment=self.default_environment)
        if now is None:
            now = self._time()
        started = perf_counter()
        compiled = self._compiled
        result = evaluate(compiled.get(key, key), context, now, compiled.get)
        if result.error_code is None:
            self.analytics.count(key, result.variant, result.enabled, result.reason, now)
        else:
            self.errors[result.error_code] += 1
        self.latency.observe(perf_counter() - started)
        return result

    def evaluate(
        self,
        keys: list[str] | None,
        context: EvaluationContext,
        caller: Caller,
        now: float | None = None,
    ) -> dict[str, EvaluationResult]:
        """Evaluate `keys` (all active flags when None) and count each evaluation."""
        self._may_evaluate(caller)
        if context.environment is None:
            context = msgspec.structs.replace(context, environment=self.default_environment)
        compiled = self._compiled
        lookup = compiled.get
        if now is None:
            now = self._time()
        started = perf_counter()
        count = self.analytics.count
        results: dict[str, EvaluationResult] = {}
        for key in compiled if keys is None else keys:
            result = evaluate(compiled.get(key, key), context, now, lookup)
            if result.error_code is None:
                count(key, result.variant, result.enabled, result.reason, now)
            else:
                self.errors[result.error_code] += 1
            results[key] = result
        self.latency.observe(perf_counter() - started)
        return results

    def batch(self, caller: Caller, now: float) -> EvaluationBatch:
        """Evaluations at one instant, counted together when the batch is closed (the
        flag socket's hot path: one permission check per batch)."""
        self._may_evaluate(caller)
        return EvaluationBatch(self, now)

    def record_counts(
        self, counts: list[EvaluationCount], caller: Caller
    ) -> EvaluationCountsResult:
        """Add clients' local evaluation counts; unknown flags or variants and odd hours are
        dropped (so a client cannot invent metric series either)."""
        self._may_evaluate(caller)
        hour_now = int(self._time() // 3600)
        accepted = ignored = 0
        for c in counts:
            record = self._records.get(c.flag)
            known_variant = record is not None and (
                c.variant is None or any(v.id == c.variant for v in record.definition.variants)
            )
            if known_variant and hour_now - 24 * 30 <= c.hour <= hour_now + 1:
                self.analytics.add(c.flag, c.hour, c.variant, c.enabled, c.reason, c.count)
                accepted += c.count
            else:
                ignored += c.count
        return EvaluationCountsResult(accepted=accepted, ignored=ignored)

    def get(self, key: str, caller: Caller, *, include_archived: bool = False) -> FlagRecord:
        authorize(caller, FLAGS_READ)
        return self._get(key, include_archived=include_archived)

    def _get(self, key: str, *, include_archived: bool = False) -> FlagRecord:
        record = self._records.get(key)
        if record is None or (record.archived and not include_archived):
            raise NotFound(f"no flag {key!r}")
        return record

    def list_flags(
        self,
        caller: Caller,
        *,
        environment: str | None,
        enabled: bool | None,
        tags: list[str],
        include_archived: bool = False,
    ) -> Page[FlagView]:
        authorize(caller, FLAGS_READ)
        items: list[FlagView] = []
        for key in sorted(self._records):
            record = self._records[key]
            if record.archived and not include_archived:
                continue
            if tags and not set(tags) & set(record.definition.tags):
                continue
            if enabled is not None:
                compiled = self._compiled.get(key)
                is_on = (
                    compiled is not None
                    and compiled.rules_for(environment or self.default_environment).enabled
                )
                if is_on is not enabled:
                    continue
            items.append(FlagView.of(record))
        return Page(items=items, total=len(items), limit=len(items), offset=0)

    async def history(self, key: str, caller: Caller, *, limit: int, offset: int) -> Page[FlagView]:
        authorize(caller, FLAGS_READ)
        records, total = await self._store.flag_history(key, limit=limit, offset=offset)
        if total == 0:
            raise NotFound(f"no flag {key!r}")
        return Page(
            items=[FlagView.of(r) for r in records], total=total, limit=limit, offset=offset
        )

    async def analytics_report(
        self, key: str, caller: Caller, *, start: datetime | None, end: datetime | None
    ) -> FlagAnalyticsDocument:
        authorize(caller, FLAGS_READ)
        self._get(key, include_archived=True)
        end = end or self.clock.now()
        start = start or datetime.fromtimestamp(end.timestamp() - 30 * 86400, UTC)
        if start >= end:
            raise Invalid(
                "startDate must be before endDate",
                errors=[FieldError("query.startDate", "must be before endDate")],
            )
        return await self.analytics.report(key, start, end)

    # -- writes ----------------------------------------------------------------------

    def _known(self, key: str) -> FlagDefinition | None:
        record = self._records.get(key)
        return record.definition if record is not None and not record.archived else None

    @staticmethod
    def _check_expected(key: str, current: FlagRecord | None, expected: int | None) -> None:
        version = current.version if current else 0
        if expected is not None and expected != version and not (expected == -1 and version):
            raise PreconditionFailed(
                f"flag {key!r} is at version {version}, not {expected}: read it again and retry",
                headers={"ETag": f'"{version}"'},
            )

    async def _write(
        self,
        key: str,
        definition: FlagDefinition,
        caller: Caller,
        *,
        expected_version: int | None,
        create_only: bool = False,
    ) -> tuple[FlagRecord, bool]:
        authorize(caller, FLAGS_WRITE)
        if definition.key is not None and definition.key != key:
            raise Invalid(
                "the key in the body differs from the key in the path",
                errors=[FieldError("$.key", f"expected {key!r}")],
            )
        definition = normalize_dates(msgspec.structs.replace(definition, key=key))
        unchanged: list[FlagRecord] = []

        async def plan() -> list[Change]:
            current = self._records.get(key)
            if create_only and current is not None:
                state = "archived" if current.archived else "exists"
                raise Conflict(f"flag {key!r} already {state}; PUT /api/features/{key} updates it")
            self._check_expected(key, current, expected_version)
            if current is not None and not current.archived and current.definition == definition:
                unchanged.append(current)
                return []
            validate_definition(definition, key, known=self._known)
            check_dependents(
                key,
                definition,
                (
                    (other, record.definition)
                    for other, record in sorted(self._records.items())
                    if not record.archived
                ),
            )
            now = self.clock.now()
            record = FlagRecord(
                key=key,
                version=(current.version if current else 0) + 1,
                definition=definition,
                created_at=current.created_at if current else now,
                updated_at=now,
                updated_by=caller.subject,
            )
            op = "create" if current is None else ("restore" if current.archived else "update")
            return [self._change(key, op, record, caller)]

        applied = await self._committer.commit(plan)
        if unchanged:
            return unchanged[0], False
        stored = applied[0].payload
        assert isinstance(stored, FlagRecord)
        return stored, True

    async def create(self, definition: FlagDefinition, caller: Caller) -> FlagRecord:
        authorize(caller, FLAGS_WRITE)
        key = definition.key or derive_key(definition.name)
        if not key:
            raise Invalid(
                "a flag needs a key, or a name to derive it from",
                errors=[FieldError("$.name", "no letters or digits to make a key from")],
            )
        record, _ = await self._write(
            key, definition, caller, expected_version=None, create_only=True
        )
        return record

    async def put(
        self,
        key: str,
        definition: FlagDefinition,
        caller: Caller,
        *,
        expected_version: int | None = None,
    ) -> tuple[FlagRecord, bool]:
        return await self._write(key, definition, caller, expected_version=expected_version)

    async def patch(
        self,
        key: str,
        patch: dict[str, Any],
        caller: Caller,
        *,
        expected_version: int | None = None,
    ) -> tuple[FlagRecord, bool]:
        """Apply an RFC 7386 merge patch to the current definition."""
        authorize(caller, FLAGS_WRITE)
        current = self._get(key)
        merged = merge_patch(msgspec.to_builtins(current.definition), patch)
        try:
            definition = msgspec.convert(merged, FlagDefinition)
        except msgspec.ValidationError as error:
            raise invalid_from(error) from None
        return await self._write(key, definition, caller, expected_version=expected_version)

    async def archive(
        self, key: str, caller: Caller, *, expected_version: int | None = None
    ) -> FlagRecord:
        authorize(caller, FLAGS_WRITE)

        async def plan() -> list[Change]:
            current = self._records.get(key)
            if current is None or current.archived:
                raise NotFound(f"no flag {key!r}")
            self._check_expected(key, current, expected_version)
            dependents = sorted(
                other
                for other, record in self._records.items()
                if not record.archived
                and key in {dep for dep, _ in dependency_keys(record.definition)}
            )
            if dependents:
                raise Conflict(
                    f"flag {key!r} cannot be archived: {', '.join(dependents)} depend on it"
                )
            record = msgspec.structs.replace(
                current,
                version=current.version + 1,
                archived=True,
                updated_at=self.clock.now(),
                updated_by=caller.subject,
            )
            return [self._change(key, "archive", record, caller)]

        applied = await self._committer.commit(plan)
        stored = applied[0].payload
        assert isinstance(stored, FlagRecord)
        return stored


class EvaluationBatch:
    """Many evaluations at one instant, counted as `evaluate_one` counts them, but added up
    when the batch is closed: one append per evaluation on the hot path, then the
    analytics, error counts and latency histogram are updated once (the flag socket
    answers each chunk of lines with one batch).

    `one` and `many` may set the `environment` of the context they are given (to the
    default environment): pass a context the caller owns, such as one just decoded.
    """

    __slots__ = ("_results", "_service", "_started", "compiled", "default", "now")

    def __init__(self, service: FlagService, now: float) -> None:
        self._service = service
        self.now = now
        self.compiled = service._compiled
        self.default = service.default_environment
        self._results: list[EvaluationResult] = []
        self._started = perf_counter()

    def one(self, key: str, context: EvaluationContext) -> EvaluationResult:
        environment = context.environment
        if environment is None:
            environment = context.environment = self.default
        flag = self.compiled.get(key)
        if flag is not None:
            # A flag's compiled fast path (domain/flags.py `_specialize`), straight from here:
            # the flag socket's hot path, one call per lookup instead of three.
            fast = flag.by_environment.get(environment, flag.base).fast
            if fast is not None:
                result = fast(context)
                self._results.append(result)
                return result
        result = evaluate(key if flag is None else flag, context, self.now, self.compiled.get)
        self._results.append(result)
        return result

    def many(
        self, keys: list[str] | None, context: EvaluationContext
    ) -> dict[str, EvaluationResult]:
        """`keys`, or every active flag when None."""
        one = self.one
        return {key: one(key, context) for key in (self.compiled if keys is None else keys)}

    def close(self) -> None:
        results, self._results = self._results, []
        if not results:
            return
        service = self._service
        n = len(results)
        if n < 8:  # a lookup at a time: no Counter to build
            now, count = self.now, service.analytics.count
            for r in results:
                if r.error_code is None:
                    count(r.flag_key, r.variant, r.enabled, r.reason, now)
                else:
                    service.errors[r.error_code] += 1
        else:  # counted in C, by result object (a compiled flag reuses one per outcome)
            hour = int(self.now // 3600)
            add = service.analytics.add
            by_id = dict(zip(map(id, results), results, strict=True))
            for result_id, k in Counter(map(id, results)).items():
                r = by_id[result_id]
                if r.error_code is None:
                    add(r.flag_key, hour, r.variant, r.enabled, r.reason, k)
                else:
                    service.errors[r.error_code] += k
        service.latency.observe_many((perf_counter() - self._started) / n, n)
