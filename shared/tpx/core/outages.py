"""A dependency's health as this process sees it, so an outage is two log lines, not two thousand.

Every request and loop that meets an unreachable database or broker reports it
here: the first failure logs one warning, later ones only debug lines; the
first success afterwards logs one info line saying how long it lasted. The
metrics `tpx_dependency_up` and `tpx_dependency_failures_total` carry the rest.
"""

from __future__ import annotations

import time
from typing import Any

from tpx.core.logging import get_logger
from tpx.core.metrics import DEPENDENCY_FAILURES, DEPENDENCY_UP

log = get_logger("tpx.core.outages")


class Outage:
    def __init__(self, dependency: str, logger: Any = None) -> None:
        self.dependency = dependency
        self.down_since: float | None = None
        self._log = logger
        DEPENDENCY_UP.labels(dependency).set(1)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException | None = None, *, error: str | None = None, **fields: Any) -> None:
        """Count a failure; `error` describes it when the caller knows better than `exc` (a cause chain)."""
        DEPENDENCY_FAILURES.labels(self.dependency).inc()
        if error is None and exc is not None:
            error = f"{type(exc).__name__}: {exc}"
        error = error[:300] if error is not None else None
        if self.down_since is None:
            self.down_since = time.monotonic()
            DEPENDENCY_UP.labels(self.dependency).set(0)
            self.logger.warning("dependency.down", dependency=self.dependency, error=error, **fields)
        else:
            self.logger.debug("dependency.still_down", dependency=self.dependency, error=error, **fields)

    def recovered(self, **fields: Any) -> None:
        if self.down_since is None:
            return
        seconds = round(time.monotonic() - self.down_since, 2)
        self.down_since = None
        DEPENDENCY_UP.labels(self.dependency).set(1)
        self.logger.info("dependency.up", dependency=self.dependency, down_seconds=seconds, **fields)

    @property
    def logger(self) -> Any:
        return self._log if self._log is not None else log


DATABASE = Outage("database")
BROKER = Outage("broker")
