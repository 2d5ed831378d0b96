"""Export and import of fpcd's data: whole records, with their versions, times and authors.

Imports go through the committer like every other write (one apply path: audited,
announced, replicated). They are idempotent: a record already present is skipped, one
that differs from what is stored under the same version is skipped as a conflict, and
nothing is ever overwritten. `fpcd export`, `fpcd import` and `fpcd import-fineprint`
(fpcd/cli/portable_cmds.py) are the clients; docs/export-format.md has the file format.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

from fpcd.clock import Clock
from fpcd.domain.access import DATA_ADMIN, authorize_everywhere
from fpcd.domain.configs import (
    check_limits,
    compile_schema,
    content_checksum,
    valid_name,
)
from fpcd.domain.errors import FpcdError, Invalid, NotFound
from fpcd.domain.flags import FlagDefinition, validate_definition
from fpcd.domain.model import (
    AuditNote,
    Caller,
    Change,
    ConfigVersion,
    FlagRecord,
    SchemaRecord,
    ServiceRegistration,
)
from fpcd.services.analytics import FlagAnalytics
from fpcd.services.changes import ChangeMaker, Committer
from fpcd.services.configs import ConfigLimits
from fpcd.services.flags import FlagService
from fpcd.services.secrets import secret_view
from fpcd.store.sqlite import Store
from fpcd.wire import ImportedCount, ImportedNote, ImportResult, ImportSkip, Page

#: Kinds of records `GET /api/export/{kind}` pages through.
EXPORT_KINDS = ("configs", "schemas", "flags", "services", "analytics", "secrets")


class PortabilityService:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        flags: FlagService,
        analytics: FlagAnalytics,
        *,
        node_id: str,
        clock: Clock,
        limits: ConfigLimits,
    ) -> None:
        self._store = store
        self._committer = committer
        self._flags = flags
        self._analytics = analytics
        self._clock = clock
        self._change = ChangeMaker(node_id, clock)
        self._limits = limits

    # -- export --------------------------------------------------------------------

    async def export_page(self, kind: str, caller: Caller, *, limit: int, offset: int) -> Page[Any]:
        authorize_everywhere(caller, DATA_ADMIN)
        items: list[Any]
        if kind == "configs":
            items, total = await self._store.export_config_versions(limit=limit, offset=offset)
        elif kind == "flags":
            items, total = await self._store.export_flag_versions(limit=limit, offset=offset)
        elif kind == "schemas":
            every: list[Any] = await self._store.export_schemas()
            items, total = every[offset : offset + limit], len(every)
        elif kind == "services":
            every = await self._store.registrations()
            items, total = every[offset : offset + limit], len(every)
        elif kind == "analytics":
            if offset == 0:  # counts still in memory belong in the export too
                await self._analytics.flush()
            rows, total = await self._store.export_analytics(limit=limit, offset=offset)
            items = [
                ImportedCount(
                    flag=flag,
                    hour=hour,
                    variant=variant or None,
                    enabled=bool(enabled),
                    reason=reason,
                    count=count,
                )
                for flag, hour, variant, enabled, reason, count in rows
            ]
        elif kind == "secrets":  # metadata: values are read one by one, audited
            secret_rows, total = await self._store.export_secret_versions(
                limit=limit, offset=offset
            )
            items = [secret_view(r) for r in secret_rows]
        else:
            raise NotFound(f"nothing to export as {kind!r}: one of {', '.join(EXPORT_KINDS)}")
        return Page(items=items, total=total, limit=limit, offset=offset)

    @asynccontextmanager
    async def backup(self, caller: Caller) -> AsyncIterator[Path]:
        """A consistent copy of the database in a temporary file, removed afterwards."""
        authorize_everywhere(caller, DATA_ADMIN)
        directory = self._store.path.parent
        with tempfile.TemporaryDirectory(prefix=".backup-", dir=directory) as tmp:
            target = Path(tmp) / "fpcd.db"
            await self._store.backup_to(target)
            yield target

    # -- import --------------------------------------------------------------------

    def _config_problem(self, item: ConfigVersion) -> str | None:
        for kind, name in (("service", item.service), ("environment", item.environment)):
            if not valid_name(name):
                return f"{kind} name {name!r} is not valid"
        errors = check_limits(
            item.config,
            max_depth=self._limits.max_depth,
            max_keys=self._limits.max_keys,
            path="$.config",
        )
        if errors:
            return f"{errors[0].path}: {errors[0].message}"
        if item.version < 1:
            return "version numbers start at 1"
        if len(item.description) > self._limits.max_text:
            return f"description longer than {self._limits.max_text} characters"
        if len(item.tags) > self._limits.max_tags or any(not t or len(t) > 64 for t in item.tags):
            return f"tags are at most {self._limits.max_tags}, each 1-64 characters"
        if content_checksum(item.config, item.secret_versions) != item.checksum:
            return "checksum does not match the content"
        return None

    async def import_configs(
        self, items: list[ConfigVersion], caller: Caller, *, dry_run: bool = False
    ) -> ImportResult:
        """Config versions with their own numbers, in order; history is never rewritten.

        Imported history is not validated against the current schema (it is a record of
        what was), but names, sizes and checksums are checked.
        """
        authorize_everywhere(caller, DATA_ADMIN)
        skipped: list[ImportSkip] = []

        async def plan() -> list[Change]:
            skipped.clear()
            heads: dict[tuple[str, str], int] = {}
            changes: list[Change] = []
            for item in items:
                where = f"{item.service}/{item.environment}"
                label = f"{where}@{item.version}"
                problem = self._config_problem(item)
                if problem is not None:
                    skipped.append(ImportSkip(key=label, reason=problem))
                    continue
                layer = (item.service, item.environment)
                if layer not in heads:
                    head = await self._store.config_head(*layer)
                    heads[layer] = head.version if head else 0
                if item.version <= heads[layer]:
                    found = await self._store.config_version(*layer, item.version)
                    same = found is not None and found[0].checksum == item.checksum
                    reason = "already present" if same else "conflict: stored version differs"
                    skipped.append(ImportSkip(key=label, reason=reason))
                    continue
                if item.version != heads[layer] + 1:
                    skipped.append(
                        ImportSkip(key=label, reason=f"gap: {where} is at version {heads[layer]}")
                    )
                    continue
                changes.append(self._change(where, "import", item, caller))
                heads[layer] = item.version
            planned[:] = changes
            return [] if dry_run else changes

        planned: list[Change] = []
        await self._committer.commit(plan)
        return ImportResult(imported=len(planned), skipped=list(skipped))

    async def import_schemas(
        self, items: list[SchemaRecord], caller: Caller, *, dry_run: bool = False
    ) -> ImportResult:
        """The current schema of each service (a schema has no history to keep)."""
        authorize_everywhere(caller, DATA_ADMIN)
        refused: list[ImportSkip] = []
        good: list[SchemaRecord] = []
        for item in items:
            try:
                if not valid_name(item.service):
                    raise Invalid(f"service name {item.service!r} is not valid", errors=[])
                if item.schema is not None:
                    compile_schema(item.schema)
                good.append(item)
            except FpcdError as error:
                refused.append(ImportSkip(key=item.service, reason=str(error)))
        skipped: list[ImportSkip] = []

        async def plan() -> list[Change]:
            skipped.clear()
            changes: list[Change] = []
            for item in good:
                current = await self._store.schema(item.service)
                if (current.schema if current else None) == item.schema:
                    skipped.append(ImportSkip(key=item.service, reason="already present"))
                    continue
                version = max(item.version, (current.version if current else 0) + 1)
                record = msgspec.structs.replace(item, version=version)
                changes.append(self._change(item.service, "import", record, caller))
            planned[:] = changes
            return [] if dry_run else changes

        planned: list[Change] = []
        await self._committer.commit(plan)
        return ImportResult(imported=len(planned), skipped=refused + skipped)

    async def import_flags(
        self, items: list[FlagRecord], caller: Caller, *, dry_run: bool = False
    ) -> ImportResult:
        """Flag versions with their own numbers, in order, each one valid where it lands."""
        authorize_everywhere(caller, DATA_ADMIN)
        skipped: list[ImportSkip] = []

        async def plan() -> list[Change]:
            skipped.clear()
            state: dict[str, FlagRecord] = {}

            def current(key: str) -> FlagRecord | None:
                return state.get(key) or self._flags.get_record(key)

            def known(key: str) -> FlagDefinition | None:
                record = current(key)
                return record.definition if record is not None and not record.archived else None

            changes: list[Change] = []
            for item in items:
                label = f"{item.key}@{item.version}"
                head = current(item.key)
                at = head.version if head else 0
                if item.version <= at:
                    found = await self._store.flag_version(item.key, item.version)
                    same = (
                        found is not None
                        and found.definition == item.definition
                        and found.archived == item.archived
                    )
                    reason = "already present" if same else "conflict: stored version differs"
                    skipped.append(ImportSkip(key=label, reason=reason))
                    continue
                if item.version != at + 1:
                    skipped.append(
                        ImportSkip(key=label, reason=f"gap: {item.key} is at version {at}")
                    )
                    continue
                if item.definition.key not in (None, item.key):
                    skipped.append(ImportSkip(key=label, reason="definition names another key"))
                    continue
                try:
                    if not item.archived:
                        validate_definition(item.definition, item.key, known=known)
                except Invalid as error:
                    detail = "; ".join(f"{e.path}: {e.message}" for e in error.errors)
                    skipped.append(ImportSkip(key=label, reason=detail or str(error)))
                    continue
                changes.append(self._change(item.key, "import", item, caller))
                state[item.key] = item
            planned[:] = changes
            return [] if dry_run else changes

        planned: list[Change] = []
        await self._committer.commit(plan)
        return ImportResult(imported=len(planned), skipped=list(skipped))

    async def import_services(
        self, items: list[ServiceRegistration], caller: Caller, *, dry_run: bool = False
    ) -> ImportResult:
        """Registrations as they were (time and author kept); an identical one is skipped."""
        authorize_everywhere(caller, DATA_ADMIN)
        skipped: list[ImportSkip] = []

        async def plan() -> list[Change]:
            skipped.clear()
            stored = {r.name: r for r in await self._store.registrations()}
            changes: list[Change] = []
            for item in items:
                if not valid_name(item.name):
                    skipped.append(ImportSkip(key=item.name, reason="not a valid service name"))
                elif stored.get(item.name) == item:
                    skipped.append(ImportSkip(key=item.name, reason="already present"))
                else:
                    changes.append(self._change(item.name, "import", item, caller))
                    stored[item.name] = item
            planned[:] = changes
            return [] if dry_run else changes

        planned: list[Change] = []
        await self._committer.commit(plan)
        return ImportResult(imported=len(planned), skipped=list(skipped))

    async def import_analytics(
        self, source: str, counts: list[ImportedCount], caller: Caller, *, dry_run: bool = False
    ) -> ImportResult:
        """Each cell's total in `source`: only what grew since the last import is added.

        What was imported is remembered per source in this host's local bookkeeping
        (`meta`), so run an import on one host of a cluster: counts reach the others
        through the upstream's analytics like any evaluation.
        """
        authorize_everywhere(caller, DATA_ADMIN)
        cells: dict[str, ImportedCount] = {}
        for c in counts:
            mark = (
                f"import:{source}:{c.flag}:{c.hour}:{c.variant or ''}:{int(c.enabled)}:{c.reason}"
            )
            cells[mark] = c
        before = await self._store.meta_get_many(list(cells))
        skipped: list[ImportSkip] = []
        marks: list[tuple[str, str]] = []
        added = 0
        for mark, c in cells.items():
            delta = c.count - int(before.get(mark, "0"))
            if delta <= 0:
                reason = "already imported" if delta == 0 else "fewer than already imported"
                skipped.append(ImportSkip(key=mark.split(":", 2)[2], reason=reason))
                continue
            if not dry_run:
                self._analytics.add(c.flag, c.hour, c.variant, c.enabled, c.reason, delta)
            marks.append((mark, str(c.count)))
            added += delta
        if marks and not dry_run:
            await self._analytics.flush()
            await self._store.meta_set_many(marks)
        return ImportResult(imported=added, skipped=skipped)

    async def import_notes(
        self, items: list[ImportedNote], caller: Caller, *, dry_run: bool = False
    ) -> ImportResult:
        """History kept as audit notes; a note whose target is already logged is skipped."""
        authorize_everywhere(caller, DATA_ADMIN)
        skipped: list[ImportSkip] = []

        async def plan() -> list[Change]:
            skipped.clear()
            seen: set[str] = set()
            changes: list[Change] = []
            for item in items:
                entries, _ = await self._store.audit_page(target=item.target, limit=50, offset=0)
                if item.target in seen or any(e.target == item.target for e in entries):
                    skipped.append(ImportSkip(key=item.target, reason="already present"))
                    continue
                seen.add(item.target)
                note = AuditNote(action=item.action, target=item.target, details=item.details)
                changes.append(self._change(item.target, "import", note, caller))
            planned[:] = changes
            return [] if dry_run else changes

        planned: list[Change] = []
        await self._committer.commit(plan)
        return ImportResult(imported=len(planned), skipped=list(skipped))
