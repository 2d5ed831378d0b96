"""What the client keeps and hands out: configurations, flag snapshots, events, the cache file.

Flags are kept in their wire form (`fpcd.wire.FlagView`: what `GET /api/features` and
FEATURE_FLAG_UPDATE carry) and compiled with `fpcd.domain.flags.compile_flag`, the
daemon's own code, so a local evaluation is the daemon's evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from fpcd.domain.flags import CompiledFlag, EvaluationContext, FlagDefinition, compile_flag
from fpcd.wire import FlagView
from fpcd.wire.live import FlagUpdateReason

log = logging.getLogger("fpcd.client")

#: Fields of a flag document that are version metadata, not part of the definition.
_RECORD_FIELDS = ("version", "archived", "createdAt", "updatedAt", "updatedBy", "changed")


class Configuration(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One (service, environment)'s effective configuration, as the daemon sent it.

    `version` 0 means the environment has no layer of its own (and `config` is the
    inherited `default` layer, or empty). Treat `config` as read-only: it is shared.
    """

    service_name: str
    environment: str
    version: int = 0
    #: Version of the `default` layer merged underneath (None for `default` itself).
    base_version: int | None = None
    config: dict[str, Any] = {}
    checksum: str = ""

    @property
    def position(self) -> tuple[int, int]:
        """Where this version stands: updates only ever move it forward."""
        return (self.version, self.base_version or 0)


class FlagUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """A flag changed (or reached a scheduled date): the `featureFlagUpdate` event."""

    flag_key: str
    #: On in the client's environment at this moment (enabled, dependencies, dates);
    #: per-user targeting and rollout still apply.
    enabled: bool
    reason: FlagUpdateReason
    version: int
    #: The new definition; None once archived.
    definition: FlagDefinition | None


class ConfigurationReload(msgspec.Struct, frozen=True, kw_only=True):
    """Someone asked the service to reload (`POST /api/config/{s}/reload`)."""

    version: int
    force: bool


class CacheFile(msgspec.Struct, kw_only=True, rename="camel"):
    """The cache file: enough to start while the daemon is down. Never holds secrets
    (the client does not ask for them)."""

    format: int = 1
    service_name: str
    environment: str
    saved_at: float
    configuration: Configuration | None
    #: Flag documents as the daemon sends them, archived ones included (for versions).
    flags: list[FlagView]


class FlagTable:
    """An immutable snapshot: flag documents by key and the compiled active flags.

    A change builds a new table; readers (any thread) keep the one they hold.
    """

    __slots__ = ("compiled", "documents")

    def __init__(
        self,
        documents: Mapping[str, FlagView] | None = None,
        compiled: Mapping[str, CompiledFlag] | None = None,
    ) -> None:
        self.documents: Mapping[str, FlagView] = documents or {}
        self.compiled: Mapping[str, CompiledFlag] = compiled or {}

    def version(self, key: str) -> int:
        doc = self.documents.get(key)
        return doc.version if doc is not None else 0

    def with_documents(self, docs: Iterable[FlagView]) -> tuple[FlagTable, list[str]]:
        """A table with every document newer than what this one has; and their keys."""
        documents = dict(self.documents)
        compiled = dict(self.compiled)
        changed: list[str] = []
        for doc in docs:
            key = doc.key
            if doc.version <= self.version(key):
                continue
            documents[key] = doc
            changed.append(key)
            if doc.archived:
                compiled.pop(key, None)
            else:
                compiled[key] = compile_flag(key, doc.version, doc.definition())
        if not changed:
            return self, []
        return FlagTable(documents, compiled), changed


_view_decoder = msgspec.json.Decoder(FlagView)


def views_of(raws: Iterable[msgspec.Raw]) -> list[FlagView]:
    """The flag documents this client understands. One it cannot read (a newer daemon's
    field) is logged and left out, so it is not evaluated; it never stops the client."""
    views: list[FlagView] = []
    for raw in raws:
        try:
            views.append(_view_decoder.decode(raw))
        except msgspec.ValidationError as error:
            log.warning("flag not understood, ignored", extra={"error": str(error)})
    return views


def definition_of(doc: Mapping[str, Any]) -> FlagDefinition | None:
    """The definition in a flag document given as a mapping (`tests/fixtures/
    flag_vectors.json`, shared with the Node client); None if archived or not understood."""
    if doc.get("archived"):
        return None
    fields = {k: v for k, v in doc.items() if k not in _RECORD_FIELDS}
    try:
        return msgspec.convert(fields, FlagDefinition)
    except msgspec.ValidationError as error:  # a newer daemon's field: skip, don't crash
        log.warning(
            "flag not understood, ignored", extra={"flag": doc.get("key"), "error": str(error)}
        )
        return None


def compile_document(doc: Mapping[str, Any]) -> CompiledFlag | None:
    definition = definition_of(doc)
    if definition is None:
        return None
    return compile_flag(str(doc["key"]), int(doc.get("version", 0)), definition)


ContextLike = EvaluationContext | Mapping[str, Any] | None


def to_context(context: ContextLike, environment: str) -> EvaluationContext:
    """An EvaluationContext in `environment` unless it names its own; a mapping uses the
    wire names (`userId`, `customAttributes`, ...)."""
    if context is None:
        return EvaluationContext(environment=environment)
    if not isinstance(context, EvaluationContext):
        context = msgspec.convert(context, EvaluationContext)
    if context.environment is None:
        context = msgspec.structs.replace(context, environment=environment)
    return context
