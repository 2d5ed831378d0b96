"""Which environments exist: the declared ones (`server.environments`), `default` and the
default environment, and every environment that has ever been written (here or on
another host). A read of any other environment is 404 and a write 422, each naming the
known ones, so `?environment=prod` never silently answers with the `default` layer when
only `production` exists.
"""

from __future__ import annotations

from collections.abc import Iterable

from fpcd.domain.configs import BASE_ENVIRONMENT
from fpcd.domain.errors import FieldError, Invalid, NotFound

#: In `server.environments`: any valid name is an environment (no check at all).
ANY = "*"
#: How many known names an error message lists before it stops.
_SHOWN = 50


class Environments:
    def __init__(self, declared: Iterable[str], default_environment: str) -> None:
        names = set(declared)
        #: True when `*` is declared: every valid name is accepted.
        self.open = ANY in names
        self.declared = frozenset(names - {ANY}) | {BASE_ENVIRONMENT, default_environment}
        #: Environments with stored data; grows as changes are applied.
        self.written: set[str] = set()

    def add_written(self, names: Iterable[str]) -> None:
        self.written.update(names)

    def known(self) -> list[str]:
        return sorted(self.declared | self.written)

    def is_known(self, environment: str) -> bool:
        return self.open or environment in self.declared or environment in self.written

    def _listing(self) -> str:
        names = self.known()
        shown = ", ".join(names[:_SHOWN])
        return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")

    def unknown(self, environment: str) -> str:
        """The message for an unknown environment: it names the known ones."""
        return f"unknown environment {environment!r}; known: {self._listing()}"

    def check_read(self, environment: str, where: str = "query.environment") -> str:
        """404 for an environment that is neither declared nor ever written."""
        if not self.is_known(environment):
            raise NotFound(
                self.unknown(environment),
                errors=[FieldError(where, "not a declared or written environment")],
            )
        return environment

    def check_write(self, environment: str, where: str = "$.environment") -> str:
        """422 for a write to an undeclared environment (one already written is fine)."""
        if not self.is_known(environment):
            raise Invalid(
                self.unknown(environment) + " (declare new ones in server.environments)",
                errors=[FieldError(where, "not a declared or written environment")],
            )
        return environment
