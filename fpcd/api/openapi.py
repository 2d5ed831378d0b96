"""The OpenAPI 3.1 document served at /openapi.json.

Request and response shapes come from the same msgspec types the routes decode and
encode (`fpcd.wire`, msgspec.json.schema_components), so the document cannot drift from
the code; a test checks that every registered route is described. The WebSocket and
flag-socket messages (`fpcd.wire.live`, `fpcd.wire.flagsocket`), which OpenAPI has no
paths for, are components of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from fpcd import __version__
from fpcd.api.http import Problem
from fpcd.domain.flags import FlagDefinition
from fpcd.domain.names import FLAG_KEY_PATTERN, NAME_PATTERN
from fpcd.wire import (
    AuditVerifyResult,
    AuditView,
    ConfigDocument,
    ConfigPut,
    ConfigReload,
    ConfigRollback,
    DiffDocument,
    EvaluateRequest,
    EvaluateResponse,
    EvaluationCounts,
    EvaluationCountsResult,
    FlagAnalyticsDocument,
    FlagView,
    HealthDocument,
    ImportAnalytics,
    ImportConfigVersions,
    ImportFlagVersions,
    ImportNotes,
    ImportResult,
    ImportSchemas,
    ImportServices,
    KeyringStatus,
    RegisterResult,
    ReloadResult,
    SchemaDocument,
    SecretPut,
    SecretView,
    ServiceRegister,
    ServiceView,
    StatusDocument,
    VersionView,
    WriteResult,
)
from fpcd.wire.flagsocket import FlagQuery, FlagReply
from fpcd.wire.live import ClientMessage, ServerMessage

_TYPES: list[Any] = [
    AuditVerifyResult, AuditView, ConfigDocument, ConfigPut, ConfigReload, ConfigRollback,
    DiffDocument, EvaluateRequest, EvaluateResponse, EvaluationCounts, EvaluationCountsResult,
    FlagAnalyticsDocument, FlagDefinition, FlagView,
    HealthDocument, KeyringStatus, RegisterResult, ReloadResult, SchemaDocument, SecretPut,
    SecretView, ServiceRegister, ServiceView, StatusDocument, VersionView, WriteResult,
    Problem,
    ImportAnalytics, ImportConfigVersions, ImportFlagVersions, ImportNotes, ImportResult,
    ImportSchemas, ImportServices,
]  # fmt: skip
#: The doors without paths: the flag socket's lines, and the WebSocket messages by
#: direction (unions, told apart by `type`) under these names.
_TYPES += [FlagQuery, FlagReply]
_MESSAGES: dict[str, Any] = {
    "WebSocketClientMessage": ClientMessage,
    "WebSocketServerMessage": ServerMessage,
}

NAME = {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
FLAG_KEY = {"type": "string", "pattern": f"^{FLAG_KEY_PATTERN}$"}


def _ref(kind: Any) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{kind.__name__}"}


def _page(kind: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "total", "limit", "offset"],
        "properties": {
            "items": {"type": "array", "items": kind},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    }


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


ENV = _query("environment", NAME)
LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
OFFSET = _query("offset", {"type": "integer", "minimum": 0})
SERVICE = _path("service", NAME)
BOOL = {"type": "string", "enum": ["true", "false"]}
FLAG = _ref(FlagView)


def _op(
    summary: str,
    response: dict[str, Any] | None,
    *,
    params: Sequence[dict[str, Any]] = (),
    body: dict[str, Any] | None = None,
    status: str = "200",
    public: bool = False,
    content_type: str = "application/json",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": list(params),
        "responses": {
            status: (
                {"description": "OK", "content": {content_type: {"schema": response}}}
                if response is not None
                else {"description": "No content"}
            ),
            "default": {
                "description": "A problem",
                "content": {"application/problem+json": {"schema": _ref(Problem)}},
            },
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if public:
        op["security"] = []
    return op


def _ofrep_paths() -> dict[str, dict[str, Any]]:
    """OFREP (open-feature/protocol service/openapi.yaml), as fpcd serves it."""
    request = {"type": "object", "properties": {"context": {"type": "object"}}}
    evaluation = {
        "type": "object",
        "required": ["key", "reason", "variant", "value"],
        "properties": {
            "key": {"type": "string"},
            "reason": {"type": "string"},
            "variant": {"type": "string"},
            "value": {},
            "metadata": {"type": "object"},
        },
    }
    bulk = {
        "type": "object",
        "required": ["flags"],
        "properties": {"flags": {"type": "array", "items": evaluation}},
    }
    return {
        "/ofrep/v1/configuration": {
            "get": _op("OFREP: what this flag system supports", {"type": "object"})
        },
        "/ofrep/v1/evaluate/flags": {
            "post": _op(
                "OFREP: evaluate every active flag (ETag; If-None-Match gives 304)",
                bulk,
                params=[{"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}],
                body=request,
            )
        },
        "/ofrep/v1/evaluate/flags/{key}": {
            "post": _op(
                "OFREP: evaluate one flag",
                evaluation,
                params=[_path("key", {"type": "string"})],
                body=request,
            )
        },
    }


def _portability_paths() -> dict[str, dict[str, Any]]:
    """Export, import and backup (admin only; docs/export-format.md)."""
    kinds = ["configs", "schemas", "flags", "services", "analytics", "secrets"]
    bodies = [
        ImportConfigVersions, ImportSchemas, ImportFlagVersions, ImportServices,
        ImportAnalytics, ImportNotes,
    ]  # fmt: skip
    return {
        "/api/export/{kind}": {
            "get": _op(
                "A page of every record of one kind, as fpcd stores it",
                _page({}),
                params=[_path("kind", {"type": "string", "enum": kinds}), LIMIT, OFFSET],
            )
        },
        "/api/import/{kind}": {
            "post": _op(
                "Import records (idempotent: present ones are skipped)",
                _ref(ImportResult),
                params=[
                    _path("kind", {"type": "string", "enum": [*kinds[:-1], "notes"]}),
                    _query("dryRun", BOOL),
                ],
                body={"oneOf": [_ref(kind) for kind in bodies]},
            )
        },
        "/api/backup": {
            "get": _op(
                "A consistent copy of the SQLite database",
                {"type": "string", "format": "binary"},
                content_type="application/vnd.sqlite3",
            )
        },
    }


def build_document() -> dict[str, Any]:
    messages, components = msgspec.json.schema_components(
        [*_TYPES, *_MESSAGES.values()], ref_template="#/components/schemas/{name}"
    )
    components.update(zip(_MESSAGES, messages[len(_TYPES) :], strict=True))
    paths: dict[str, dict[str, Any]] = {
        "/health": {
            "get": _op("Health of the daemon and its parts", _ref(HealthDocument), public=True)
        },
        "/health/live": {"get": _op("Liveness probe", {"type": "object"}, public=True)},
        "/health/ready": {"get": _op("Readiness probe", {"type": "object"}, public=True)},
        "/openapi.json": {"get": _op("This document", {"type": "object"}, public=True)},
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text format, or OpenMetrics by Accept)",
                {"type": "string"},
                content_type="text/plain",
            )
        },
        "/api/status": {"get": _op("Health, contents and top flags", _ref(StatusDocument))},
        "/api/config": {"get": _op("Services and environments known", _page({}))},
        "/api/config/{service}": {
            "get": _op(
                "Effective (or raw) configuration",
                _ref(ConfigDocument),
                params=[
                    SERVICE,
                    ENV,
                    _query("version", {"type": "integer", "minimum": 1}),
                    _query("raw", BOOL),
                    _query("includeSecrets", BOOL),
                ],
            ),
            "put": _op(
                "Write a new version", _ref(WriteResult), params=[SERVICE], body=_ref(ConfigPut)
            ),
        },
        "/api/config/{service}/rollback": {
            "post": _op(
                "Write an old version's content as a new version",
                _ref(WriteResult),
                params=[SERVICE],
                body=_ref(ConfigRollback),
            )
        },
        "/api/config/{service}/reload": {
            "post": _op(
                "Ask subscribers to reload",
                _ref(ReloadResult),
                params=[SERVICE],
                body=_ref(ConfigReload),
            )
        },
        "/api/config/{service}/history": {
            "get": _op(
                "Versions, newest first",
                _page(_ref(VersionView)),
                params=[SERVICE, ENV, LIMIT, OFFSET],
            )
        },
        "/api/config/{service}/diff": {
            "get": _op(
                "Difference between two versions",
                _ref(DiffDocument),
                params=[
                    SERVICE,
                    ENV,
                    _query("from", {"type": "integer", "minimum": 0}),
                    _query("to", {"type": "integer", "minimum": 1}),
                ],
            )
        },
        "/api/config/{service}/schema": {
            "get": _op("The service's JSON Schema", _ref(SchemaDocument), params=[SERVICE]),
            "put": _op(
                "Store a JSON Schema (2020-12)",
                _ref(SchemaDocument),
                params=[SERVICE],
                body={"type": "object"},
            ),
            "delete": _op("Remove the schema", _ref(SchemaDocument), params=[SERVICE]),
        },
        "/api/features": {
            "get": _op(
                "Flags",
                _page(FLAG),
                params=[
                    ENV,
                    _query("enabled", BOOL),
                    _query("tags", {"type": "string"}),
                    _query("includeArchived", BOOL),
                ],
            ),
            "post": _op("Create a flag", FLAG, body=_ref(FlagDefinition), status="201"),
        },
        "/api/features/evaluate": {
            "post": _op(
                "Evaluate flags for a context",
                _ref(EvaluateResponse),
                params=[ENV],
                body=_ref(EvaluateRequest),
            )
        },
        "/api/features/evaluations": {
            "post": _op(
                "Add evaluation counts from a client that evaluates locally",
                _ref(EvaluationCountsResult),
                body=_ref(EvaluationCounts),
            )
        },
        "/api/features/{key}": {
            "get": _op(
                "A flag", FLAG, params=[_path("key", FLAG_KEY), _query("includeArchived", BOOL)]
            ),
            "put": _op(
                "Replace (or create) a flag",
                FLAG,
                params=[_path("key", FLAG_KEY)],
                body=_ref(FlagDefinition),
            ),
            "patch": _op(
                "Change a flag (RFC 7386 merge patch)",
                FLAG,
                params=[_path("key", FLAG_KEY)],
                body={"type": "object"},
            ),
            "delete": _op("Archive a flag", FLAG, params=[_path("key", FLAG_KEY)]),
        },
        "/api/features/{key}/history": {
            "get": _op(
                "A flag's versions", _page(FLAG), params=[_path("key", FLAG_KEY), LIMIT, OFFSET]
            )
        },
        "/api/features/{key}/analytics": {
            "get": _op(
                "Evaluation counts",
                _ref(FlagAnalyticsDocument),
                params=[
                    _path("key", FLAG_KEY),
                    _query("startDate", {"type": "string"}),
                    _query("endDate", {"type": "string"}),
                ],
            )
        },
        "/api/secrets/rotate-key": {
            "post": _op("Rotate the data key", _ref(KeyringStatus), status="202")
        },
        "/api/keyring": {"get": _op("Data keys and rewrap progress", _ref(KeyringStatus))},
        "/api/keyring/rotate": {
            "post": _op("Rotate the data key", _ref(KeyringStatus), status="202")
        },
        "/api/keyring/{key_id}/retire": {
            "post": _op(
                "Retire an unused data key",
                _ref(KeyringStatus),
                params=[_path("key_id", {"type": "string", "pattern": "^k-[0-9a-f]{12}$"})],
            )
        },
        "/api/secrets/{service}": {
            "get": _op(
                "A service's secrets (metadata)", _page(_ref(SecretView)), params=[SERVICE, ENV]
            )
        },
        "/api/secrets/{service}/{name}": {
            "get": _op(
                "A secret's value (needs secrets:read)",
                _ref(SecretView),
                params=[
                    SERVICE,
                    _path("name", NAME),
                    ENV,
                    _query("version", {"type": "integer", "minimum": 1}),
                ],
            ),
            "put": _op(
                "Store a new version",
                {"type": "object"},
                params=[SERVICE, _path("name", NAME), ENV],
                body=_ref(SecretPut),
            ),
            "delete": _op(
                "Destroy every version",
                None,
                params=[SERVICE, _path("name", NAME), ENV],
                status="204",
            ),
        },
        "/api/secrets/{service}/{name}/versions": {
            "get": _op(
                "A secret's versions (metadata)",
                _page(_ref(SecretView)),
                params=[SERVICE, _path("name", NAME), ENV],
            )
        },
        "/api/audit": {
            "get": _op(
                "The audit log, newest first",
                _page(_ref(AuditView)),
                params=[_query("target", {"type": "string"}), LIMIT, OFFSET],
            )
        },
        "/api/audit/verify": {"get": _op("Recompute the hash chain", _ref(AuditVerifyResult))},
        "/api/services/register": {
            "post": _op(
                "Register a service", _ref(RegisterResult), body=_ref(ServiceRegister), status="201"
            )
        },
        "/api/services": {
            "get": _op(
                "Registered services",
                _page(_ref(ServiceView)),
                params=[
                    _query("tag", {"type": "string"}),
                    ENV,
                    _query(
                        "status",
                        {"type": "string", "enum": ["healthy", "unhealthy", "unknown", "stale"]},
                    ),
                ],
            )
        },
        "/api/services/{name}": {
            "get": _op("A registered service", _ref(ServiceView), params=[_path("name", NAME)]),
            "delete": _op("Deregister", None, params=[_path("name", NAME)], status="204"),
        },
        "/api/services/{name}/heartbeat": {
            "post": _op("A heartbeat", _ref(ServiceView), params=[_path("name", NAME)])
        },
        **_ofrep_paths(),
        **_portability_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fpcd",
            "version": __version__,
            "description": "Per-host configuration daemon. TCP callers need a bearer "
            "token; the Unix socket goes by its file mode.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
    }


_ENCODED: bytes | None = None


def encoded_document() -> bytes:
    global _ENCODED
    if _ENCODED is None:
        _ENCODED = msgspec.json.encode(build_document())
    return _ENCODED
