"""One info line per stored change to configs, schemas, flags and secrets, from any door
or from replication: who, what, which version. Secret lines name the secret, never a value."""

from __future__ import annotations

import logging
from typing import Any

from fpcd.domain.model import (
    ConfigVersion,
    FlagRecord,
    SchemaRecord,
    SecretDestroyed,
    SecretVersion,
)
from fpcd.services.events import ChangeApplied, Event

log = logging.getLogger("fpcd.changes")


def log_change(event: Event) -> None:
    if not isinstance(event, ChangeApplied):
        return
    change = event.change
    fields: dict[str, Any]
    match change.payload:
        case ConfigVersion() as v:
            message = "config changed"
            fields = {
                "service": v.service,
                "environment": v.environment,
                "version": v.version,
                "action": v.action,
            }
        case SchemaRecord() as schema:
            message = "schema removed" if schema.schema is None else "schema changed"
            fields = {"service": schema.service, "version": schema.version}
        case FlagRecord() as flag:
            message = "flag archived" if flag.archived else "flag changed"
            fields = {"flag": flag.key, "version": flag.version, "enabled": flag.definition.enabled}
        case SecretVersion() as secret:
            message = "secret changed"
            fields = {
                "secret": f"{secret.service}/{secret.environment}/{secret.name}",
                "version": secret.version,
            }
        case SecretDestroyed() as gone:
            message = f"secret {gone.reason}"
            fields = {
                "secret": f"{gone.service}/{gone.environment}/{gone.name}",
                "versions": gone.versions,
            }
        case _:
            return
    fields.update(actor=change.actor, origin=change.origin, seq=change.seq)
    if change.request_id:
        fields["request_id"] = change.request_id
    log.info(message, extra=fields)
