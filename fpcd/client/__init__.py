"""Clients of the daemon.

- `ConfigurationClient` (async) and `SyncConfigurationClient`: a service's live
  configuration and flags, evaluated locally (fpcd.client.live, fpcd.client.sync).
- `FlagSocketClient`: blocking lookups on the flag socket (fpcd.client.flagsocket).
- `fpcd.client.openfeature.FpcdProvider`: an OpenFeature provider (extra `openfeature`).
- `fpcd.client.transport`: the blocking HTTP transport the CLI uses.

Names are imported on first use, so the CLI (which needs only the transport) does not
pay for aiohttp at start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fpcd.client.flagsocket import FlagSocketClient, FlagSocketError
    from fpcd.client.live import ConfigurationClient, FpcdClientError, FpcdUnavailable
    from fpcd.client.model import Configuration, ConfigurationReload, FlagUpdate
    from fpcd.client.sync import SyncConfigurationClient
    from fpcd.domain.flags import EvaluationContext, EvaluationResult

_WHERE = {
    "ConfigurationClient": "fpcd.client.live",
    "FpcdClientError": "fpcd.client.live",
    "FpcdUnavailable": "fpcd.client.live",
    "SyncConfigurationClient": "fpcd.client.sync",
    "Configuration": "fpcd.client.model",
    "ConfigurationReload": "fpcd.client.model",
    "FlagUpdate": "fpcd.client.model",
    "FlagSocketClient": "fpcd.client.flagsocket",
    "FlagSocketError": "fpcd.client.flagsocket",
    "EvaluationContext": "fpcd.domain.flags",
    "EvaluationResult": "fpcd.domain.flags",
}

__all__ = [
    "Configuration",
    "ConfigurationClient",
    "ConfigurationReload",
    "EvaluationContext",
    "EvaluationResult",
    "FlagSocketClient",
    "FlagSocketError",
    "FlagUpdate",
    "FpcdClientError",
    "FpcdUnavailable",
    "SyncConfigurationClient",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fpcd.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
