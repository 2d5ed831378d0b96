"""Export, import and backup routes (admin only): what `fpcd export`, `fpcd import`,
`fpcd import-fineprint` and `fpcd backup` call over the Unix socket."""

from __future__ import annotations

from aiohttp import web

from fpcd.api.http import body_as, caller, json_response, page_params, query_bool
from fpcd.domain.errors import NotFound
from fpcd.services.portability import PortabilityService
from fpcd.wire import (
    ImportAnalytics,
    ImportConfigVersions,
    ImportFlagVersions,
    ImportNotes,
    ImportResult,
    ImportSchemas,
    ImportServices,
)

PORTABILITY = web.AppKey("portability", PortabilityService)


async def export_page(request: web.Request) -> web.Response:
    limit, offset = page_params(request, default_limit=500)
    page = await request.app[PORTABILITY].export_page(
        request.match_info["kind"], caller(request), limit=min(limit, 1000), offset=offset
    )
    return json_response(page)


async def import_records(request: web.Request) -> web.Response:
    service = request.app[PORTABILITY]
    who = caller(request)
    kind = request.match_info["kind"]
    dry_run = query_bool(request, "dryRun")
    result: ImportResult
    if kind == "configs":
        result = await service.import_configs(
            (await body_as(request, ImportConfigVersions)).items, who, dry_run=dry_run
        )
    elif kind == "schemas":
        result = await service.import_schemas(
            (await body_as(request, ImportSchemas)).items, who, dry_run=dry_run
        )
    elif kind == "flags":
        result = await service.import_flags(
            (await body_as(request, ImportFlagVersions)).items, who, dry_run=dry_run
        )
    elif kind == "services":
        result = await service.import_services(
            (await body_as(request, ImportServices)).items, who, dry_run=dry_run
        )
    elif kind == "analytics":
        body = await body_as(request, ImportAnalytics)
        result = await service.import_analytics(body.source, body.counts, who, dry_run=dry_run)
    elif kind == "notes":
        result = await service.import_notes(
            (await body_as(request, ImportNotes)).items, who, dry_run=dry_run
        )
    else:
        raise NotFound(
            f"nothing to import as {kind!r}: configs, schemas, flags, services, analytics, notes"
        )
    return json_response(result)


async def backup(request: web.Request) -> web.StreamResponse:
    """The database as one consistent SQLite file, streamed (then removed here)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/vnd.sqlite3",
            "Content-Disposition": 'attachment; filename="fpcd.db"',
            "Cache-Control": "no-store",
        }
    )
    async with request.app[PORTABILITY].backup(caller(request)) as path:
        response.content_length = path.stat().st_size
        await response.prepare(request)
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                await response.write(chunk)
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/export/{kind}", export_page)
    app.router.add_post("/api/import/{kind}", import_records)
    app.router.add_get("/api/backup", backup)
