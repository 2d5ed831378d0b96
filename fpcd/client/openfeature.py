"""FpcdProvider: an OpenFeature provider (the `openfeature-sdk` package, extra
`fpcd[openfeature]`) that evaluates locally through a ConfigurationClient.

    client = SyncConfigurationClient(api_url=..., token=..., service_name=..., environment=...)
    api.set_provider(FpcdProvider(client))
    api.get_client().get_boolean_value("new_checkout_flow", False, EvaluationContext("u-42"))

Values by type: boolean is `enabled`; string, number and object are the served variant's
`configuration` (a string flag with a variant but no configuration gives the variant id).
A flag that is off, or on without a variant for a non-boolean type, gives the caller's
default with fpcd's reason (DISABLED, DEFAULT, SPLIT); a value of the wrong type gives the
default with TYPE_MISMATCH. Provider events: READY at start, CONFIGURATION_CHANGED with
the flag's key on every flag change, STALE while the daemon is unreachable, READY again
when the subscription is back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext as OpenFeatureContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from fpcd.client.live import ConfigurationClient
from fpcd.client.model import FlagUpdate
from fpcd.client.sync import SyncConfigurationClient
from fpcd.domain.flags import EvaluationResult
from fpcd.domain.openfeature import InvalidContext, context_from, metadata_of, variant_of

ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]


class FpcdProvider(AbstractProvider):
    """OpenFeature provider over a ConfigurationClient or SyncConfigurationClient.

    A SyncConfigurationClient that is not started yet is started by `initialize` (the
    SDK calls it from `set_provider`) and closed by `shutdown`; an async client is the
    caller's to start (`async with`) and close.
    """

    def __init__(self, client: ConfigurationClient | SyncConfigurationClient) -> None:
        super().__init__()
        self.client = client
        self._owns_client = False
        self._removers: list[Callable[[], None]] = []

    def get_metadata(self) -> Metadata:
        return Metadata(name="fpcd")

    def initialize(self, evaluation_context: OpenFeatureContext) -> None:
        client = self.client
        if isinstance(client, SyncConfigurationClient) and not client.started:
            client.start()
            self._owns_client = True
        self._removers = [
            client.on("featureFlagUpdate", self._flag_changed),
            client.on("disconnected", self._stale),
            client.on("connected", self._ready),
        ]

    def shutdown(self) -> None:
        for remove in self._removers:
            remove()
        self._removers = []
        if self._owns_client and isinstance(self.client, SyncConfigurationClient):
            self.client.close()

    def _flag_changed(self, update: FlagUpdate) -> None:
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=[update.flag_key], message=update.reason)
        )

    def _stale(self, _: object) -> None:
        self.emit_provider_stale(ProviderEventDetails(message="fpcd is unreachable"))

    def _ready(self, _: object) -> None:
        self.emit_provider_ready(ProviderEventDetails(message="fpcd subscription is live"))

    # -- resolution -------------------------------------------------------------------

    def _evaluate(
        self, flag_key: str, context: OpenFeatureContext | None
    ) -> EvaluationResult | FlagResolutionDetails[Any]:
        """The fpcd result, or (for a context fpcd cannot take) an error resolution."""
        try:
            ctx = context_from(
                context.attributes if context else None, context.targeting_key if context else None
            )
        except InvalidContext as error:
            return FlagResolutionDetails(
                value=None,
                reason=Reason.ERROR,
                error_code=ErrorCode.INVALID_CONTEXT,
                error_message=str(error),
            )
        return self.client.evaluate(flag_key, ctx)

    def _resolve(
        self,
        flag_key: str,
        default: Any,
        context: OpenFeatureContext | None,
        accepts: Callable[[Any], bool],
        boolean: bool = False,
    ) -> FlagResolutionDetails[Any]:
        result = self._evaluate(flag_key, context)
        if isinstance(result, FlagResolutionDetails):
            result.value = default
            return result
        if result.error_code is not None:
            return FlagResolutionDetails(
                value=default,
                reason=Reason.ERROR,
                error_code=ErrorCode.FLAG_NOT_FOUND,
                error_message=f"no flag {flag_key!r}",
            )
        metadata = metadata_of(result)
        if boolean:
            value: Any = result.enabled
        elif not result.enabled or result.variant is None:
            if result.enabled:  # on, but nothing but a boolean to give
                return _mismatch(default, flag_key, "has no variant", metadata)
            return FlagResolutionDetails(
                value=default, reason=result.reason, variant=None, flag_metadata=metadata
            )
        else:
            value = result.configuration
            if value is None and accepts(result.variant):
                value = result.variant
        if not accepts(value):
            return _mismatch(default, flag_key, f"serves {type(value).__name__}", metadata)
        return FlagResolutionDetails(
            value=value,
            reason=result.reason,
            variant=variant_of(result),
            flag_metadata=metadata,
        )

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: OpenFeatureContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(
            flag_key, default_value, evaluation_context, lambda v: isinstance(v, bool), True
        )

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: OpenFeatureContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._resolve(
            flag_key, default_value, evaluation_context, lambda v: isinstance(v, str)
        )

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: OpenFeatureContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._resolve(
            flag_key,
            default_value,
            evaluation_context,
            lambda v: isinstance(v, int) and not isinstance(v, bool),
        )

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: OpenFeatureContext | None = None,
    ) -> FlagResolutionDetails[float]:
        details = self._resolve(
            flag_key,
            default_value,
            evaluation_context,
            lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        )
        details.value = float(details.value)
        return details

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: ObjectValue,
        evaluation_context: OpenFeatureContext | None = None,
    ) -> FlagResolutionDetails[ObjectValue]:
        return self._resolve(
            flag_key, default_value, evaluation_context, lambda v: isinstance(v, dict | list)
        )


def _mismatch(
    default: Any, flag_key: str, why: str, metadata: dict[str, bool | int | str]
) -> FlagResolutionDetails[Any]:
    return FlagResolutionDetails(
        value=default,
        reason=Reason.ERROR,
        error_code=ErrorCode.TYPE_MISMATCH,
        error_message=f"flag {flag_key!r} {why}",
        flag_metadata=metadata,
    )
